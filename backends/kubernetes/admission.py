"""Admission across replicas: capacity held as uniquely named slot objects.

A session holds one ConfigMap `ovas-slot-<k>` (k < capacity) and, with a per-user limit, one
`ovas-user-<hash>-<k>`. Taking a slot is a create; the API server refuses a second create of
a name that exists (409), so two replicas can never take the same slot, and no count is ever
followed by a create. A slot is labelled with its session, deleted when the session is
stopped, and owned by the session's pod (or HelmRelease) so the cluster's garbage collector
removes it with the session; the reaper removes slots of sessions that never got that far.
"""

from __future__ import annotations

import logging
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
            if request.user_capacity:
                name = self._take(request, request.user_capacity, request.username)
                if name is None:
                    raise UserCapacityExceeded(
                        f"User '{request.username}' already has {request.user_capacity} "
                        "sessions; stop one and try again",
                        retry_after=RETRY_AFTER,
                    )
                taken.append(name)
            if request.capacity:
                name = self._take(request, request.capacity, None)
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

    def _take(self, request: SessionRequest, capacity: int, username: str | None) -> str | None:
        scope = "global" if username is None else "user"
        selector = f"{o.SLOT}={scope}"
        if username is not None:
            selector += f",{o.USER}={o.label_value(username)}"
        # Listing first spares a create per held slot; the create alone decides.
        held = {s["metadata"]["name"] for s in self.kube.list(CONFIG_MAP, selector)}
        for index in range(capacity):
            name = o.slot_name(index, username)
            if name in held:
                continue
            try:
                self.kube.create(
                    CONFIG_MAP, o.build_slot(name, request, self.kube.namespace, scope)
                )
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

    def release(self, session_id: str) -> None:
        """Free every slot the session holds (one call)."""
        self.kube.delete_all(CONFIG_MAP, f"{o.SESSION}={session_id},{o.SLOT}")
