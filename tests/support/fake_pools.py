"""What the warm pool tests on the FakeBackend share: a pool of two viewers in the sample
catalog, and reading and filling it."""

from __future__ import annotations

from ovas.models import WarmPool
from ovas.testing import InMemoryCatalog, sample_catalog

POOL = WarmPool("viewers", "usd-viewer", "latest", "default", 2)


def catalog_with_pool() -> InMemoryCatalog:
    """The sample catalog, holding `POOL`."""
    found = sample_catalog()
    found.pools[POOL.name] = POOL
    return found


def pooled(backend, pool=POOL.name):
    """The pool's live sessions nobody has claimed, as records."""
    return [r for r in backend.records() if r.pooled and r.pool == pool and r.outcome is None]


def fill(sessions):
    """Two passes: the first starts the pool's sessions, the second sees them ready."""
    sessions.reap()
    sessions.now.advance(6)
    sessions.reap()
