"""`ovas.Backend`: the core's records over a ledger, under a backend that only runs
workloads (the example plugin). Admission across threads and processes sharing one ledger,
atomic claims, finishes that free places, and cleanup after its grace, on an injected clock."""

from __future__ import annotations

import logging
import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import timedelta
from multiprocessing.managers import BaseManager

import pytest
from ovas_example_plugin import ExampleBackend

import ovas
from ovas import Backend, registry
from ovas.errors import (
    BackendUnavailable,
    CapacityExceeded,
    Conflict,
    SessionNotFound,
    Unsatisfiable,
    UserCapacityExceeded,
)
from ovas.ledger import MAX_VALUE, Entry, MemoryLedger
from ovas.lifecycle import Mark, Observation, Outcome, Record, Stage
from ovas.models import Reason, SessionState, WarmPool
from ovas.session_records import SESSION_RECORD, SLOT_RECORD, encode_session
from ovas.testing import FakeClock, WarmPoolContract, make_request
from ovas.workloads import SESSION_PREFIX, SLOT_PREFIX, EarlierRecord, Places, place_name

SLOW = {"STANDIN_READY_DELAY": "60"}
RACERS = 16


def example(clock, ledger=None) -> Backend:
    backend = registry.load("example").from_settings({})
    backend.now = clock
    if ledger is not None:
        backend.ledger = ledger
    return backend


def places(ledger, kind: str = "") -> list[str]:
    return sorted(e.name for e in ledger.list(f"{SLOT_PREFIX}{kind}"))


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def ledger():
    return MemoryLedger()


@pytest.fixture
def backend(clock, ledger):
    return example(clock, ledger)


def request_for(backend, **kw):
    return make_request(backend.catalog, now=backend.now(), env=SLOW, **kw)


class TestExamplePluginWarmPools(WarmPoolContract):
    @pytest.fixture
    def backend(self, clock):
        return example(clock)

    @pytest.fixture
    def ready_timeout(self):
        return 10.0


def test_the_example_implements_only_workloads():
    cls = registry.load("example")
    assert issubclass(cls, Backend) and cls.keeps_warm_pools
    assert ovas.Backend is Backend and ovas.WorkloadBackend is Backend
    assert sorted(Backend.__abstractmethods__) == [
        "from_settings",
        "observe_workload",
        "observe_workloads",
        "run_workload",
        "stop_workload",
    ]
    assert set(Backend.__abstractmethods__) <= {
        "from_settings",
        "run_workload",
        "observe_workload",
        "observe_workloads",
        "stop_workload",
        "workload_logs",
        "workload_clients",
    }


class RacingLedger(MemoryLedger):
    """Holds each thread's first call of each of `ops` (`create`, `replace`) until `racers`
    threads have come to it, so that they have all read the same state and their writes
    race for real."""

    def __init__(self, racers: int, *ops: str):
        super().__init__()
        self.barriers = {op: threading.Barrier(racers) for op in ops}
        self.waited = threading.local()

    def _together(self, op: str) -> None:
        if op in self.barriers and not getattr(self.waited, op, False):
            setattr(self.waited, op, True)
            self.barriers[op].wait(30)

    def create(self, name, data):
        self._together("create")
        return super().create(name, data)

    def replace(self, entry, data):
        self._together("replace")
        return super().replace(entry, data)


def _race(backends, requests) -> tuple[int, int]:
    """Start every request at once, spread over `backends`: (admitted, refused)."""
    barrier = threading.Barrier(len(requests))

    def one(n):
        barrier.wait(30)
        try:
            backends[n % len(backends)].start(requests[n])
            return True
        except (CapacityExceeded, UserCapacityExceeded):
            return False

    with ThreadPoolExecutor(len(requests)) as pool:
        results = list(pool.map(one, range(len(requests))))
    return results.count(True), results.count(False)


def test_admission_across_threads_and_instances_never_exceeds_the_capacity(clock):
    ledger = RacingLedger(RACERS, "create")
    backends = [example(clock, ledger) for _ in range(3)]
    requests = [request_for(backends[0], capacity=3) for _ in range(RACERS)]
    assert _race(backends, requests) == (3, RACERS - 3)
    assert len(ledger.list(SESSION_PREFIX)) == 3
    assert places(ledger, "all.") == [f"{SLOT_PREFIX}all.{n}" for n in range(3)]
    # Every refused start left nothing behind: no record, no place, no workload.
    running = set().union(*(b.observe_workloads() for b in backends))
    assert running == {e.name.removeprefix(SESSION_PREFIX) for e in ledger.list(SESSION_PREFIX)}


def test_a_users_capacity_holds_across_threads(clock, ledger, backend):
    requests = [request_for(backend, username="alice", user_capacity=2) for _ in range(RACERS)]
    assert _race([backend, example(clock, ledger)], requests) == (2, RACERS - 2)
    assert backend.start(request_for(backend, username="bob", user_capacity=2))


class SharedLedger(BaseManager):
    """Serves one `MemoryLedger` to other processes, as an engine serves its records."""


SharedLedger.register("Ledger", MemoryLedger)


def _start_in_process(ledger, capacity: int, go) -> int:
    """In another process: RACERS // 2 concurrent starts on an example backend over the
    shared `ledger`; how many were admitted."""
    backend = example(FakeClock(), ledger)
    requests = [request_for(backend, capacity=capacity) for _ in range(RACERS // 2)]
    go.wait(60)
    return _race([backend], requests)[0]


def test_admission_across_processes_sharing_a_ledger_never_exceeds_the_capacity():
    context = multiprocessing.get_context("spawn")
    with SharedLedger(ctx=context) as manager, context.Manager() as events:
        ledger = manager.Ledger()
        go = events.Event()
        with context.Pool(3) as pool:
            pending = [pool.apply_async(_start_in_process, (ledger, 4, go)) for _ in range(3)]
            go.set()
            admitted = sum(p.get(120) for p in pending)
        assert admitted == 4
        assert len(ledger.list(SESSION_PREFIX)) == 4
        assert len(ledger.list(f"{SLOT_PREFIX}all.")) == 4


def test_of_many_claims_of_one_pooled_session_exactly_one_wins(clock):
    ledger = RacingLedger(RACERS, "replace")
    backend = example(clock, ledger)
    pool = WarmPool("p", backend.catalog.applications()[0].id, "latest", "default", 1)
    pooled = backend.start(request_for(backend, pool=pool)).record
    assert places(ledger, "pool.")
    peers = [backend, example(clock, ledger)]
    barrier = threading.Barrier(RACERS)

    def claim(n):
        barrier.wait(30)
        return peers[n % 2].claim(pooled.id, f"user{n}", clock())

    with ThreadPoolExecutor(RACERS) as threads:
        won = list(threads.map(claim, range(RACERS)))
    assert won.count(True) == 1
    record = backend.observe(pooled.id).record
    assert record.username == f"user{won.index(True)}" and not record.pooled
    assert not places(ledger, "pool.")  # its pool's place is free again


def test_a_claim_past_the_users_capacity_changes_nothing(clock, ledger, backend):
    pool = WarmPool("p", backend.catalog.applications()[0].id, "latest", "default", 1)
    pooled = backend.start(request_for(backend, pool=pool)).record
    backend.start(request_for(backend, username="alice", user_capacity=1))
    with pytest.raises(UserCapacityExceeded):
        backend.claim(pooled.id, "alice", clock(), user_capacity=1)
    assert backend.observe(pooled.id).record.pooled
    assert len(places(ledger, "user.")) == 1


def test_a_finish_frees_the_place_and_keeps_the_record_until_stop(clock, ledger, backend):
    first = backend.start(request_for(backend, capacity=1)).record
    with pytest.raises(CapacityExceeded):
        backend.start(request_for(backend, capacity=1))
    outcome = Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended: lifetime", clock())
    assert backend.finish(first.id, outcome)
    assert not backend.finish(first.id, outcome)  # once
    assert first.id not in backend.observe_workloads()
    kept = backend.observe(first.id)
    assert kept.record.outcome == outcome and kept.seen.stage is Stage.GONE
    second = backend.start(request_for(backend, capacity=1)).record
    backend.stop(first.id)
    assert [e.name for e in ledger.list(SESSION_PREFIX)] == [SESSION_PREFIX + second.id]


def test_a_finish_whose_outcome_cannot_be_written_still_stops_the_workload(
    clock, ledger, backend, caplog
):
    session = backend.start(request_for(backend, capacity=1)).record

    def unavailable(entry, data):
        raise BackendUnavailable("the engine is down")

    ledger.replace = unavailable
    outcome = Outcome(SessionState.FAILED, Reason.EXITED, "exited", clock())
    with caplog.at_level(logging.ERROR), pytest.raises(BackendUnavailable):
        backend.finish(session.id, outcome)
    assert session.id not in backend.observe_workloads()
    assert "cannot be recorded" in caplog.text and session.id in caplog.text
    assert not places(ledger)  # its place is free too


def test_a_workload_gone_without_an_outcome_is_gone(backend):
    session = backend.start(request_for(backend)).record
    backend.stop_workload(session.id)
    seen = backend.observe(session.id).seen
    assert seen.stage is Stage.GONE
    assert [o.seen.stage for o in backend.observe_all()] == [Stage.GONE]


def test_marks_are_kept_once(clock, backend):
    session = backend.start(request_for(backend)).record
    at = clock()
    assert backend.mark(session.id, Mark.READY, at)
    assert not backend.mark(session.id, Mark.READY, at + timedelta(seconds=5))
    assert backend.observe(session.id).record.marks == {Mark.READY: at}
    assert backend.mark(session.id, Mark.READY, None)
    assert not backend.mark("0" * 8, Mark.READY, at)


def test_collect_frees_places_of_no_session_after_the_grace(clock, ledger, backend):
    # A start that took its place and never wrote its record (its process was killed).
    data = SLOT_RECORD.encode({"session": "gone", "taken": clock().isoformat()})
    ledger.create(f"{SLOT_PREFIX}all.0", data)
    with pytest.raises(CapacityExceeded):
        backend.start(request_for(backend, capacity=1))
    clock.advance(backend.slot_grace - 1)
    assert backend.collect(clock()) == []
    clock.advance(2)
    assert backend.collect(clock()) == [f"{SLOT_PREFIX}all.0"]
    assert backend.start(request_for(backend, capacity=1))
    assert backend.collect(clock()) == []  # a live session's place stays


def test_collect_stops_workloads_of_no_session_and_leaves_unknown_records(clock, ledger, backend):
    orphan = request_for(backend)
    backend.run_workload(orphan)  # its start was interrupted before anything was recorded
    newer = {"kind": "session", "format": "2", "id": "x"}
    ledger.create(f"{SESSION_PREFIX}newer", newer)
    ledger.create(f"{SLOT_PREFIX}all.9", {"kind": "slot", "format": "2"})
    clock.advance(backend.slot_grace + 1)
    assert backend.collect(clock()) == [orphan.id]
    assert backend.observe_workload(orphan.id) is None
    assert ledger.get(f"{SESSION_PREFIX}newer").data == newer
    assert ledger.get(f"{SLOT_PREFIX}all.9") is not None
    assert backend.observe_all() == []


def test_a_session_record_reads_back_whole_with_its_newest_log_lines(clock, backend):
    record = backend.start(request_for(backend, username="alice@example.com")).record
    outcome = Outcome(SessionState.FAILED, Reason.EXITED, "x" * 5000, clock())
    ended = replace(record, marks={Mark.READY: clock()}, outcome=outcome)
    lines = tuple(f"line {n} " + "y" * 80 for n in range(100))
    data = encode_session(ended, lines)
    assert data["format"] == "1" and all(len(v) <= MAX_VALUE for v in data.values())
    read, kept = SESSION_RECORD.decode(Entry("session.x", data, "1"))
    assert read == replace(ended, outcome=replace(outcome, message="x" * MAX_VALUE))
    assert kept == lines[-len(kept) :] and len(kept) > 10


GPUS = ("GPU-8f1c", "nvidia.com/gpu=1", "2")


class WithGpus(type(example(FakeClock()))):
    """The example plugin on a host of three GPUs: a workload takes `GPUS` of them (its
    env), and remembers the device ids the core gave it."""

    given: dict

    def places(self, request):
        def refusal(free):
            if int(request.kit.env_dict["GPUS"]) > len(GPUS):
                return Unsatisfiable(f"{len(GPUS)} GPUs on this host")
            return CapacityExceeded(f"{len(free)} of {len(GPUS)} GPUs free", resource="gpu")

        return [Places("gpu", GPUS, int(request.kit.env_dict.get("GPUS", "0")), refusal)]

    def run_workload(self, request):
        self.__dict__.setdefault("given", {})[request.id] = request.places.get("gpu")
        super().run_workload(request)


def gpu_backend(clock, ledger) -> WithGpus:
    backend = WithGpus.from_settings({})
    backend.now, backend.ledger = clock, ledger
    return backend


def test_racing_starts_never_share_a_gpu_and_a_finish_frees_its_gpus(clock):
    ledger = RacingLedger(RACERS, "create")
    backends = [gpu_backend(clock, ledger) for _ in range(2)]
    requests = [
        make_request(backends[0].catalog, now=clock(), env={**SLOW, "GPUS": "1"})
        for _ in range(RACERS)
    ]
    assert _race(backends, requests) == (3, RACERS - 3)
    ledger.barriers.clear()  # the race is over
    given = [ids for b in backends for ids in b.__dict__.get("given", {}).values()]
    assert sorted(i for ids in given for i in ids) == sorted(GPUS)
    names = places(ledger, "gpu.")
    assert names[0] == f"{SLOT_PREFIX}gpu.2" and len(names) == 3  # a CDI name is digested
    owner = next(b for b in backends if b.__dict__.get("given"))  # either may have won all
    holder = next(iter(owner.given))
    owner.finish(holder, Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended", clock()))
    assert len(places(ledger, "gpu.")) == 2
    again = make_request(owner.catalog, now=clock(), env={**SLOW, "GPUS": "1"})
    owner.start(again)
    assert owner.given[again.id] == owner.given[holder]


def test_a_start_short_of_gpus_takes_none_and_one_asking_too_many_is_unsatisfiable(clock, ledger):
    backend = gpu_backend(clock, ledger)
    backend.start(make_request(backend.catalog, now=clock(), env={**SLOW, "GPUS": "2"}))
    with pytest.raises(CapacityExceeded) as refused:
        backend.start(make_request(backend.catalog, now=clock(), env={**SLOW, "GPUS": "2"}))
    assert refused.value.resource == "gpu" and "1 of 3 GPUs free" in refused.value.message
    assert len(places(ledger, "gpu.")) == 2 and len(ledger.list(SESSION_PREFIX)) == 1
    with pytest.raises(Unsatisfiable):
        backend.start(make_request(backend.catalog, now=clock(), env={**SLOW, "GPUS": "4"}))
    assert len(places(ledger, "gpu.")) == 2


def test_collect_keeps_the_gpus_of_live_sessions_and_frees_those_of_none(clock, ledger):
    backend = gpu_backend(clock, ledger)
    backend.start(make_request(backend.catalog, now=clock(), env={**SLOW, "GPUS": "1"}))
    orphan = f"{SLOT_PREFIX}gpu.2"
    ledger.create(orphan, SLOT_RECORD.encode({"session": "gone", "taken": clock().isoformat()}))
    clock.advance(backend.slot_grace + 1)
    assert backend.collect(clock()) == [orphan]
    assert places(ledger, "gpu.") == [place_name("gpu", GPUS[0])]


class Upgraded(ExampleBackend):
    """The example backend after an upgrade: its earlier release kept records in its own
    engine (`earlier`, by session id), which it returns until the core has adopted them; its
    workloads run on a node (`nodes`: those that exist)."""

    def __init__(self, clock, ledger):
        super().__init__(now=clock)
        self.ledger = ledger
        self.earlier: dict[str, EarlierRecord] = {}
        self.reads: list[str | None] = []
        self.nodes = {"node-a"}

    def earlier_records(self, session_id=None):
        self.reads.append(session_id)
        return [e for i, e in self.earlier.items() if session_id in (None, i)]

    def forget_earlier_record(self, session_id):
        self.earlier.pop(session_id, None)

    def workload_node(self, session_id):
        return "node-a" if session_id in self._workloads else ""

    def explain_workload(self, record, seen):
        if seen is None and record.node and record.node not in self.nodes:
            return Observation(Stage.FAULT, fault=Reason.NODE_LOST, detail=record.node)
        return seen


def earlier_session(backend, places=("all", "user"), **kw) -> EarlierRecord:
    """A session of the earlier release: its workload runs, its record is the engine's."""
    request = request_for(backend, **kw)
    backend.run_workload(request)
    record = replace(Record.of(request), marks={Mark.READY: request.created_time}, node="n1")
    backend.earlier[request.id] = EarlierRecord(record, places=frozenset(places))
    return backend.earlier[request.id]


@pytest.fixture
def upgraded(clock, ledger):
    return Upgraded(clock, ledger)


def test_earlier_records_are_adopted_at_first_use_with_their_places(clock, ledger, upgraded):
    live = earlier_session(upgraded, username="alice")
    outcome = Outcome(SessionState.ENDED, Reason.APP_EXITED, "Ended", clock())
    ended = replace(live.record, id="e" * 8, outcome=outcome)
    upgraded.earlier[ended.id] = EarlierRecord(ended, ("a line",), frozenset({"all"}))
    # Before any record is read, a start is admitted against the places the live one held.
    with pytest.raises(CapacityExceeded):
        upgraded.start(request_for(upgraded, capacity=1))
    assert upgraded.reads == [None] and upgraded.earlier == {}  # adopted, then forgotten
    assert places(ledger, "all.") == [f"{SLOT_PREFIX}all.0"]
    assert len(places(ledger, "user.")) == 1  # the ended one holds none
    with pytest.raises(UserCapacityExceeded):
        upgraded.start(request_for(upgraded, username="alice", user_capacity=1))
    assert {o.record.id: o.record for o in upgraded.observe_all()} == {
        live.record.id: live.record,
        ended.id: ended,
    }
    assert upgraded.logs(ended.id) == ["a line"]
    assert upgraded.observe(live.record.id).seen.stage is Stage.WAITING  # its workload runs
    assert upgraded.collect(clock()) == []  # its workload is a session's
    upgraded.stop(live.record.id)
    assert not places(ledger) and upgraded.observe_workloads() == {}
    assert live.record.id not in {r.id for r in upgraded.records()}


def test_a_session_recorded_twice_at_once_is_adopted_once(clock, ledger, upgraded):
    live = earlier_session(upgraded)
    peer = Upgraded(clock, ledger)
    peer.earlier = dict(upgraded.earlier)
    assert [r.id for r in peer.records()] == [live.record.id]
    assert [r.id for r in upgraded.records()] == [live.record.id]
    assert len(places(ledger, "all.")) == 1 and len(places(ledger, "user.")) == 1


def test_a_record_missed_at_first_use_is_adopted_when_asked_for_or_collected(
    clock, ledger, upgraded
):
    assert upgraded.records() == []
    asked = earlier_session(upgraded)  # an earlier replica made it since
    assert upgraded.observe(asked.record.id).record == asked.record
    assert upgraded.reads == [None, asked.record.id]
    seen = earlier_session(upgraded, places=())
    assert upgraded.collect(clock()) == []  # adopted, not stopped as a workload of none
    assert seen.record.id in upgraded.observe_workloads()
    assert {r.id for r in upgraded.records()} == {asked.record.id, seen.record.id}
    upgraded.reads.clear()
    assert upgraded.collect(clock()) == [] and upgraded.reads == [None]
    assert upgraded.collect(clock()) == [] and upgraded.reads == [None]  # none was due
    assert upgraded.collect(clock()) == [] and upgraded.reads == [None]


def test_the_ready_mark_keeps_the_node_and_a_vanished_workload_is_explained(clock, upgraded):
    session = upgraded.start(request_for(upgraded)).record
    assert upgraded.mark(session.id, Mark.READY, clock())
    assert upgraded.observe(session.id).record.node == "node-a"
    upgraded.stop_workload(session.id)
    assert upgraded.observe(session.id).seen.stage is Stage.GONE  # node-a exists: lost
    upgraded.nodes.clear()
    seen = upgraded.observe(session.id).seen
    assert (seen.stage, seen.fault, seen.detail) == (Stage.FAULT, Reason.NODE_LOST, "node-a")


class WithEarlier(type(example(FakeClock()))):
    """The example plugin after an upgrade: `earlier` are the sessions its earlier release
    recorded its own way, whose workloads run on."""

    earlier: tuple = ()

    def earlier_records(self, session_id=None):
        return [e for e in self.earlier if session_id in (None, e.record.id)]


KINDS = frozenset({"all", "user", "pool"})


def earlier_backend(clock, ledger, earlier) -> WithEarlier:
    backend = WithEarlier.from_settings({})
    backend.now, backend.ledger, backend.earlier = clock, ledger, tuple(earlier)
    return backend


def test_sessions_an_earlier_release_recorded_are_recorded_once_with_their_places(clock):
    ledger = RacingLedger(RACERS, "create")
    first = example(clock)
    live = request_for(first, username="ann")
    pooled = request_for(
        first, pool=WarmPool("p", first.catalog.applications()[0].id, "latest", "default", 1)
    )
    gpus = [Places("gpu", ("GPU-8f1c", "2"), 1, str)]
    outcome = Outcome(SessionState.ENDED, Reason.APP_EXITED, "Ended", clock())
    earlier = [
        EarlierRecord(Record.of(live), places=KINDS, named=gpus),
        EarlierRecord(Record.of(pooled), places=KINDS),
        EarlierRecord(replace(Record.of(request_for(first)), outcome=outcome), ("bye",)),
    ]
    backends = [earlier_backend(clock, ledger, earlier) for _ in range(RACERS)]
    for backend in backends:
        backend.run_workload(live)  # its workload runs on, in every process's eyes
    with ThreadPoolExecutor(RACERS) as threads:
        listed = list(threads.map(lambda b: b.observe_all(), backends))
    ledger.barriers.clear()
    assert all({o.record.id for o in found} == {e.record.id for e in earlier} for found in listed)
    assert len(ledger.list(SESSION_PREFIX)) == 3  # each recorded once
    held = sorted((e.name.split(".")[1], e.data["session"]) for e in ledger.list(SLOT_PREFIX))
    live_places = [("all", live.id), ("user", live.id), ("gpu", live.id)]
    assert held == sorted([*live_places, ("all", pooled.id), ("pool", pooled.id)])
    backend = backends[0]
    assert backend.observe(live.id).record == Record.of(live)
    ended = earlier[2].record.id
    assert backend.logs(ended) == ["bye"] and backend.observe(ended).record.outcome == outcome
    # From then on the ledger is the record: cleanup keeps the workload, a finish frees all.
    clock.advance(backend.slot_grace + 1)
    assert backend.collect(clock()) == []
    assert live.id in backend.observe_workloads()
    backend.finish(live.id, Outcome(SessionState.ENDED, Reason.MAX_LIFETIME, "Ended", clock()))
    assert [e.data["session"] for e in ledger.list(SLOT_PREFIX)] == [pooled.id] * 2


def test_a_session_an_earlier_release_recorded_is_read_when_asked_for(clock, ledger):
    session = request_for(example(clock), username="ann")
    backend = earlier_backend(clock, ledger, [EarlierRecord(Record.of(session), places=KINDS)])
    backend.__dict__["_earlier_read"] = True  # as if read before it was made
    backend.run_workload(session)
    assert backend.observe(session.id).record == Record.of(session)
    assert ledger.get(SESSION_PREFIX + session.id) is not None
    with pytest.raises(SessionNotFound):
        backend.observe("0" * 8)


def test_an_adoption_that_loses_keeps_the_gpu_it_took_for_the_session(clock, ledger):
    """Two processes adopt one session at once: the first takes its GPU, the second finds
    it taken, records the session first; the GPU place stays the session's."""
    session = request_for(example(clock), username="ann")
    earlier = EarlierRecord(
        Record.of(session), places=KINDS, named=[Places("gpu", ("GPU-8f1c",), 1, str)]
    )
    first, second = (earlier_backend(clock, ledger, [earlier]) for _ in range(2))
    taken = first._hold_places(earlier)
    assert [e.name.split(".")[1] for e in taken] == ["all", "user", "gpu"]
    second._adopt()  # wins the record, holding its own slots and no GPU
    first._give_back(earlier, taken)
    held = sorted(e.name.split(".")[1] for e in ledger.list(SLOT_PREFIX))
    assert held == ["all", "gpu", "user"]
    with pytest.raises(CapacityExceeded):  # the GPU is held: no start is handed it
        gpu_backend(clock, ledger).start(
            make_request(first.catalog, now=clock(), env={**SLOW, "GPUS": "3"})
        )


class AdoptedMeanwhile(MemoryLedger):
    """A ledger whose first list of everything is read just before another process records
    `session` (it adopts it): the list does not show it, the engine does."""

    def __init__(self, session: Record):
        super().__init__()
        self.session = session

    def list(self, prefix: str = ""):
        listed = super().list(prefix)
        if not prefix and self.session is not None:
            self.create(SESSION_PREFIX + self.session.id, encode_session(self.session))
            self.session = None
        return listed


def test_collect_leaves_a_workload_another_process_recorded_meanwhile(clock):
    backend = example(clock)
    session = request_for(backend)
    backend.ledger = AdoptedMeanwhile(Record.of(session))
    backend.run_workload(session)
    clock.advance(backend.slot_grace + 1)
    assert backend.collect(clock()) == []
    assert session.id in backend.observe_workloads()


def test_collect_leaves_a_session_of_a_newer_format_and_its_places_alone(clock, ledger, backend):
    session = request_for(backend, capacity=2)
    backend.start(session)
    entry = ledger.get(SESSION_PREFIX + session.id)
    assert ledger.replace(entry, {**entry.data, "format": "9"}) is not None
    clock.advance(backend.slot_grace + 1)
    assert backend.collect(clock()) == []
    assert session.id in backend.observe_workloads()
    assert [e.data["session"] for e in ledger.list(SLOT_PREFIX)] == [session.id]


def test_a_second_start_of_one_session_id_is_a_conflict_that_stops_nothing(clock, backend):
    session = request_for(backend, capacity=2)
    backend.start(session)
    with pytest.raises(Conflict):
        backend.start(session)
    assert session.id in backend.observe_workloads()
    assert [e.data["session"] for e in backend.ledger.list(SLOT_PREFIX)] == [session.id]
