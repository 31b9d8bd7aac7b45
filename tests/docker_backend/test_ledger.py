"""The ledger on a real Docker daemon: the contract every ledger passes (creates and
compare-and-swaps racing in 4 processes), what it leaves in the engine, and its living beside
the Docker backend's own containers without either seeing the other."""

from __future__ import annotations

import contextlib
import functools
from datetime import UTC, datetime, timedelta

import docker
import pytest

from backends.docker import ledger as dl
from backends.docker.ledger import DockerLedger
from ovas.testing import LedgerContract, service_for

pytestmark = pytest.mark.docker


def _containers(engine, name: str) -> list[dict]:
    return engine.containers(all=True, filters={"label": f"{dl.NAME}={name}"})


class TestDockerLedger(LedgerContract):
    @pytest.fixture
    def ledger(self, docker_daemon, engine, space):
        ledger = DockerLedger(docker_daemon.url)
        yield ledger
        ledger.close()
        for summary in engine.containers(all=True, filters={"label": dl.NAME}):
            if summary["Labels"][dl.NAME].startswith(space):
                with contextlib.suppress(docker.errors.NotFound):
                    engine.remove_container(summary["Id"], force=True)

    @pytest.fixture
    def ledger_factory(self, docker_daemon):
        return functools.partial(DockerLedger, docker_daemon.url)

    @pytest.fixture
    def engine_calls(self, ledger):
        return lambda: ledger.calls

    def test_a_version_replaced_twice_stays_stale_though_its_successor_is_gone(
        self, ledger, space, engine
    ):
        # Replacing the second version removes the first's successor, so the engine would
        # let a replace of the first version make it again; it must still lose.
        first = ledger.create(f"{space}s", {"n": "0"})
        second = ledger.replace(first, {"n": "1"})
        third = ledger.replace(second, {"n": "2"})
        assert ledger.replace(first, {"n": "stale"}) is None
        assert ledger.replace(second, {"n": "stale"}) is None
        assert not ledger.delete(first)
        assert ledger.get(f"{space}s").version == third.version
        assert dict(ledger.get(f"{space}s").data) == {"n": "2"}
        assert len(_containers(engine, f"{space}s")) == 2  # the anchor and the last version

    def test_a_record_keeps_two_containers_however_often_replaced_and_none_once_deleted(
        self, ledger, space, engine
    ):
        entry = ledger.create(f"{space}k", {"n": "0"})
        for n in range(1, 6):
            entry = ledger.replace(entry, {"n": str(n)})
        assert len(_containers(engine, f"{space}k")) == 2
        assert ledger.delete(entry)
        assert _containers(engine, f"{space}k") == []

    def test_a_delete_by_version_that_stopped_halfway_is_finished_by_the_next_create(
        self, ledger, space, engine
    ):
        # A deleter that died after writing its tombstone leaves the anchor holding the
        # name: readers see no record, and a create finishes the delete and succeeds.
        entry = ledger.create(f"{space}t", {"n": "0"})
        generation, replaced, anchor = entry.version.split(":")
        engine.create_container(
            "ovas/record:1",
            name=f"{dl.PREFIX}{space}t_{replaced}",
            command=["ovas-record"],
            labels={
                dl.NAME: f"{space}t",
                dl.LAYOUT: dl.CURRENT_LAYOUT,
                dl.GENERATION: str(int(generation) + 1),
                dl.ANCHOR: anchor,
                dl.AFTER: replaced,
                dl.DELETED: "1",
            },
        )
        assert ledger.get(f"{space}t") is None
        assert ledger.list(space) == []
        assert ledger.replace(entry, {"n": "1"}) is None
        again = ledger.create(f"{space}t", {"n": "new"})
        assert again is not None and dict(ledger.get(f"{space}t").data) == {"n": "new"}
        assert len(_containers(engine, f"{space}t")) == 1

    def test_a_container_of_an_unknown_layout_is_neither_read_nor_removed(
        self, ledger, space, engine
    ):
        made = engine.create_container(
            "ovas/record:1",
            name=f"{dl.PREFIX}{space}future",
            command=["ovas-record"],
            labels={dl.NAME: f"{space}future", dl.LAYOUT: "2", "ovas.ledger.body": "{}"},
        )
        assert ledger.list(space) == [] and ledger.get(f"{space}future") is None
        assert ledger.create(f"{space}future", {"n": "1"}) is None
        assert not ledger.delete(f"{space}future")
        assert [s["Id"] for s in _containers(engine, f"{space}future")] == [made["Id"]]

    def test_a_large_unicode_record_comes_back_exactly(self, ledger, space):
        data = {f"k{n}": "𝄞\ud800é\n" * 1000 for n in range(4)}
        made = ledger.create(f"{space}big", data)
        assert dict(ledger.get(f"{space}big").data) == data
        assert dict(ledger.replace(made, data).data) == data
        assert dict(ledger.get(f"{space}big").data) == data


def test_the_backend_and_the_ledger_leave_each_other_alone(
    new_backend, standin_request, docker_daemon, engine
):
    backend = new_backend()
    session = backend.start(standin_request())
    ledger = DockerLedger(docker_daemon.url)
    space = f"side-{session.record.id[:8]}."
    try:
        first = ledger.create(f"{space}a", {"holder": session.record.id})
        second = ledger.replace(ledger.create(f"{space}b", {"n": "0"}), {"n": "1"})
        # The reaper removes what carries the backend's labels but is no session of it, and
        # places of no session once their grace has passed: other records are neither.
        assert backend.collect(datetime.now(UTC) + timedelta(days=1)) == []
        service_for(backend).reap()
        assert {e.version for e in ledger.list(space)} == {first.version, second.version}
        assert [o.record.id for o in backend.observe_all()] == [session.record.id]
        # The ledger holds the core's record of the session, and no container of its workload.
        names = [e.name for e in ledger.list()]
        assert [n for n in names if session.record.id in n] == [f"session.{session.record.id}"]
        assert not [n for n in names if n.startswith("ovas")]
    finally:
        ledger.delete(f"{space}a")
        ledger.delete(f"{space}b")
        ledger.close()
