"""Sessions made by an older release of ovas, for the upgrade test (`test_upgrade.py`).

Run as a script with that release's tree first on `sys.path` (it is copied there, and run
with it as the working directory): it imports that release's `ovas` and `backends`, and uses
only their API of then. Its one argument is JSON: `root` (the release's tree), `kubeconfig`,
`namespace`, `mode` ("pod" or "helmrelease"), `now` (the clock's ISO time, frozen: the
cluster's pods run in real time), `capacity`, `clocks` (seconds, by `Clocks` field). It
makes a ready, a starting, an ended, a failed, a claimed and a pooled session (the warm
pool of the catalog must hold one session), and prints JSON: each session by role, as the
release's own `SessionService.get` decides it, with its record's clocks and marks, and the
logs of the ended ones."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime

import ovas
from backends.kubernetes import KubernetesBackend
from ovas.lifecycle import Mark
from ovas.models import Clocks, SessionState
from ovas.testing import FakeClock, make_request, service_for

ARGS = json.loads(sys.argv[1])
if not ovas.__file__.startswith(ARGS["root"]):
    sys.exit(f"imported ovas from {ovas.__file__}, not from the release at {ARGS['root']}")

clock = FakeClock(datetime.fromisoformat(ARGS["now"]))
clocks = Clocks(**ARGS["clocks"])
backend = KubernetesBackend(
    mode=ARGS["mode"], namespace=ARGS["namespace"], config_file=ARGS["kubeconfig"], now=clock
)
sessions = service_for(backend, capacity=ARGS["capacity"], clocks=clocks)


def start(username: str, **env: str) -> str:
    """A session started on demand (no warm pool is asked), as that release's tests did."""
    request = make_request(
        backend.catalog,
        username=username,
        env=env or None,
        capacity=ARGS["capacity"],
        clocks=clocks,
        now=clock(),
    )
    return sessions._settle(backend.start(request)).id


def until(check, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            sys.exit(f"the old release: no {what} within {timeout} s: {sessions.all()}")
        time.sleep(0.05)


def in_state(session_id: str, *states: SessionState) -> bool:
    return sessions.get(session_id).state in states


def pooled_ready() -> list[str]:
    """The pool's ready unclaimed sessions, filling it as the reaper's pass does."""
    sessions.reap()
    return [
        r.id for r in backend.records() if r.pooled and r.outcome is None and Mark.READY in r.marks
    ]


made = {
    "ready": start("alice"),
    "starting": start("bob", STANDIN_NEVER_READY="1"),
    "ended": start("dave", STANDIN_EXIT_AFTER="0.3", STANDIN_EXIT_CODE="0"),
    "failed": start("erin", STANDIN_EXIT_CODE="3"),
}
until(lambda: in_state(made["ready"], SessionState.READY), "ready session")
until(lambda: in_state(made["ended"], SessionState.ENDED), "ended session")
until(lambda: in_state(made["failed"], SessionState.FAILED), "failed session")
(first,) = until(pooled_ready, "pooled session")
claimed = sessions.start("kit-standin", "standin", username="carol")
if claimed.id != first or not claimed.ready:
    sys.exit(f"the old release did not hand out its pooled session {first}: {claimed}")
made["claimed"] = claimed.id
(made["pooled"],) = until(pooled_ready, "second pooled session")
# Still starting: its pod runs, but its app is never ready.
until(lambda: backend.observe(made["starting"]).seen.stage.name == "RUNNING", "started pod")

records = {r.id: r for r in backend.records()}
report = {}
for role, session_id in made.items():
    session = sessions.get(session_id)
    record = records[session_id]
    report[role] = {
        "id": session.id,
        "state": session.state.value,
        "reason": session.reason.value if session.reason else None,
        "message": session.message,
        "username": session.username,
        "pool": session.pool,
        "host": session.host,
        "routes": [
            [r.description, r.protocol, r.source_port, r.destination_port] for r in session.routes
        ],
        "created_time": session.created_time.isoformat(),
        "expires_time": session.expires_time.isoformat() if session.expires_time else None,
        "ended_time": session.ended_time.isoformat() if session.ended_time else None,
        "clocks": [
            record.clocks.connect_timeout,
            record.clocks.idle_timeout,
            record.clocks.max_lifetime,
        ],
        "marks": {m.value: at.isoformat() for m, at in record.marks.items()},
        "logs": sessions.logs(session_id) if session.state.final else [],
    }
backend.close()
print(json.dumps(report))
