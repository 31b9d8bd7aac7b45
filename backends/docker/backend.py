"""`DockerBackend`: each session is one Kit container on a Docker engine.

The engine is the only record: sessions are read back from labelled containers (see
`containers`), so any number of ovas processes on the host, and ovas after a restart, see
the same sessions. Admission (capacity, host ports, GPUs) is decided under one lock file
per engine, around "list the containers, choose, create", so concurrent starts in several
processes never over-admit.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Self

import filelock

from backends.docker import containers as c
from backends.docker import probes, records
from backends.docker.engine import Engine
from backends.docker.gpus import GpuLedger, Inventory, inventory
from backends.docker.ports import PortAllocator, parse_port_range
from backends.docker.pulls import Pulls
from backends.docker.records import SessionRecords
from ovas.backend import Backend, Catalog
from ovas.errors import CapacityExceeded, SessionNotFound, UserCapacityExceeded
from ovas.models import Session, SessionRequest, SessionState
from ovas.services import is_session_id

PROBE_BUDGET = 1.0  # seconds a GET or a list may spend probing
ADMISSION_TIMEOUT = 30  # seconds to wait for the admission lock before answering 503


class DockerBackend(Backend):
    """Sessions as containers on one Docker engine. See the package README for why."""

    name = "docker"

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
        reap_grace: float = 60.0,
        state_dir: str | Path | None = None,
    ):
        self.catalog = catalog
        self.engine = Engine(docker_host)
        self.public_host = public_host
        self.bind_address = bind_address
        # Probes go through the published port, where clients connect, never to the
        # container's bridge address (which a remote engine or a VM would not route).
        wildcard = bind_address in ("0.0.0.0", "::", "")
        self.probe_host = probe_host or ("127.0.0.1" if wildcard else bind_address)
        self.ports = PortAllocator(
            parse_port_range(port_range),
            bind_address=bind_address or "0.0.0.0",
            check_host=self.engine.is_local,
        )
        self._gpu_setting = gpus
        self._ledger: GpuLedger | None = None
        self.reap_grace = reap_grace
        self._state_root = Path(state_dir or Path(tempfile.gettempdir()) / "ovas-docker")
        self._thread_lock = threading.Lock()
        self._ready: set[str] = set()  # ids of containers seen ready (a startup probe passes once)
        self._probes = ThreadPoolExecutor(max_workers=16, thread_name_prefix="ovas-probe")
        self.pulls = Pulls(self._state_dir, self.engine.pull, self._carry_on, self._pull_failed)

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> Self:
        """Build from `CATALOG_PATH`, `REAP_GRACE` and the `DOCKER_*` settings (PUBLIC_HOST,
        BIND_ADDRESS, PROBE_HOST, PORT_RANGE, GPUS, STATE_DIR). Contacts no engine; raises
        `ConfigurationError` for a bad port range."""
        from ovas.catalog_files import FileCatalog

        return cls(
            FileCatalog(settings.get("CATALOG_PATH") or "config/catalog"),
            public_host=str(settings.get("DOCKER_PUBLIC_HOST") or "127.0.0.1"),
            bind_address=str(settings.get("DOCKER_BIND_ADDRESS") or "127.0.0.1"),
            probe_host=settings.get("DOCKER_PROBE_HOST") or None,
            port_range=str(settings.get("DOCKER_PORT_RANGE") or "31000-31999"),
            gpus=str(settings.get("DOCKER_GPUS") or "auto"),
            reap_grace=float(settings.get("REAP_GRACE", 60)),
            state_dir=settings.get("DOCKER_STATE_DIR") or None,
        )

    # Engine plumbing

    def _state_dir(self) -> Path:
        path = self._state_root / self.engine.key
        path.mkdir(parents=True, exist_ok=True)
        return path

    # A session once ready stays ready until its container ends: a later probe miss (a Kit
    # busy loading a stage) or the start deadline passing must never fail a live stream.
    # Being ready is recorded in a file of the host's state folder, so every worker and a
    # restarted ovas know it too.

    def _ready_mark(self, container_id: str) -> Path:
        return self._state_dir() / f"ready-{container_id}"

    def _was_ready(self, container_id: str) -> bool:
        if container_id in self._ready:
            return True
        if self._ready_mark(container_id).exists():
            self._ready.add(container_id)
            return True
        return False

    def _mark_ready(self, container_id: str) -> None:
        self._ready.add(container_id)
        self._ready_mark(container_id).touch()

    def _forget_ready_marks(self, live: set[str]) -> None:
        # Only old marks: one written just after our listing belongs to a live container.
        stale_before = time.time() - 60
        for mark in self._state_dir().glob("ready-*"):
            if mark.name.removeprefix("ready-") not in live:
                with contextlib.suppress(FileNotFoundError):
                    if mark.stat().st_mtime < stale_before:
                        mark.unlink()

    @contextlib.contextmanager
    def _admission(self) -> Iterator[None]:
        # The thread lock keeps this process's threads in line; the file lock, the other
        # processes on the host (flock is released by the kernel if a process dies).
        lock = filelock.FileLock(self._state_dir() / "admission.lock", thread_local=False)
        with self._thread_lock:
            try:
                lock.acquire(timeout=ADMISSION_TIMEOUT)
            except filelock.Timeout:
                raise CapacityExceeded(
                    "ovas is busy starting other sessions; try again", retry_after=5
                ) from None
            try:
                yield
            finally:
                lock.release()

    def _ledger_now(self) -> GpuLedger:
        if self._ledger is None:
            setting = self._gpu_setting
            found = setting if isinstance(setting, Inventory) else inventory(setting)
            self._ledger = GpuLedger(found)
        return self._ledger

    # Backend

    def check(self) -> None:
        self.engine.ping()

    def start(self, request: SessionRequest) -> Session:
        kit = request.kit
        present = kit.pull_policy != "Always" and self.engine.image_present(kit.image)
        # Outside the lock: finding the GPUs may run nvidia-smi, once.
        ledger = self._ledger_now() if kit.gpus else GpuLedger(Inventory((), "no GPU asked"))
        failure = container_id = ""
        job = None
        with self._admission():
            sessions, _ = records.group(self.engine.summaries())
            self._check_capacity(request, sessions)
            protocols = [proto for _, proto, _ in c.wanted_ports(kit)]
            host_ports = self.ports.allocate(protocols, records.used_ports(sessions.values()))
            gpus = ledger.allocate(kit.gpus, records.used_gpus(sessions.values()))
            mapped = c.map_ports(kit, host_ports)
            spec = c.container_spec(request, mapped, [g.device_id for g in gpus], self.bind_address)
            labels = c.base_labels(spec["labels"])
            if not present and kit.pull_policy == "Never":
                failure = (
                    f"The image {kit.image} is not on the Docker engine and the profile's "
                    "pullPolicy is Never"
                )
            else:
                # Hold the session's lock before its record exists, so no other process
                # takes the fresh record for an abandoned one.
                job = self.pulls.claim(request.id)
                if present:
                    container_id, failure = self.engine.create_kit(spec)
                else:
                    self.engine.create_record(c.record_spec(labels, c.PENDING, spec=spec))
            if failure:
                self.engine.create_record(c.record_spec(labels, c.FAILED, message=failure))
        if job is not None:
            if failure:
                job.release()
            else:
                # Starting a container takes a few hundred milliseconds, pulling minutes:
                # both go on in the background, so the POST answers at once.
                def start_it(_: str) -> None:
                    self._start_container(container_id, labels)

                then = start_it if container_id else None  # else a pull, then `_carry_on`
                self.pulls.begin(request.id, "" if present else kit.image, job, then)
        session = Session.of(
            request,
            message="Starting the container" if present else f"Pulling the image {kit.image}",
        )
        if failure:
            session.state, session.message = SessionState.FAILED, failure
        return session

    def _check_capacity(self, request: SessionRequest, sessions: dict[str, SessionRecords]) -> None:
        if request.capacity and len(sessions) >= request.capacity:
            raise CapacityExceeded(
                f"All {request.capacity} session slots are in use; try again later", retry_after=30
            )
        mine = sum(1 for s in sessions.values() if s.labels.username == request.username)
        if request.user_capacity and mine >= request.user_capacity:
            raise UserCapacityExceeded(
                f"User '{request.username}' already has {mine} sessions, the most allowed",
                retry_after=30,
            )

    def _start_container(self, container_id: str, labels: Mapping[str, str]) -> str:
        """Start the Kit container; on failure, replace it by a failed record and return
        why (else '')."""
        refusal = self.engine.start(container_id)
        if not refusal:
            return ""
        reason = f"The container could not be started: {refusal}"
        if "device driver" in refusal or "nvidia" in refusal.lower():
            reason += " (GPUs need the NVIDIA Container Toolkit on the Docker host)"
        self._fail(labels, reason, [container_id])
        return reason

    def _fail(self, labels: Mapping[str, str], reason: str, replace: list[str]) -> None:
        """Record the session as failed, then remove `replace` (the failed record is created
        first so the session's slot and resources are never briefly free). If `replace` was
        gone already, the session was stopped meanwhile: the record goes too."""
        self.engine.create_record(c.record_spec(labels, c.FAILED, message=reason))
        removed = [self.engine.remove(name) for name in replace]
        if replace and not any(removed):
            self.engine.remove(c.container_name(labels[c.SESSION], c.FAILED))

    def get(self, session_id: str) -> Session:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        sessions, _ = records.group(self.engine.summaries(session_id))
        entry = sessions.get(session_id)
        if entry is None:
            raise SessionNotFound(session_id)
        self._resume_if_unattended(entry)
        return self._views([entry], detailed=True)[0]

    def list(self) -> list[Session]:
        sessions, _ = records.group(self.engine.summaries())
        live = {r.container_id for s in sessions.values() for r in s.records}
        self._ready &= live
        self._forget_ready_marks(live)
        for entry in sessions.values():
            self._resume_if_unattended(entry)
        return self._views(list(sessions.values()))

    def stop(self, session_id: str) -> None:
        if not is_session_id(session_id):
            raise SessionNotFound(session_id)
        summaries = self.engine.summaries(session_id)
        sessions, _ = records.group(summaries)
        if session_id not in sessions:
            raise SessionNotFound(session_id)
        # A pull finishing meanwhile finds its pending record gone and removes what it made;
        # its thread ends when the pull does (the image stays for next time).
        for summary in summaries:
            self.engine.remove(summary["Id"])
            self._ready.discard(summary["Id"])
            self._ready_mark(summary["Id"]).unlink(missing_ok=True)

    def reap(self, now: datetime) -> list[str]:
        sessions, malformed = records.group(self.engine.summaries())
        removed = []
        for summary in malformed:
            if self.engine.remove(summary["Id"]):
                removed.append((summary.get("Names") or [summary["Id"]])[0].lstrip("/"))
        views = self._views(list(sessions.values()), now=now)
        for entry, view in zip(sessions.values(), views, strict=True):
            self._resume_if_unattended(entry)
            if view.state is not SessionState.FAILED:
                continue
            since = records.failed_since(entry, self._finished_at(entry)) or entry.labels.deadline
            if (now - since).total_seconds() >= self.reap_grace:
                for record in entry.records:
                    self.engine.remove(record.container_id)
                removed.append(entry.session_id)
        for session_id in self.pulls.stale_ids():
            if session_id not in sessions:
                self.pulls.forget(session_id)
        return removed

    def close(self) -> None:
        self.pulls.join(timeout=5)
        self._probes.shutdown(wait=False, cancel_futures=True)
        self.engine.close()

    # Reading sessions

    def _views(
        self, entries: list[SessionRecords], *, detailed: bool = False, now: datetime | None = None
    ) -> list[Session]:
        """Sessions from their records, probing running containers (in parallel, within
        PROBE_BUDGET) that were not yet seen ready. `detailed` adds an exit's logs."""
        now = now or datetime.now(UTC)
        futures = {
            e.container.container_id: self._probes.submit(self._probe_job(e))
            for e in entries
            if records.needs_probe(e) and not self._was_ready(e.container.container_id)
        }
        if futures:
            wait_futures(futures.values(), timeout=PROBE_BUDGET)
        for cid, future in futures.items():
            if future.done() and future.exception() is None and future.result():
                self._mark_ready(cid)
        views = []
        for entry in entries:
            container = entry.container
            ready = container is not None and self._was_ready(container.container_id)
            detail = self._exit_detail(entry) if detailed else ""
            pull = self.pulls.message(entry.session_id) if entry.container is None else ""
            views.append(
                records.session_state(
                    entry,
                    now,
                    ready=ready,
                    public_host=self.public_host,
                    exit_detail=detail,
                    pull_message=pull,
                )
            )
        return views

    def _probe_job(self, entry: SessionRecords) -> Callable[[], bool]:
        labels = entry.labels
        target = labels.probe.port if labels.probe else None
        by_port = {(p.container_port, p.protocol): p.host_port for p in labels.ports}
        host_port = by_port.get((target, "tcp")) if target else None
        if host_port is None:
            host_port = next(p.host_port for p in labels.ports if p.name == "signaling")
        spec = labels.probe if target else None
        return lambda: probes.probe(self.probe_host, host_port, spec)

    def _exit_detail(self, entry: SessionRecords) -> str:
        """For an exited Kit container: out of memory, the engine's error, last log lines."""
        container = entry.container
        if entry.failed is not None or container is None or not container.ended:
            return ""
        state, logs = self.engine.ended_state(container.container_id, logs=5)
        parts = []
        if state.get("OOMKilled"):
            parts.append("out of memory")
        if state.get("Error"):
            parts.append(state["Error"])
        lines = [line.strip() for line in logs.splitlines() if line.strip()]
        if lines:
            parts.append("last log lines: " + " | ".join(lines))
        return "; ".join(parts)

    def _finished_at(self, entry: SessionRecords) -> datetime | None:
        container = entry.container
        if container is None or not container.ended:
            return None
        text = self.engine.ended_state(container.container_id)[0].get("FinishedAt", "")
        with contextlib.suppress(ValueError):
            # Docker gives nanoseconds; Python's parser takes microseconds.
            head, _, frac = text.rstrip("Z").partition(".")
            return datetime.fromisoformat(f"{head}.{(frac + '000000')[:6]}+00:00")
        return None

    # Starts in the background

    def _resume_if_unattended(self, entry: SessionRecords) -> None:
        """Carry on a start that no live process works on (its process died, or lost the
        engine): a pending record's pull, or a Kit container created but never started."""
        container = entry.container
        waiting = entry.pending is not None or (
            container is not None and container.state == "created"
        )
        if entry.failed is not None or not waiting or self.pulls.running_here(entry.session_id):
            return
        lock = self.pulls.claim(entry.session_id)
        if lock is None:
            return  # another process works on it
        pull = entry.labels.image if entry.pending is not None and container is None else ""
        self.pulls.begin(entry.session_id, pull, lock)

    def _carry_on(self, session_id: str) -> None:
        """The image is there: create the Kit container from the pending record (unless the
        session was stopped meanwhile or its deadline passed), and start it."""
        sessions, _ = records.group(self.engine.summaries(session_id))
        entry = sessions.get(session_id)
        if entry is None or entry.failed is not None:
            return
        labels = c.base_labels(entry.records[0].raw_labels)
        container_id = entry.container.container_id if entry.container else ""
        pending = entry.pending
        if pending is not None:
            if datetime.now(UTC) >= entry.labels.deadline:
                reason = records.timeout_message(entry.labels, "the image pull took too long")
                self._fail(labels, reason, [r.container_id for r in entry.records])
                return
            if not container_id:
                try:
                    spec = c.spec_from_labels(pending.raw_labels)
                except ValueError as exc:
                    reason = f"The session's pending record cannot be read: {exc}"
                    self._fail(labels, reason, [pending.container_id])
                    return
                container_id, failure = self.engine.create_kit(spec)
                if failure:
                    self._fail(labels, failure, [pending.container_id])
                    return
            if not container_id:
                return
            if not self.engine.remove(pending.container_id):
                self.engine.remove(container_id)  # the session was stopped meanwhile
                return
        elif entry.container is None or entry.container.state != "created":
            return
        self._start_container(container_id, labels)

    def _pull_failed(self, session_id: str, reason: str) -> None:
        sessions, _ = records.group(self.engine.summaries(session_id))
        entry = sessions.get(session_id)
        if entry is None or entry.pending is None or entry.failed is not None:
            return
        self._fail(c.base_labels(entry.pending.raw_labels), reason, [entry.pending.container_id])
