"""A restart of the Docker daemon without live-restore, which stops every container it runs:
the sessions it stopped fail as `node_lost` for their retention, whatever code their app
exited with on the daemon's SIGTERM, while an app that quits by itself is still
`app_exited`. Runs on a second private daemon, leaving the main one alone."""

from __future__ import annotations

import re
from datetime import datetime

import pytest
from support import dockerd

from backends.docker import DockerBackend
from ovas.models import Reason, SessionState
from ovas.testing import FakeClock, service_for, wait_for
from ovas.testing.requests import STANDIN_EXIT_AFTER, STANDIN_EXIT_CODE, STANDIN_READY_DELAY

pytestmark = pytest.mark.docker

QUITS = {STANDIN_EXIT_CODE: "0", STANDIN_EXIT_AFTER: "1"}  # ready, then quits with code 0


def engine_time(text: str) -> datetime:
    """The engine's RFC 3339 time (nanoseconds) as an aware datetime."""
    return datetime.fromisoformat(re.sub(r"(\.\d{6})\d+", r"\1", text))


def test_a_daemon_restart_fails_the_sessions_it_stopped_as_node_lost(
    second_daemon, catalog, standin_request
):
    daemon = second_daemon()  # no live-restore: a restart stops the containers
    clock = FakeClock(ticking=True)
    backend = DockerBackend(
        catalog,
        docker_host=daemon.url,
        port_range=dockerd.free_ports(20),
        gpus="none",
        now=clock,
    )
    sessions = service_for(backend, retention=600)
    try:
        streaming = backend.start(standin_request()).record.id
        starting = backend.start(standin_request(env={STANDIN_READY_DELAY: "600"})).record.id
        quit_before = backend.start(standin_request(env=QUITS)).record.id
        assert wait_for(sessions, streaming, SessionState.READY).state is SessionState.READY
        before = wait_for(sessions, quit_before, SessionState.ENDED)
        assert (before.state, before.reason) == (SessionState.ENDED, Reason.APP_EXITED)
        assert sessions.get(starting).state is SessionState.CREATING

        daemon.stop()
        daemon.start()

        restarted = engine_time(backend.engine.started())
        for session_id in (streaming, starting):
            lost = sessions.get(session_id)
            assert (lost.state, lost.reason) == (SessionState.FAILED, Reason.NODE_LOST)
            assert lost.message.startswith(
                "The session's node was lost: the Docker engine restarted at "
            ), lost.message
            # 0 when the app's TERM trap ran, 137 when the daemon killed it: either is its doing.
            assert re.search(r"stopping the Kit container \(exit code (0|137)\)$", lost.message)
            assert lost.ended_time < restarted  # when the daemon stopped it
        # An outcome recorded before the restart stays as it was.
        assert sessions.get(quit_before).reason is Reason.APP_EXITED

        # An app quitting after the restart quits by itself.
        quit_after = backend.start(standin_request(env=QUITS)).record.id
        after = wait_for(sessions, quit_after, SessionState.ENDED)
        assert (after.state, after.reason) == (SessionState.ENDED, Reason.APP_EXITED)

        # Kept for the retention, as any failure, then removed.
        assert sessions.reap() == []
        assert sessions.get(streaming).state is SessionState.FAILED
        clock.advance(601)
        assert {streaming, starting} <= set(sessions.reap())
    finally:
        backend.close()
