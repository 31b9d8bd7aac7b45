"""`DockerBackend`: each session is one Kit container on a Docker engine.

The engine is the record and the lock. Sessions are read back from labelled containers
(see `containers`), so any number of ovas processes, on one host or several sharing the
engine, and ovas after a restart, see the same sessions; admission claims uniquely named
containers (see `admission`), so none over-admits, with no lock and no state folder.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, Self

from backends.docker import containers as c
from backends.docker import observe as seen
from backends.docker import probes
from backends.docker.admission import Admission
from backends.docker.connections import Clients
from backends.docker.engine import Engine, ImageMissing, PullFailed, is_port_clash
from backends.docker.gpus import GpuLedger, Inventory, inventory
from backends.docker.ledger import DockerLedger
from backends.docker.ports import as_text, ephemeral_overlap, parse_port_range
from backends.docker.pulls import Jobs
from ovas.backend import Backend, Catalog, utcnow
from ovas.errors import ConfigurationError, SessionNotFound
from ovas.kitspec import KitSpec, cpu_to_nano
from ovas.lifecycle import Mark, Observation, Observed, Outcome, Record, Stage
from ovas.models import Reason, SessionRequest
from ovas.names import is_session_id

log = logging.getLogger(__name__)
PROBE_BUDGET = 1.0  # seconds an observation may spend probing and counting clients
# A probe that started before a session was marked ready may still hold the signaling port
# this long after; connections seen sooner might be ovas's own.
PROBE_SETTLE = timedelta(seconds=2 * PROBE_BUDGET)
PORT_TRIES = 8  # starts tried when a host port of the range is held by another program
# Claims and marks of no session are kept this long: a start in progress takes its claims a
# moment (a few engine creates) before it records its session, and hosts sharing a remote
# engine may disagree on the time by some seconds. Longer keeps a slot of a session whose
# container was removed by hand from the next start.
ORPHAN_GRACE = timedelta(seconds=30)
LOG_LINES = 100  # kept with a session's outcome
# Slots a session holds whoever owns it: not traded by a warm pool's claim.
_SHARED_SLOTS = (c.SLOT_PREFIX, c.PORT_SLOT_PREFIX)
GPU_HINT = " (GPUs need the NVIDIA Container Toolkit on the Docker host)"
CDI_HINT = (
    " (GPUs by CDI name need Docker Engine 25 or later with CDI enabled, and the NVIDIA "
    "Container Toolkit's CDI specification on the Docker host: `nvidia-ctk cdi generate`)"
)


class DockerBackend(Backend):
    """Sessions as containers on one Docker engine. See the package README for why."""

    name = "docker"
    keeps_warm_pools = True

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
        stop_grace: float = 10.0,
        now: Callable[[], datetime] = utcnow,
        gateway: bool = False,
    ):
        self.catalog = catalog
        # With the signaling gateway on, the core counts its clients: reading the engine's
        # connection tables would be calls spent on a count nobody uses.
        self.gateway = gateway
        self.now = now
        self.engine = Engine(docker_host)
        # The core's shared records (a warm pool's back-off...), on the same engine.
        self.ledger = DockerLedger(engine=self.engine)
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
        self.stop_grace = stop_grace
        self._gpu_setting = gpus
        self._ledger: GpuLedger | None = None
        self.admission = Admission(self.engine, self._ledger_now, self.ports)
        self.jobs = Jobs(self.engine.pull)
        self.clients = Clients(self.engine)
        self._pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ovas-probe")
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

    def _ledger_now(self) -> GpuLedger:
        if self._ledger is None:
            setting = self._gpu_setting
            found = setting if isinstance(setting, Inventory) else inventory(setting)
            self._ledger = GpuLedger(found)
        return self._ledger

    # Starting

    def check(self) -> None:
        self.engine.ping()

    def start(self, request: SessionRequest) -> Observed:
        kit = request.kit
        cpus, note = self._cpus(kit)
        claims = self.admission.claim(request)
        try:
            spec = c.container_spec(
                request,
                list(claims.gpu_ids),
                bind_address=self.bind_address,
                signaling_address=self.signaling_address,
                host_ports=as_text(self.ports),
                cpu_limit=cpus,
                note=note,
            )
            detail = self._create(request, spec)
        except BaseException:
            self.admission.release(claims.names)
            raise
        self.jobs.launch(request.id, lambda: self._carry_on(request.id))
        return Observed(Record.of(request), Observation(Stage.WAITING, detail=detail, note=note))

    def _create(self, request: SessionRequest, spec: dict[str, Any]) -> str:
        """Record the session: its Kit container, or, while its image is to be pulled, a
        pending record. Returns what it waits for."""
        kit = request.kit
        if kit.pull_policy != "Always":
            try:
                _, refusal = self.engine.create_kit(spec)
            except ImageMissing:
                pass
            else:
                if refusal:
                    self._record_pending(spec)
                    self._fault(request.id, Reason.CREATE_FAILED, refusal)
                return "Starting the container"
        self._record_pending(spec)
        if kit.pull_policy == "Never":
            detail = f"the image {kit.image} is not on the Docker engine and the profile's "
            self._fault(request.id, Reason.IMAGE_PULL, detail + "pullPolicy is Never")
        return f"Pulling the image {kit.image}"

    def _record_pending(self, spec: Mapping[str, Any]) -> None:
        session_id = spec["labels"][c.SESSION]
        name = c.container_name(session_id, c.PENDING)
        self.engine.create_record(c.record_spec(name, c.pending_labels(spec)))

    def _fault(self, session_id: str, reason: Reason, detail: str) -> None:
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
        if objects is None or objects.outcome is not None or objects.fault is not None:
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
            return
        objects = self._objects(session_id)
        if objects is None:
            self.engine.remove(container_id)  # stopped while it started
        elif objects.outcome is not None:
            self._teardown(objects)  # ended while it started: it must hold nothing

    # Reading

    def _objects(self, session_id: str) -> seen.SessionObjects | None:
        sessions, _ = seen.group(self.engine.summaries(session_id))
        objects = sessions.get(session_id)
        return objects if objects is not None and objects.exists else None

    def observe(self, session_id: str) -> Observed:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        objects = self._objects(session_id)
        if objects is None:
            raise SessionNotFound(session_id)
        return self._observe([objects])[0]

    def observe_all(self) -> list[Observed]:
        sessions, _ = seen.group(self.engine.summaries())
        existing = [o for o in sessions.values() if o.exists]
        running = [o.container.container_id for o in existing if _running(o)]
        self.clients.forget(running)
        return self._observe(existing)

    def records(self) -> list[Record]:
        """Every session's record from one list of the containers, probing nothing."""
        sessions, _ = seen.group(self.engine.summaries())
        return [seen.record_of(o) for o in sessions.values() if o.exists]

    def _observe(self, entries: list[seen.SessionObjects]) -> list[Observed]:
        """Observations of `entries`: running containers not yet seen ready are probed,
        ready ones have their clients counted, exited ones inspected, in parallel within
        PROBE_BUDGET; unattended starts are carried on."""
        now = self.now()
        probes_: dict[str, Future] = {}
        counts: dict[str, Future] = {}
        exits: dict[str, Future] = {}
        for entry in entries:
            sid = entry.session_id
            if entry.outcome is not None or entry.fault is not None:
                continue
            self._resume(entry)
            if _running(entry):
                ready_at = _mark_time(entry, Mark.READY)
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
        found = []
        for entry in entries:
            sid = entry.session_id
            progress = ""
            if entry.container is None and entry.pending is not None:
                progress = self.jobs.progress(c.parse_labels(entry.pending.labels).image)
            observation = seen.observation(
                entry,
                public_host=self.public_host,
                probe_host=self.probe_host,
                probe_ok=_result(probes_.get(sid), False),
                connections=_result(counts.get(sid), None),
                progress=progress,
                exit_info=_exit_info(_result(exits.get(sid), None), engine_started),
            )
            found.append(Observed(seen.record_of(entry), observation))
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
        labels = c.parse_labels(entry.describing.labels)
        return probes.probe(self.probe_host, port, labels.probe)

    def _count_if_ready(self, probed: Future, entry: seen.SessionObjects) -> int | None:
        # Just ready: whether ovas can count its clients shows in the very first answer.
        return self._count(entry, settled=False) if probed.result() else None

    def _count(self, entry: seen.SessionObjects, settled: bool) -> int | None:
        """Clients of a ready session; none yet while a probe of ours may still hold its
        signaling port (`settled` False), if ovas can count them at all."""
        labels = c.parse_labels(entry.describing.labels)
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

    # What the lifecycle asks to keep

    def mark(self, session_id: str, mark: Mark, at: datetime | None) -> bool:
        name = c.mark_name(session_id, mark)
        if at is None:
            return self.engine.remove(name)
        if not self.engine.create_record(c.record_spec(name, c.mark_labels(session_id, mark, at))):
            return False
        if self._objects(session_id) is None:
            # Stopped while this process decided: the mark must not outlive the session.
            self.engine.remove(name)
            return False
        return True

    def claim(
        self, session_id: str, username: str, at: datetime, *, user_capacity: int = 0
    ) -> bool:
        """Create the claim, `ovas-<id>.claimed` naming `username` (its unique name makes it
        one claim), after taking the user's slot; then give back the pool's slot. A process
        that dies between the steps leaves what `collect` completes."""
        objects = self._objects(session_id)
        if objects is None or objects.outcome is not None or objects.fault is not None:
            return False
        if not seen.record_of(objects).pooled:
            return False
        taken = self.admission.claim_for(session_id, username, user_capacity)
        name = c.mark_name(session_id, Mark.CLAIMED)
        labels = c.mark_labels(session_id, Mark.CLAIMED, at, username)
        if not self.engine.create_record(c.record_spec(name, labels)):
            self.admission.release(taken)
            return False
        self.admission.release([f.name for f in objects.claims if _pool_slot(f)])
        return True

    def finish(self, session_id: str, outcome: Outcome) -> bool:
        """Record the outcome (its unique name makes this once), then free what the session
        holds; a Kit container still running is stopped first, in the background (a stop
        may take the grace period), and `collect` completes that if this process dies
        first. The stopped container stays, holding nothing, for its logs, until the
        session is removed."""
        objects = self._objects(session_id)
        if objects is None:
            return False
        recorded = False
        if objects.outcome is None:
            container = objects.container
            logs = self.engine.logs(container.container_id, LOG_LINES) if container else []
            name = c.container_name(session_id, c.OUTCOME)
            labels = c.outcome_labels(objects.describing.labels, outcome, logs)
            recorded = self.engine.create_record(c.record_spec(name, labels))
        if _running(objects):
            self.jobs.launch(f"end-{session_id}", lambda: self._teardown(objects))
        else:
            self._teardown(objects)
        return recorded

    def _teardown(self, objects: seen.SessionObjects) -> None:
        """End the workload of a session that has its outcome, and free what it holds."""
        container = objects.container
        if container is not None:
            self.clients.drop(container.container_id)
        if container is not None and container.state in ("running", "restarting", "paused"):
            self.engine.stop(container.container_id, self.stop_grace)
        # Only once the Kit app is gone may another session have its GPU.
        if objects.pending is not None:
            self.engine.remove(objects.pending.container_id)
        self._remove_all([f for f in (objects.fault, *objects.claims) if f is not None])

    def _remove_all(self, found: list[seen.Found]) -> None:
        """Remove these containers (records and claims), at once; raises what a removal
        raised, once all are done."""
        for future in [self._pool.submit(self.engine.remove, f.container_id) for f in found]:
            future.result()

    # Removing

    def stop(self, session_id: str) -> None:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        sessions, _ = seen.group(self.engine.summaries(session_id))
        objects = sessions.get(session_id)
        if objects is None or not objects.exists:
            raise SessionNotFound(session_id)
        # The Kit container goes first, then its pending record (a pull finishing meanwhile
        # finds it gone and removes what it made), then what it held, all at once.
        first = [f for f in (objects.container, objects.pending) if f is not None]
        for found in first:
            self.engine.remove(found.container_id)
        self._remove_all(objects.every[len(first) :])
        if objects.container is not None:
            self.clients.drop(objects.container.container_id)

    def collect(self, now: datetime) -> list[str]:
        sessions, malformed = seen.group(self.engine.summaries())
        held = {f.name for o in sessions.values() for f in o.claims}
        removed = []
        for summary in malformed:
            if self.engine.remove(summary["Id"]):
                removed.append((summary.get("Names") or [summary["Id"]])[0].lstrip("/"))
        for objects in sessions.values():
            if not objects.exists:
                # Claims and marks of no session: a start that died before recording its
                # session, or a session removed meanwhile. Young ones may be a start now,
                # unless a mark shows the session was started and seen (its Kit container
                # was removed by hand): what it held is free at once.
                seen_before = bool(objects.marks)
                for found in objects.every:
                    old = seen_before or now - found.created >= ORPHAN_GRACE
                    if old and self.engine.remove(found.container_id):
                        removed.append(found.name)
            elif objects.outcome is not None and (
                _running(objects) or objects.claims or objects.pending or objects.fault
            ):
                self._teardown(objects)  # a finish its process did not complete
            else:
                removed.extend(self._complete_claim(objects, now))
                self._backfill(objects, held)
        return removed

    def _backfill(self, objects: seen.SessionObjects, held: set[str]) -> None:
        """Claim the host ports of a session an earlier release started (see `admission`)."""
        taken, given = self.admission.backfill(objects, held)
        if taken or given:
            log.info(
                "session %s: claimed the host ports it publishes (%s), gave back (%s)",
                objects.session_id,
                ", ".join(taken) or "none",
                ", ".join(given) or "none",
            )

    def _complete_claim(self, objects: seen.SessionObjects, now: datetime) -> list[str]:
        """Slots a claim that died halfway left: the pool's, still held by a claimed
        session, and a user's, taken for a claim that was never made."""
        record = seen.record_of(objects)
        removed = []
        for found in objects.claims:
            if found.record != c.SLOT or found.name.startswith(_SHARED_SLOTS):
                continue
            if _pool_slot(found):
                stale = not record.pooled
            else:
                young = now - found.created < ORPHAN_GRACE
                stale = not young and found.labels.get(c.USER, "") != record.username
            if stale and self.engine.remove(found.container_id):
                removed.append(found.name)
        return removed

    def logs(self, session_id: str, tail: int = 100) -> list[str]:
        objects = self._objects(session_id)
        if objects is None:
            raise SessionNotFound(session_id)
        if objects.container is not None:
            return self.engine.logs(objects.container.container_id, tail)
        if objects.outcome is not None:
            return c.parse_outcome(objects.outcome.labels)[1][-tail:]
        return []

    def describe(self, insider: bool) -> dict[str, Any]:
        found = self._ledger_now().inventory
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


def _pool_slot(found: seen.Found) -> bool:
    return found.record == c.SLOT and found.name.startswith(c.POOL_SLOT_PREFIX)


def _running(objects: seen.SessionObjects) -> bool:
    return objects.container is not None and objects.container.state == "running"


def _mark_time(objects: seen.SessionObjects, mark: Mark) -> datetime | None:
    found = objects.marks.get(mark)
    if found is None:
        return None
    try:
        return datetime.fromisoformat(found.labels[c.AT])
    except (KeyError, ValueError):
        return None


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
