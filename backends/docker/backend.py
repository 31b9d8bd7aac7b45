"""`DockerBackend`: each session's workload is one Kit container on a Docker engine.

It runs workloads only (`ovas.Backend`): the core keeps every record of a session
(what was asked, its clocks, marks and outcome, and the places admission gave it) in the
ledger, on the same engine (`backends.docker.ledger`), so any number of ovas processes, on
one host or several sharing the engine, and ovas after a restart, see the same sessions and
none over-admits, with no lock and no state folder. A Kit container carries whose it is and
what observing it needs (see `containers`); its GPUs and host ports are places the core
takes before it is made (`places`). One container list serves each call's reads of records
and workloads (`reads`). Sessions an earlier release recorded on its own containers are
read for the core to record (`earlier_records`, see `earlier`).
"""

from __future__ import annotations

import ipaddress
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Self

from backends.docker import containers as c
from backends.docker import earlier, probes
from backends.docker import observe as seen
from backends.docker.connections import Clients
from backends.docker.engine import Engine, ImageMissing, PullFailed, is_port_clash
from backends.docker.gpus import GpuLedger, Inventory, inventory
from backends.docker.ledger import DockerLedger
from backends.docker.ports import as_text, ephemeral_overlap, parse_port_range
from backends.docker.pulls import Jobs
from backends.docker.reads import Reads
from ovas.backend import Catalog, utcnow
from ovas.errors import CapacityExceeded, ConfigurationError, SessionNotFound, Unsatisfiable
from ovas.kitspec import KitSpec, cpu_to_nano
from ovas.ledger import UnknownFormat
from ovas.lifecycle import Mark, Observation, Observed, Stage
from ovas.models import Reason, SessionQuery, SessionRequest
from ovas.names import is_session_id
from ovas.session_records import SESSION_RECORD
from ovas.workloads import (
    LOG_TAIL,
    SESSION_PREFIX,
    SLOT_PREFIX,
    Backend,
    EarlierRecord,
    Places,
)

log = logging.getLogger(__name__)
PROBE_BUDGET = 1.0  # seconds an observation may spend probing and counting clients
# A probe that started before a session was marked ready may still hold the signaling port
# this long after; connections seen sooner might be ovas's own.
PROBE_SETTLE = timedelta(seconds=2 * PROBE_BUDGET)
PORT_TRIES = 8  # starts tried when a host port of the range is held by another program
# Places of no session are kept this long (`Backend.slot_grace`): a start takes its
# places a moment (a few engine creates) before it records its session, and hosts sharing a
# remote engine may disagree on the time by some seconds.
ORPHAN_GRACE = timedelta(seconds=30)
RETRY_AFTER = 30  # seconds a start refused for want of host ports is told to wait
GPU_HINT = " (GPUs need the NVIDIA Container Toolkit on the Docker host)"
CDI_HINT = (
    " (GPUs by CDI name need Docker Engine 25 or later with CDI enabled, and the NVIDIA "
    "Container Toolkit's CDI specification on the Docker host: `nvidia-ctk cdi generate`)"
)


class DockerBackend(Backend):
    """Sessions' workloads as containers on one Docker engine. See the package README."""

    name = "docker"
    keeps_warm_pools = True
    slot_grace = ORPHAN_GRACE.total_seconds()

    def __init__(
        self,
        catalog: Catalog,
        *,
        docker_host: str | None = None,
        public_host: str = "127.0.0.1",
        bind_address: str = "127.0.0.1",
        probe_host: str | None = None,
        port_range: str = "31000-31999",
        gpus: str | Inventory = "auto",
        now: Callable[[], datetime] = utcnow,
        gateway: bool = False,
    ):
        super().__init__(catalog, now=now)
        # With the signaling gateway on, the core counts its clients: reading the engine's
        # connection tables would be calls spent on a count nobody uses.
        self.gateway = gateway
        self.engine = Engine(docker_host)
        self.reads = Reads(self.engine)
        # The core's records, on the same engine, read with the workloads where they can be.
        self.ledger = DockerLedger(engine=self.engine, reads=self.reads)
        self.public_host = public_host
        self.bind_address = bind_address
        # Probes go through the published port, where clients connect, never to the
        # container's bridge address (which a remote engine or a VM would not route).
        wildcard = bind_address in ("0.0.0.0", "::", "")
        self.probe_host = probe_host or ("127.0.0.1" if wildcard else bind_address)
        # With the gateway on, clients must go through it: the signaling port is published
        # only where ovas (and the gateway beside it) reach the published ports, never on
        # the bind address, which clients reach. Media cannot go through the gateway.
        self.signaling_address = self.probe_host if gateway else None
        if gateway and not _is_ip(self.probe_host):
            raise ConfigurationError(
                f"OVAS_DOCKER_PROBE_HOST {self.probe_host!r} is not an IP address: with the "
                "signaling gateway on (OVAS_GATEWAY_DOMAIN), the signaling port is published "
                "on it alone, and Docker publishes on addresses only"
            )
        self.ports = parse_port_range(port_range)
        # A host port place is a count, not a port: Docker picks the port from the range.
        self._port_places = tuple(str(k) for k in range(len(self.ports)))
        self._gpu_setting = gpus
        self._gpus: GpuLedger | None = None
        self.jobs = Jobs(self.engine.pull)
        self.clients = Clients(self.engine)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ovas-probe")
        self._local = threading.local()  # `light`: observing for `collect`, which probes none
        self._started: dict[str, Observation] = {}  # what `run_workload` began, for `start`
        overlap = ephemeral_overlap(self.ports) if self.engine.is_local else None
        if overlap is not None:
            log.warning(
                "OVAS_DOCKER_PORT_RANGE %s overlaps this host's ephemeral ports (%s): the "
                "kernel may take any of those %d ports for an outgoing connection; choose a "
                "range outside /proc/sys/net/ipv4/ip_local_port_range",
                as_text(self.ports),
                as_text(overlap),
                len(overlap),
            )

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """Build from `CATALOG_PATH`, the `DOCKER_*` settings (PUBLIC_HOST, BIND_ADDRESS,
        PROBE_HOST, PORT_RANGE, GPUS) and GATEWAY_DOMAIN. Contacts no engine; raises
        `ConfigurationError` for a bad port range, and for a probe host that is no IP
        address with the gateway on."""
        from ovas.catalog_files import FileCatalog

        return cls(
            FileCatalog(settings.get("CATALOG_PATH") or "config/catalog"),
            public_host=str(settings.get("DOCKER_PUBLIC_HOST") or "127.0.0.1"),
            bind_address=str(settings.get("DOCKER_BIND_ADDRESS") or "127.0.0.1"),
            probe_host=settings.get("DOCKER_PROBE_HOST") or None,
            port_range=str(settings.get("DOCKER_PORT_RANGE") or "31000-31999"),
            gpus=str(settings.get("DOCKER_GPUS") or "auto"),
            gateway=bool(settings.get("GATEWAY_DOMAIN")),
        )

    def gpu_ledger(self) -> GpuLedger:
        """The host's GPUs, found on first use (finding them may run nvidia-smi)."""
        if self._gpus is None:
            setting = self._gpu_setting
            found = setting if isinstance(setting, Inventory) else inventory(setting)
            self._gpus = GpuLedger(found)
        return self._gpus

    def check(self) -> None:
        self.engine.ping()

    # Places: host ports and GPUs

    def places(self, request: SessionRequest) -> Sequence[Places]:
        """One place per host port the session publishes, of its protocol (`port-tcp`,
        `port-udp`: the range's ports, counted; Docker picks which), and its GPUs by device
        id (`gpu`), in the inventory's order."""
        wanted = [
            self._ports(protocol, count, random.sample(self._port_places, len(self.ports)))
            for protocol, count in sorted(c.ports_needed(request.kit).items())
        ]
        if request.kit.gpus > 0:
            wanted.append(self._gpu_places(request.kit.gpus))
        return wanted

    def _ports(self, protocol: str, count: int, names: Sequence[str]) -> Places:
        span, size = as_text(self.ports), len(self.ports)

        def refusal(free: Sequence[str]) -> Unsatisfiable | CapacityExceeded:
            if count > size:
                return Unsatisfiable(
                    f"The profile publishes {count} {protocol.upper()} ports; "
                    f"OVAS_DOCKER_PORT_RANGE ({span}) holds {size}"
                )
            return CapacityExceeded(
                f"All {size} {protocol.upper()} host ports of OVAS_DOCKER_PORT_RANGE ({span}) "
                "are published by sessions; try again later",
                retry_after=RETRY_AFTER,
            )

        return Places(f"port-{protocol}", names, count, refusal)

    def _gpu_places(self, count: int) -> Places:
        ledger = self.gpu_ledger()

        def refusal(free: Sequence[str]) -> Unsatisfiable | CapacityExceeded:
            found = set(free)  # the device ids the start found free
            return ledger.refusal(count, [g for g in ledger.gpus if g.device_id in found])

        return Places("gpu", [g.device_id for g in ledger.gpus], count, refusal)

    # Starting

    def start(self, request: SessionRequest) -> Observed:
        # Every place a start takes, and whether its id has a record, read from one list.
        try:
            with self.reads.scope(ledger=(SLOT_PREFIX, SESSION_PREFIX + request.id)):
                observed = super().start(request)
        finally:
            began = self._started.pop(request.id, None)
        return Observed(observed.record, began) if began is not None else observed

    def run_workload(self, request: SessionRequest) -> None:
        """Create the Kit container (or, while its image is to be pulled, the pending
        record) and return; the container is started, the image pulled, in the background.
        Raises `BackendUnavailable`."""
        cpus, note = self._cpus(request.kit)
        spec = c.container_spec(
            request,
            list(request.places.get("gpu", ())),
            bind_address=self.bind_address,
            signaling_address=self.signaling_address,
            host_ports=as_text(self.ports),
            cpu_limit=cpus,
            note=note,
        )
        container_id, detail = self._create(request, spec)
        self._started[request.id] = Observation(Stage.WAITING, detail=detail, note=note)
        if container_id:
            work = lambda: self._start_container(request.id, container_id)  # noqa: E731
        else:
            work = lambda: self._carry_on(request.id)  # noqa: E731
        self.jobs.launch(request.id, work)

    def _create(self, request: SessionRequest, spec: dict[str, Any]) -> tuple[str, str]:
        """Make the workload: its Kit container, or, while its image is to be pulled, the
        pending record (or a fault, when the engine refuses). The Kit container's id (''
        when there is none to start yet) and what it waits for."""
        kit = request.kit
        if kit.pull_policy != "Always":
            try:
                container_id, refusal = self.engine.create_kit(spec)
            except ImageMissing:
                if kit.pull_policy == "Never":
                    detail = f"the image {kit.image} is not on the Docker engine and the "
                    self._fault(
                        request.id, Reason.IMAGE_PULL, detail + "profile's pullPolicy is Never"
                    )
                    return "", f"Pulling the image {kit.image}"
            else:
                if refusal:
                    self._fault(request.id, Reason.CREATE_FAILED, refusal)
                return container_id, "Starting the container"
        name = c.container_name(request.id, c.PENDING)
        self.engine.create_record(c.record_spec(name, c.pending_labels(spec)))
        return "", f"Pulling the image {kit.image}"

    def _fault(self, session_id: str, reason: Reason, detail: str) -> None:
        """Keep the engine's refusal as the workload's state, for the lifecycle to end the
        session with (`Stage.FAULT`), whichever process observes it."""
        name = c.container_name(session_id, c.FAULT)
        self.engine.create_record(c.record_spec(name, c.fault_labels(session_id, reason, detail)))

    def _cpus(self, kit: KitSpec) -> tuple[str | None, str]:
        """The CPU limit to run with, capped at the host's CPUs, and a note if capped."""
        if not kit.cpu_limit:
            return None, ""
        host = self.engine.cpus
        if host and cpu_to_nano(kit.cpu_limit) > host * 10**9:
            note = (
                f"The profile's CPU limit of {kit.cpu_limit} is more than this host's {host} "
                f"CPUs; it runs with {host}"
            )
            return str(host), note
        return None, ""

    def _carry_on(self, session_id: str) -> None:
        """Drive the session's start on from wherever the engine shows it is: pull the image
        and create the Kit container from the pending record, then start it."""
        objects = self._objects(session_id)
        if objects is None or objects.fault is not None or objects.outcome is not None:
            return
        container = objects.container
        if container is None and objects.pending is not None:
            container_id = self._from_pending(objects.pending)
            if not container_id:
                return
        elif container is not None and container.state == "created":
            container_id = container.container_id
        else:
            return
        self._start_container(session_id, container_id)

    def _from_pending(self, pending: seen.Found) -> str:
        """Pull, then create the Kit container the pending record holds; its id, or '' when
        the session failed, was stopped meanwhile, or another process made the container."""
        session_id = pending.labels[c.SESSION]
        try:
            spec = c.spec_from_labels(pending.labels)
        except ValueError as exc:
            self._fault(session_id, Reason.CREATE_FAILED, f"its pending record: {exc}")
            return ""
        try:
            self.jobs.pull(spec["image"])
            container_id, refusal = self.engine.create_kit(spec)
        except PullFailed as exc:
            self._fault(session_id, Reason.IMAGE_PULL, f"{spec['image']}: {exc}")
            return ""
        except ImageMissing:
            self._fault(session_id, Reason.IMAGE_PULL, f"{spec['image']} is gone after its pull")
            return ""
        if refusal:
            self._fault(session_id, Reason.CREATE_FAILED, refusal)
            return ""
        if container_id and not self.engine.remove(pending.container_id):
            self.engine.remove(container_id)  # the session was stopped or ended meanwhile
            return ""
        return container_id

    def _start_container(self, session_id: str, container_id: str) -> None:
        refusal = ""
        for _ in range(PORT_TRIES):
            refusal = self.engine.start(container_id)
            if not is_port_clash(refusal):
                break
        if refusal:
            words = refusal.lower()
            hint = GPU_HINT if "device driver" in words or "nvidia" in words else ""
            hint = CDI_HINT if hint and "cdi" in words else hint
            self._fault(session_id, Reason.CREATE_FAILED, refusal + hint)

    # Reading: each call's reads of records and workloads from one container list

    def observe(self, session_id: str) -> Observed:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        with self.reads.scope(ledger=(SESSION_PREFIX + session_id,), sessions=session_id):
            return super().observe(session_id)

    def observe_all(self) -> list[Observed]:
        with self.reads.scope(ledger=(SESSION_PREFIX,), sessions=True):
            return super().observe_all()

    def records(self):
        with self.reads.scope(ledger=(SESSION_PREFIX,), sessions=True):
            return super().records()

    def observe_page(self, query: SessionQuery) -> list[Observed]:
        with self.reads.scope(ledger=(SESSION_PREFIX,), sessions=True):
            return super().observe_page(query)

    def _summaries(self, session_id: str | None = None) -> list[Mapping[str, Any]]:
        """The containers of sessions (all, or one's), from this call's list if it made one."""
        served = self.reads.sessions(session_id)
        return served if served is not None else self.engine.summaries(session_id)

    def _objects(self, session_id: str) -> seen.SessionObjects | None:
        """The session's containers as the engine holds them now (never from a list made
        earlier in this call: what a start or a stop does next depends on it)."""
        sessions, _ = seen.group(self.engine.summaries(session_id))
        objects = sessions.get(session_id)
        return objects if objects is not None and objects.workload else None

    def observe_workload(self, session_id: str) -> Observation | None:
        if not is_session_id(session_id):
            return None
        sessions, _ = seen.group(self._summaries(session_id))
        objects = sessions.get(session_id)
        if objects is None or not objects.workload:
            return None
        return self._observe([objects], self._ready_times(session_id))[session_id]

    def observe_workloads(self) -> Mapping[str, Observation]:
        sessions, _ = seen.group(self._summaries())
        current = [o for o in sessions.values() if o.workload]
        if getattr(self._local, "light", False):
            return {o.session_id: Observation(Stage.WAITING) for o in current}
        self.clients.forget([o.container.container_id for o in current if _running(o)])
        ready = self._ready_times() if any(_running(o) for o in current) else {}
        return self._observe(current, ready)

    def _ready_times(self, session_id: str | None = None) -> dict[str, datetime]:
        """When each session (all, or `session_id`) was first seen ready, by its record."""
        if session_id is None:
            entries = self.ledger.list(SESSION_PREFIX)
        else:
            entries = [e for e in [self.ledger.get(SESSION_PREFIX + session_id)] if e]
        ready = {}
        for entry in entries:
            try:
                record, _ = SESSION_RECORD.decode(entry)
            except (UnknownFormat, KeyError, ValueError):
                continue  # the core says why when it reads the record
            if Mark.READY in record.marks:
                ready[record.id] = record.marks[Mark.READY]
        return ready

    def _observe(
        self, entries: list[seen.SessionObjects], ready: Mapping[str, datetime]
    ) -> dict[str, Observation]:
        """Observations of `entries`, by session id: running containers not yet seen ready
        (`ready`) are probed, ready ones have their clients counted, exited ones inspected,
        in parallel within PROBE_BUDGET; unattended starts are carried on."""
        now = self.now()
        probes_: dict[str, Future] = {}
        counts: dict[str, Future] = {}
        exits: dict[str, Future] = {}
        for entry in entries:
            sid = entry.session_id
            if entry.fault is not None:
                continue
            self._resume(entry)
            if _running(entry):
                ready_at = ready.get(sid)
                if ready_at is None:
                    probes_[sid] = self._pool.submit(self._probe, entry)
                    if not self.gateway:
                        counts[sid] = self._pool.submit(self._count_if_ready, probes_[sid], entry)
                elif not self.gateway:
                    settled = now >= ready_at + PROBE_SETTLE
                    counts[sid] = self._pool.submit(self._count, entry, settled)
            elif entry.container is not None and entry.container.ended:
                exits[sid] = self._pool.submit(self._exit, entry.container.container_id)
        started = self._pool.submit(self._engine_started) if exits else None
        pending = [*probes_.values(), *counts.values(), *exits.values(), *filter(None, [started])]
        if pending:
            wait_futures(pending, timeout=PROBE_BUDGET)
        engine_started = _result(started, None)
        found = {}
        for entry in entries:
            sid = entry.session_id
            progress = ""
            if entry.container is None and entry.pending is not None:
                progress = self.jobs.progress(c.parse_labels(entry.pending.labels).image)
            found[sid] = seen.observation(
                entry,
                public_host=self.public_host,
                probe_host=self.probe_host,
                probe_ok=_result(probes_.get(sid), False),
                connections=_result(counts.get(sid), None),
                progress=progress,
                exit_info=_exit_info(_result(exits.get(sid), None), engine_started),
            )
        return found

    def _resume(self, entry: seen.SessionObjects) -> None:
        """Carry on a start no thread of this process works on (a pending record, or a Kit
        container created but never started): its worker may have died."""
        waiting = entry.container is None or entry.container.state == "created"
        if waiting and not self.jobs.running_here(entry.session_id):
            self.jobs.launch(entry.session_id, lambda: self._carry_on(entry.session_id))

    def _probe(self, entry: seen.SessionObjects) -> bool:
        port = seen.probe_target(entry)
        if port is None:
            return False
        labels = c.parse_labels(entry.container.labels)
        return probes.probe(self.probe_host, port, labels.probe)

    def _count_if_ready(self, probed: Future, entry: seen.SessionObjects) -> int | None:
        # Just ready: whether ovas can count its clients shows in the very first answer.
        return self._count(entry, settled=False) if probed.result() else None

    def _count(self, entry: seen.SessionObjects, settled: bool) -> int | None:
        """Clients of a ready session; none yet while a probe of ours may still hold its
        signaling port (`settled` False), if ovas can count them at all."""
        labels = c.parse_labels(entry.container.labels)
        signaling = next(p for p in labels.ports if p.name == "signaling")
        count = self.clients.count(entry.container.container_id, signaling.container_port)
        return count if settled or count is None else 0

    def _exit(self, container_id: str) -> seen.Exit:
        state = self.engine.state(container_id)
        return seen.Exit(
            oom=bool(state.get("OOMKilled")),
            error=str(state.get("Error") or ""),
            finished=_docker_time(state.get("FinishedAt", "")),
            logs=tuple(self.engine.logs(container_id, tail=5)),
        )

    def _engine_started(self) -> datetime | None:
        return _docker_time(self.engine.started())

    def workload_clients(self, session_id: str) -> int | None:
        """None: `observe_workload(s)` count the clients of a running Kit container where
        ovas can (and where it cannot, asking again would tell no more)."""
        return None

    def workload_logs(self, session_id: str, tail: int) -> list[str]:
        return self.engine.logs(c.container_name(session_id), tail)

    # Removing

    def stop_workload(self, session_id: str) -> None:
        """Remove the session's containers: the Kit container first (a running one is
        killed), then its pending record (a pull finishing meanwhile finds it gone and
        removes what it made), then the rest, and any an earlier release kept of it."""
        if not is_session_id(session_id):
            return
        sessions, malformed = seen.group(self.engine.summaries(session_id))
        objects = sessions.get(session_id)
        if objects is None:
            return
        first = [f for f in (objects.container, objects.pending) if f is not None]
        for found in first:
            self.engine.remove(found.container_id)
        rest = [f.container_id for f in objects.every[len(first) :]]
        rest += [s["Id"] for s in malformed]
        for future in [self._pool.submit(self.engine.remove, cid) for cid in rest]:
            future.result()
        if objects.container is not None:
            self.clients.drop(objects.container.container_id)

    def collect(self, now: datetime) -> list[str]:
        """The core's clean-up (places and workloads of no session, finishes to complete),
        reading the records and workloads in one list and probing nothing; then containers
        labelled as ours that are no record of ovas, and what an earlier release kept of a
        session that is gone (its marks and claims), once `ORPHAN_GRACE` old."""
        # The whole ledger: the core's clean-up reads its places and records in one list.
        with self.reads.scope(ledger=("",), sessions=True):
            self._local.light = True
            try:
                removed = super().collect(now)
            finally:
                self._local.light = False
            sessions, malformed = seen.group(self._summaries())
            recorded = {
                e.name.removeprefix(SESSION_PREFIX) for e in self.ledger.list(SESSION_PREFIX)
            }
        for summary in malformed:
            if self.engine.remove(summary["Id"]):
                removed.append((summary.get("Names") or [summary["Id"]])[0].lstrip("/"))
        for objects in sessions.values():
            if objects.exists or objects.session_id in recorded:
                continue
            for found in objects.every:
                if now - found.created >= ORPHAN_GRACE and self.engine.remove(found.container_id):
                    removed.append(found.name)
        return removed

    # Sessions an earlier release recorded

    def earlier_records(self, session_id: str | None = None) -> Sequence[EarlierRecord]:
        """Sessions the releases before the core's ledger recorded on their containers (see
        `earlier`): their records, an ended one's last log lines, and the places a live one
        holds (its GPUs, and a place per host port it publishes)."""
        sessions, _ = seen.group(self._summaries(session_id))
        if not any(earlier.is_earlier(o) for o in sessions.values() if o.describing):
            return []
        # Those recorded already are left out: reading an ended one's logs is an engine call.
        prefix = SESSION_PREFIX + (session_id or "")
        recorded = {e.name.removeprefix(SESSION_PREFIX) for e in self.ledger.list(prefix)}
        found, unreadable = earlier.earlier_records(
            [o for o in sessions.values() if o.exists and o.session_id not in recorded],
            logs=lambda container_id: self.engine.logs(container_id, LOG_TAIL),
            gpu_ids=self._gpu_id,
            ports=lambda protocol, count: self._ports(protocol, count, self._port_places),
        )
        for unread in unreadable:
            log.warning("session %s of an earlier release has labels that cannot be read", unread)
        return found

    def _gpu_id(self, named: str) -> str:
        """The device id of the GPU an earlier release's label names (index or UUID)."""
        return next((g.device_id for g in self.gpu_ledger().gpus if named in g.ids), named)

    def describe(self, insider: bool) -> dict[str, Any]:
        found = self.gpu_ledger().inventory
        if not insider:
            return {"gpus": len(found.gpus)}
        return {
            "engine": self.engine.address,
            "port_range": as_text(self.ports),
            "gpus": [g.describe() for g in found.gpus],
            "gpu_source": found.source,
        }

    def close(self) -> None:
        self.jobs.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self.engine.close()


def _running(objects: seen.SessionObjects) -> bool:
    return objects.container is not None and objects.container.state == "running"


def _result(future: Future | None, default):
    if future is None or not future.done() or future.exception() is not None:
        return default
    return future.result()


def _exit_info(info: seen.Exit | None, engine_started: datetime | None) -> seen.Exit | None:
    """`info` with when the engine last started, read once per observation."""
    return replace(info, engine_started=engine_started) if info is not None else None


def _docker_time(text: str) -> datetime | None:
    """Docker's RFC 3339 time with nanoseconds (Python's parser takes microseconds)."""
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        parsed = datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
    except ValueError:
        return None
    return parsed if parsed.year > 1 else None


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
