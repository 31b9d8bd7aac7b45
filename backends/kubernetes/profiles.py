"""What the Kubernetes backend reads of a profile beyond `streamingKit`'s container: its own
pending limit, and OVAS's secure-streaming settings. Pure functions; no I/O.

- `ovas/max-pending` (an ApplicationProfile annotation, seconds; 0 = off): the longest a
  session of the profile may take to become ready, when shorter than `OVAS_START_TIMEOUT`,
  as OVAS's `nvidia.omniverse.ovas.pod.maxPendingTime` bounds a pod's pending time. It is
  recorded as the session's start deadline, so the core fails the session then, with the
  cluster's last words (`start_timeout`).
- `streamingKit.envoy`: OVAS's TLS proxy beside Kit, which the session chart adds. In
  `helmrelease` mode the chart runs it; in `pod` mode ovas does not, and refuses such a
  profile (at start and in `catalog check`) rather than run it without TLS.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta
from typing import Any

from ovas.lifecycle import MAX_PENDING, parse_seconds
from ovas.models import Profile, SessionRequest

ENVOY = "streamingKit.envoy"
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_DNS_NAME = re.compile(rf"^(?=.{{1,200}}$)({_LABEL}\.)*{_LABEL}$")  # room for a session id


def max_pending(profile: Profile) -> int:
    """The profile's `ovas/max-pending` in seconds (0: none). Raises ValueError naming the
    annotation when it is not a whole number of seconds in range (`ovas.bounds.SECONDS`)."""
    if MAX_PENDING not in profile.annotations:
        return 0
    return parse_seconds(profile.annotations[MAX_PENDING], MAX_PENDING)


def wants_envoy(values: dict[str, Any]) -> bool:
    """Whether chart values ask for OVAS's TLS proxy (`streamingKit.envoy`, not disabled)."""
    kit = values.get("streamingKit")
    envoy = kit.get("envoy") if isinstance(kit, dict) else None
    if envoy is None or envoy is False:
        return False
    return not (isinstance(envoy, dict) and envoy.get("enabled") is False)


def refusal(profile: Profile, mode: str, values: dict[str, Any] | None = None) -> str | None:
    """Why the backend in `mode` cannot run the profile as written (with `values`, its chart
    values as rendered for a session); None if it can."""
    try:
        max_pending(profile)
    except ValueError as exc:
        return str(exc)
    if mode == "pod" and wants_envoy(profile.chart_values if values is None else values):
        return (
            f"{ENVOY}: OVAS's TLS proxy runs only in helmrelease mode, where the session chart "
            "adds it; set OVAS_KUBERNETES_SESSION_MODE=helmrelease, or remove "
            f"{ENVOY} to stream without TLS"
        )
    return None


def with_pending_limit(request: SessionRequest) -> SessionRequest:
    """`request` with its start deadline brought forward to its profile's `ovas/max-pending`,
    where that is sooner. Raises ValueError (see `max_pending`)."""
    seconds = max_pending(request.profile)
    if not seconds:
        return request
    deadline = min(request.deadline, request.created_time + timedelta(seconds=seconds))
    return replace(request, deadline=deadline)


def check_base_domain(domain: str) -> str:
    """`domain` as a session's hostname ends (`<session-id>.<domain>`), lowercased. Raises
    ValueError when it is not a DNS name."""
    cleaned = domain.strip().strip(".").lower()
    if not _DNS_NAME.match(cleaned):
        raise ValueError(f"OVAS_KUBERNETES_BASE_DOMAIN: {domain!r} is not a DNS name")
    return cleaned


def hostname(session_id: str, base_domain: str) -> str:
    """The session's own hostname: its route key, as OVAS's hostname endpoint resolution
    (`enable_wss` with a `base_domain`) names it."""
    return f"{session_id}.{base_domain}"
