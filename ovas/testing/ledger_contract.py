"""`LedgerContract`: what every `ovas.ledger.Ledger` must do, as a pytest class to subclass.

A backend's test module subclasses it and supplies three fixtures:

- `ledger`: a `Ledger` on the engine under test;
- `ledger_factory`: a picklable callable with no arguments that builds another `Ledger` on
  the same engine, in another process (so that creates and replaces race for real across
  processes, as gunicorn workers and replicas do); `None` where the ledger lives in one
  process's memory, and then the races run between threads;
- `engine_calls`: a callable returning how many engine calls `ledger` has made so far.

Every test works under names of its own (`space`), so tests sharing one engine never meet.
"""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from ovas.ledger import MAX_VALUE, Entry, Ledger, LedgerError

WORKERS = 4  # processes (or threads) racing
RACERS = 20  # concurrent calls in each
INCREMENTS = 10  # compare-and-swap increments each worker makes


def _race_create(factory: Callable[[], Ledger], name: str, start: threading.Event) -> int:
    """In one worker: RACERS concurrent creates of `name`; how many won."""
    ledger = factory()
    try:
        with ThreadPoolExecutor(RACERS) as pool:
            futures = [
                pool.submit(lambda n=n: start.wait(30) and ledger.create(name, {"by": str(n)}))
                for n in range(RACERS)
            ]
            return sum(1 for f in futures if f.result() is not None)
    finally:
        ledger.close()


def _increment(factory: Callable[[], Ledger], name: str, start: threading.Event) -> int:
    """In one worker: INCREMENTS read-modify-write increments of `name`'s count, each
    retried until its compare-and-swap holds; how many replaces failed on the way."""
    ledger = factory()
    lost = 0
    try:
        start.wait(30)
        for _ in range(INCREMENTS):
            while True:
                entry = ledger.get(name)
                assert entry is not None
                if ledger.replace(entry, {"count": str(int(entry.data["count"]) + 1)}):
                    break
                lost += 1
        return lost
    finally:
        ledger.close()


def _process_entry(job, factory, name, start, results) -> None:
    results.put(job(factory, name, start))


def _run_workers(job, factory: Callable[[], Ledger] | None, ledger: Ledger, name: str) -> list:
    """`job` in WORKERS processes (threads when `factory` is None), started together."""
    if factory is None:
        start = threading.Event()
        with ThreadPoolExecutor(WORKERS) as pool:
            futures = [
                pool.submit(job, lambda: _Shared(ledger), name, start) for _ in range(WORKERS)
            ]
            start.set()
            return [f.result() for f in futures]
    context = multiprocessing.get_context("spawn")
    start, results = context.Event(), context.Queue()
    workers = [
        context.Process(target=_process_entry, args=(job, factory, name, start, results))
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    start.set()
    try:
        found = [results.get(timeout=120) for _ in workers]
    finally:
        for worker in workers:
            worker.join(30)
    assert all(w.exitcode == 0 for w in workers), [w.exitcode for w in workers]
    return found


class _Shared(Ledger):
    """The test's own ledger handed to a thread, which must not close it."""

    def __init__(self, ledger: Ledger):
        self.inner = ledger

    def create(self, name, data):
        return self.inner.create(name, data)

    def replace(self, entry, data):
        return self.inner.replace(entry, data)

    def list(self, prefix=""):
        return self.inner.list(prefix)

    def delete(self, target):
        return self.inner.delete(target)


class LedgerContract:
    """Subclass with the `ledger`, `ledger_factory` and `engine_calls` fixtures."""

    @pytest.fixture
    def space(self) -> str:
        """A prefix no other test uses."""
        return f"t{uuid.uuid4().hex[:12]}."

    # Create

    def test_create_makes_a_record_once(self, ledger, space):
        made = ledger.create(f"{space}a", {"holder": "s1", "note": ""})
        assert made is not None and made.name == f"{space}a"
        assert dict(made.data) == {"holder": "s1", "note": ""}
        assert ledger.create(f"{space}a", {"holder": "s2"}) is None
        assert dict(ledger.get(f"{space}a").data) == {"holder": "s1", "note": ""}

    def test_values_come_back_exactly_as_written(self, ledger, space):
        data = {
            "lines": "one\ntwo\r\nthree\ttab",
            "unicode": "café ✓ 𝄞",
            "marks": "ready=2026-01-02T03:04:05+00:00,connected=",
            "quote": "\"'` $(echo no) ${X}",
            "long": "x" * MAX_VALUE,
            "empty": "",
        }
        ledger.create(f"{space}v", data)
        assert dict(ledger.get(f"{space}v").data) == data

    def test_a_name_or_value_it_cannot_hold_is_refused_and_nothing_is_made(self, ledger, space):
        for name in ("", "UPPER", "a b", "-a", "a-", "a/b", "a..b", "a.-b", "a\n", "x" * 201):
            with pytest.raises(LedgerError):
                ledger.create(name, {"k": "v"})
        for data in ({"Bad-Key": "v"}, {"k\n": "v"}, {"k": 1}, {"k": "x" * (MAX_VALUE + 1)}):
            with pytest.raises(LedgerError):
                ledger.create(f"{space}bad", data)
        assert ledger.list(space) == []

    # Replace

    def test_replace_holds_only_for_the_version_read(self, ledger, space):
        first = ledger.create(f"{space}r", {"n": "1"})
        second = ledger.replace(first, {"n": "2"})
        assert second is not None and second.version != first.version
        assert dict(second.data) == {"n": "2"}
        assert ledger.replace(first, {"n": "3"}) is None  # a stale read loses
        third = ledger.replace(second, {"n": "3"})
        assert third is not None
        assert dict(ledger.get(f"{space}r").data) == {"n": "3"}
        assert third.created == first.created
        assert [e.name for e in ledger.list(space)] == [f"{space}r"]

    def test_replace_of_a_deleted_record_fails(self, ledger, space):
        entry = ledger.create(f"{space}d", {"n": "1"})
        assert ledger.delete(f"{space}d")
        assert ledger.replace(entry, {"n": "2"}) is None
        assert ledger.get(f"{space}d") is None

    # Delete

    def test_delete_by_name_and_by_unchanged_entry(self, ledger, space):
        entry = ledger.create(f"{space}x", {"n": "1"})
        newer = ledger.replace(entry, {"n": "2"})
        assert not ledger.delete(entry)  # changed since: kept
        assert ledger.get(f"{space}x") is not None
        assert ledger.delete(newer)
        assert not ledger.delete(newer)
        assert not ledger.delete(f"{space}x")
        again = ledger.create(f"{space}x", {"n": "new"})  # the name is free again
        assert again is not None and dict(again.data) == {"n": "new"}
        assert ledger.delete(f"{space}x")
        assert ledger.get(f"{space}x") is None

    # List

    def test_list_gives_each_record_of_a_prefix_once(self, ledger, space):
        for n in range(5):
            ledger.create(f"{space}slot-{n}", {"n": str(n)})
        ledger.create(f"{space}other", {"n": "x"})
        entry = ledger.get(f"{space}slot-2")
        ledger.replace(entry, {"n": "two"})
        slots = ledger.list(f"{space}slot-")
        assert sorted(e.name for e in slots) == [f"{space}slot-{n}" for n in range(5)]
        assert {e.name: e.data["n"] for e in slots}[f"{space}slot-2"] == "two"
        assert len(ledger.list(space)) == 6

    def test_a_list_is_one_engine_call_whatever_the_number(self, ledger, space, engine_calls):
        ledger.create(f"{space}one", {})
        before = engine_calls()
        assert len(ledger.list(space)) == 1
        one = engine_calls() - before
        for n in range(30):
            ledger.create(f"{space}many-{n}", {"n": str(n)})
        before = engine_calls()
        assert len(ledger.list(space)) == 31
        assert engine_calls() - before == one == 1

    # Races

    def test_of_many_concurrent_creates_of_one_name_exactly_one_wins(
        self, ledger, ledger_factory, space
    ):
        name = f"{space}contended"
        wins = _run_workers(_race_create, ledger_factory, ledger, name)
        assert sum(wins) == 1, wins
        assert len(ledger.list(name)) == 1

    def test_compare_and_swap_under_contention_loses_no_update(self, ledger, ledger_factory, space):
        name = f"{space}counter"
        ledger.create(name, {"count": "0"})
        lost = _run_workers(_increment, ledger_factory, ledger, name)
        final = ledger.get(name)
        assert final is not None
        assert int(final.data["count"]) == WORKERS * INCREMENTS, lost
        assert len(ledger.list(name)) == 1


__all__ = ["Entry", "LedgerContract"]
