"""A test kit for backend authors.

- `FakeBackend` (and `SlowBackend`, `NeverReadyBackend`, `FailingBackend`): an in-memory
  `ovas.Backend` (workloads in memory, the core's records in a `MemoryLedger`) that
  doubles as the test fake of the web layer.
- `InMemoryCatalog`: a catalog held in memory.
- `FakeClock`: a clock tests move past deadlines instead of waiting for them.
- `BackendContract` (needs pytest): the suite every backend passes. Subclass it in a test
  module and supply a `backend` fixture.
- `LedgerContract` (needs pytest): the suite every `ovas.ledger.Ledger` passes, with several
  processes racing; subclass it and supply `ledger`, `ledger_factory` and `engine_calls`.
- `service_for(backend)`, `wait_for(...)`, `make_request(...)`: the core's rules over a
  backend, without a web request.

Backends honour these container environment variables, so that one request can say how its
stand-in Kit app behaves on every backend (see `config/standin/`):
`STANDIN_READY_DELAY` (seconds before the app is ready), `STANDIN_NEVER_READY=1`,
`STANDIN_EXIT_CODE` (the app exits at once with that code, or, with `STANDIN_EXIT_AFTER`,
that many seconds after it is ready), `STANDIN_QUIT_ON_LEAVE=1` (the app quits with code 0
when its last client leaves, as Kit apps built for OVAS do).
"""

from ovas.testing.clock import FakeClock
from ovas.testing.fake import (
    FailingBackend,
    FakeBackend,
    InMemoryCatalog,
    NeverReadyBackend,
    SlowBackend,
    sample_catalog,
)
from ovas.testing.requests import make_request, service_for, wait_for, with_env

__all__ = [
    "BackendContract",
    "FailingBackend",
    "FakeBackend",
    "FakeClock",
    "InMemoryCatalog",
    "LedgerContract",
    "NeverReadyBackend",
    "SlowBackend",
    "WarmPoolContract",
    "make_request",
    "sample_catalog",
    "service_for",
    "wait_for",
    "with_env",
]


def __getattr__(name: str):
    # The contract needs pytest, which a production install lacks.
    if name in ("BackendContract", "WarmPoolContract"):
        from ovas.testing import contract

        return getattr(contract, name)
    if name == "LedgerContract":
        from ovas.testing import ledger_contract

        return ledger_contract.LedgerContract
    raise AttributeError(name)
