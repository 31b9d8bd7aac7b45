"""A test kit for backend authors.

- `FakeBackend` (and `SlowBackend`, `NeverReadyBackend`, `FailingBackend`): an in-memory
  backend that doubles as the test fake of the web layer.
- `InMemoryCatalog`: a catalog held in memory.
- `BackendContract` (needs pytest): the suite every backend passes. Subclass it in a test
  module and supply a `backend` fixture.

Backends honour three container environment variables, so that one request can say how its
stand-in Kit app behaves on every backend (see `config/standin/`):
`STANDIN_READY_DELAY` (seconds before the app is ready), `STANDIN_NEVER_READY=1`,
`STANDIN_EXIT_CODE` (the app exits at once with that code).
"""

from ovas.testing.fake import (
    FailingBackend,
    FakeBackend,
    InMemoryCatalog,
    NeverReadyBackend,
    SlowBackend,
    sample_catalog,
)
from ovas.testing.requests import make_request, wait_for, with_env

__all__ = [
    "BackendContract",
    "FailingBackend",
    "FakeBackend",
    "InMemoryCatalog",
    "NeverReadyBackend",
    "SlowBackend",
    "make_request",
    "sample_catalog",
    "wait_for",
    "with_env",
]


def __getattr__(name: str):
    # The contract needs pytest, which a production install lacks.
    if name == "BackendContract":
        from ovas.testing.contract import BackendContract

        return BackendContract
    raise AttributeError(name)
