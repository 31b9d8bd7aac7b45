"""Admission across replicas: capacity held as uniquely named slot objects.

A session holds one ConfigMap `ovas-slot-<k>` (k < capacity) and, with a per-user limit, one
`ovas-user-<hash>-<k>`; a warm pool's unclaimed session holds `ovas-pool-<hash>-<k>` (k < its
`pool_size`, per pool and version) instead of a user's, and its claim trades the one for the
other. Taking a slot is a create; the API server refuses a second create of
a name that exists (409), so two replicas can never take the same slot, and no count is ever
followed by a create. A slot is labelled with its session, deleted when the session is
stopped, and owned by the session's pod (or HelmRelease) so the cluster's garbage collector
removes it with the session; the reaper removes slots of sessions that never got that far.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

from backends.kubernetes import objects as o
from backends.kubernetes.client import CONFIG_MAP, Kube, Taken
from ovas.errors import CapacityExceeded, OvasError, UserCapacityExceeded
from ovas.models import SessionRequest

RETRY_AFTER = 30
log = logging.getLogger(__name__)


class Admission:
    def __init__(self, kube: Kube):
        self.kube = kube

    def acquire(self, request: SessionRequest) -> list[str]:
        """Take the slots the request needs; return their names. Raises
        `UserCapacityExceeded` or `CapacityExceeded`, leaving nothing taken."""
        taken: list[str] = []
        try:
            if request.pool_size:
                places = request.pool_key
                key = o.pool_key(request.pool, places)
                names = [
                    o.pool_slot_name(k, request.pool, places) for k in range(request.pool_size)
                ]
                name = self._take(request.id, "", request.created_time, names, "pool", key)
                if name is None:
                    raise CapacityExceeded(
                        f"Warm pool '{request.pool}' has its {request.pool_size} sessions",
                        retry_after=RETRY_AFTER,
                    )
                taken.append(name)
            elif request.user_capacity:
                taken.append(
                    self.take_user(
                        request.id, request.username, request.created_time, request.user_capacity
                    )
                )
            if request.capacity:
                names = [o.slot_name(k) for k in range(request.capacity)]
                name = self._take(request.id, request.username, request.created_time, names)
                if name is None:
                    raise CapacityExceeded(
                        f"All {request.capacity} session slots are in use; try again later",
                        retry_after=RETRY_AFTER,
                    )
                taken.append(name)
        except BaseException:
            if taken:
                self.release(request.id)
            raise
        return taken

    def take_user(self, session_id: str, username: str, created: datetime, capacity: int) -> str:
        """Take one of `username`'s slots for the session; its name. Raises
        `UserCapacityExceeded`."""
        names = [o.slot_name(k, username) for k in range(capacity)]
        name = self._take(session_id, username, created, names, "user")
        if name is None:
            raise UserCapacityExceeded(
                f"User '{username}' already has {capacity} sessions; stop one and try again",
                retry_after=RETRY_AFTER,
            )
        return name

    def _take(
        self,
        session_id: str,
        username: str,
        created: datetime,
        names: list[str],
        scope: str = "global",
        pool_key: str = "",
    ) -> str | None:
        selector = f"{o.SLOT}={scope}"
        labels = {}
        if scope == "user":
            selector += f",{o.USER}={o.label_value(username)}"
        if pool_key:
            selector += f",{o.POOL_KEY}={pool_key}"
            labels[o.POOL_KEY] = pool_key
        # Listing first spares a create per held slot; the create alone decides.
        held = {s["metadata"]["name"] for s in self.kube.list(CONFIG_MAP, selector)}
        namespace = self.kube.namespace
        for name in names:
            if name in held:
                continue
            body = o.build_slot(name, session_id, username, created, namespace, scope, labels)
            try:
                self.kube.create(CONFIG_MAP, body)
                return name
            except Taken:
                continue
        return None

    def bind(self, names: list[str], owner: dict[str, Any]) -> None:
        """Make the session's pod or HelmRelease own its slots (best effort: the reaper and
        `release` remove them anyway)."""
        reference = o.owner_reference(owner)
        for name in names:
            try:
                self.kube.patch(CONFIG_MAP, name, {"metadata": {"ownerReferences": [reference]}})
            except OvasError as exc:
                # The session runs already: failing its start now would only invite a retry.
                log.warning("slot %s is not bound to its session: %s", name, exc.message)

    def release(self, session_id: str, scope: str = "") -> None:
        """Free every slot the session holds (one call), or those of one `scope`."""
        self.kube.delete_all(
            CONFIG_MAP, f"{o.SESSION}={session_id},{o.SLOT}" + (f"={scope}" if scope else "")
        )
