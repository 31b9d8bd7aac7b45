"""Admission across processes and hosts, in the engine: capacity slots and GPU claims are
containers whose names are unique, so creating one is an atomic claim (a second create of
that name is refused with 409), as the Kubernetes backend does with its slot ConfigMaps.

A session holds `ovas-slot-<k>` (k < capacity), `ovas-user-<hash>-<k>` (k < the per-user
capacity), one `ovas-port-<protocol>-<k>` per host port it publishes (k < the ports of
OVAS_DOCKER_PORT_RANGE: Docker picks the ports, these count them, so that a start finds no
room rather than a container that can never start) and one `ovas-gpu-<device id>` per GPU.
A warm pool's session holds `ovas-pool-<hash>-<k>` (k < its `pool_size`) instead of a
user's slot until it is claimed; its claim trades that for the user's. Any number of worker
processes, or of ovas hosts sharing one engine, then never over-admit, and no lock is held
across an engine round trip: a start lists the claims once (to skip those taken), then
creates. Claims are released when the session ends or is stopped; the reaper removes those
of sessions that never came to be.

Sessions an earlier release started hold host ports but no port claims: a start counts
those ports as the last free places of the range, and `backfill` (from `collect`) claims
them there, so that no start is admitted to fail with "port is already allocated".
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backends.docker import containers as c
from backends.docker import observe as seen
from backends.docker.engine import Engine
from backends.docker.gpus import GpuLedger
from ovas.errors import CapacityExceeded, Unsatisfiable, UserCapacityExceeded
from ovas.models import SessionRequest

RETRY_AFTER = 30
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Claims:
    """What a start took: the names of its claim records, and the GPUs' device ids."""

    names: tuple[str, ...] = ()
    gpu_ids: tuple[str, ...] = ()


class Admission:
    def __init__(self, engine: Engine, ledger: Callable[[], GpuLedger], ports: range | None = None):
        self.engine = engine
        self.ledger = ledger  # found on first use: finding GPUs may run nvidia-smi
        self.ports = ports  # OVAS_DOCKER_PORT_RANGE; None: host ports are not counted

    def claim(self, request: SessionRequest) -> Claims:
        """Take what `request` needs: a slot of the shared capacity and one of its user's,
        when those are set, a place per host port it publishes, and its GPUs. Raises
        `UserCapacityExceeded` / `CapacityExceeded`, leaving nothing taken;
        `Unsatisfiable` when the range holds fewer ports than one session publishes;
        `BackendUnavailable`."""
        gpus = request.kit.gpus
        counted = (request.capacity, request.user_capacity, gpus, request.pool_size, self.ports)
        if not any(counted):
            return Claims()
        held, unclaimed = self._listing()
        taken: list[str] = []
        try:
            if request.pool_size:
                key = request.pool_key
                names = [c.pool_slot_name(k, request.pool, key) for k in range(request.pool_size)]
                if not self._take_one(request.id, names, held, taken):
                    raise CapacityExceeded(
                        f"Warm pool '{request.pool}' has its {request.pool_size} sessions",
                        retry_after=RETRY_AFTER,
                    )
            elif request.user_capacity:
                self._take_user_slot(
                    request.id, request.username, request.user_capacity, held, taken
                )
            if request.capacity:
                names = [c.slot_name(k) for k in range(request.capacity)]
                if not self._take_one(request.id, names, held, taken, request.username):
                    raise CapacityExceeded(
                        f"All {request.capacity} session slots are in use; try again later",
                        retry_after=RETRY_AFTER,
                    )
            self._take_ports(request, held, unclaimed, taken)
            gpu_ids = self._take_gpus(request, gpus, held, taken)
        except BaseException:
            self.release(taken)
            raise
        return Claims(tuple(taken), tuple(gpu_ids))

    def claim_for(self, session_id: str, username: str, user_capacity: int) -> list[str]:
        """Take a slot of `username`'s for a warm pool's session being claimed (none
        without a per-user capacity); the names taken. Raises `UserCapacityExceeded`."""
        taken: list[str] = []
        if user_capacity:
            self._take_user_slot(session_id, username, user_capacity, self._held(), taken)
        return taken

    def _held(self) -> set[str]:
        return {_name(s) for s in self.engine.claims()}

    def _listing(self) -> tuple[set[str], dict[str, int]]:
        """The claims held, and the host ports of each protocol that sessions publish
        unclaimed (see `observe.unclaimed_ports`), from one list of the engine."""
        if not self.ports:
            return self._held(), {}
        summaries = self.engine.summaries()
        held = {_name(s) for s in summaries if c.CLAIM in (s.get("Labels") or {})}
        unclaimed: Counter[str] = Counter()
        for objects in seen.group(summaries)[0].values():
            unclaimed.update(seen.unclaimed_ports(objects))
        return held, unclaimed

    def _take_user_slot(
        self, session_id: str, username: str, capacity: int, held: set[str], taken: list[str]
    ) -> None:
        names = [c.slot_name(k, username) for k in range(capacity)]
        if not self._take_one(session_id, names, held, taken, username):
            mine = sum(1 for n in names if n in held)
            raise UserCapacityExceeded(
                f"User '{username}' already has {mine} sessions, the most allowed; stop one "
                "and try again",
                retry_after=RETRY_AFTER,
            )

    def _take_one(
        self,
        session_id: str,
        names: list[str],
        held: set[str],
        taken: list[str],
        username: str = "",
    ) -> bool:
        # Free slots in a random order, so a burst of starts does not contend for the first.
        free = [n for n in names if n not in held]
        for name in random.sample(free, len(free)):
            if self._create(session_id, name, c.SLOT, username):
                taken.append(name)
                return True
        return False

    def _take_ports(
        self,
        request: SessionRequest,
        held: set[str],
        unclaimed: Mapping[str, int],
        taken: list[str],
    ) -> None:
        if not self.ports:
            return
        span = f"{self.ports.start}-{self.ports.stop - 1}"
        for protocol, count in sorted(c.ports_needed(request.kit).items()):
            if count > len(self.ports):
                raise Unsatisfiable(
                    f"The profile publishes {count} {protocol.upper()} ports; "
                    f"OVAS_DOCKER_PORT_RANGE ({span}) holds {len(self.ports)}"
                )
            names = [c.port_slot_name(k, protocol) for k in range(len(self.ports))]
            for _ in range(count):
                # The last free places are left for ports published unclaimed: `backfill`
                # takes those, so a start counting on them does not race it for a place.
                free = [n for n in names if n not in held]
                free = free[: max(0, len(free) - unclaimed.get(protocol, 0))]
                if not self._take_one(request.id, free, held, taken, request.username):
                    raise CapacityExceeded(
                        f"All {len(self.ports)} {protocol.upper()} host ports of "
                        f"OVAS_DOCKER_PORT_RANGE ({span}) are published by sessions; "
                        "try again later",
                        retry_after=RETRY_AFTER,
                    )
                held.add(taken[-1])

    def _take_gpus(
        self, request: SessionRequest, count: int, held: set[str], taken: list[str]
    ) -> list[str]:
        if count <= 0:
            return []
        ledger = self.ledger()
        in_use = {g.device_id for g in ledger.gpus if c.gpu_name(g.device_id) in held}
        got = []
        for gpu in ledger.candidates(count, in_use):
            if self._create(request.id, c.gpu_name(gpu.device_id), c.GPU, request.username):
                taken.append(c.gpu_name(gpu.device_id))
                got.append(gpu.device_id)
                if len(got) == count:
                    return got
            else:
                in_use.add(gpu.device_id)  # another start took it meanwhile
        raise ledger.refusal(count, ledger.free(in_use | set(got)))

    def backfill(self, objects: seen.SessionObjects, held: set[str]) -> tuple[list, list]:
        """Claim the host ports a session publishes unclaimed (an earlier release's) at the
        last free places of the range, where a start leaves them; give back places it holds
        beyond what it publishes (two processes backfilled it at once), keeping the last, as
        every process does. `held`: the claims held, updated. Returns (names taken, names
        given back). Raises `BackendUnavailable`."""
        if not self.ports or not objects.exists or objects.outcome is not None:
            return [], []
        username = c.parse_labels(objects.describing.labels).username
        taken: list[str] = []
        for protocol, count in sorted(seen.unclaimed_ports(objects).items()):
            names = [c.port_slot_name(k, protocol) for k in reversed(range(len(self.ports)))]
            for name in (n for n in names if n not in held):
                if not count:
                    break
                if self._create(objects.session_id, name, c.SLOT, username):
                    taken.append(name)
                    held.add(name)
                    count -= 1
            if count:
                log.warning(
                    "session %s publishes %d %s ports for which OVAS_DOCKER_PORT_RANGE has "
                    "no free place: its sessions publish more ports than the range holds",
                    objects.session_id,
                    count,
                    protocol.upper(),
                )
        return taken, self._give_back_extra(objects)

    def _give_back_extra(self, objects: seen.SessionObjects) -> list[str]:
        publishes = c.count_protocols(c.parse_labels(objects.describing.labels).ports)
        places = sorted(
            ((slot, f.name) for f in objects.claims if (slot := c.parse_port_slot(f.name))),
            reverse=True,
        )
        given = []
        for (protocol, _), name in places:
            publishes[protocol] = publishes.get(protocol, 0) - 1
            if publishes[protocol] < 0 and self.engine.remove(name):
                given.append(name)
        return given

    def _create(self, session_id: str, name: str, kind: str, username: str) -> bool:
        labels = c.claim_labels(session_id, kind, username)
        return self.engine.create_record(c.record_spec(name, labels))

    def release(self, names: list[str] | tuple[str, ...]) -> None:
        """Remove the claims named (gone already is fine)."""
        for name in names:
            self.engine.remove(name)


def _name(summary: Mapping[str, Any]) -> str:
    return (summary.get("Names") or [""])[0].lstrip("/")
