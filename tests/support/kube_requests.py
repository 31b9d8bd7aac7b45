"""Requests and waits for the Kubernetes backend's tests."""

from __future__ import annotations

import copy
from dataclasses import replace

from ovas import testing
from ovas.kitspec import parse_kit
from ovas.models import Session, SessionRequest, SessionState
from ovas.testing import make_request


def request_for(backend, kit: dict | None = None, **kw) -> SessionRequest:
    """A request for the stand-in app (the catalog's first), with `kit` merged into its
    `streamingKit` values (one level deep)."""
    request = make_request(backend.catalog, **kw)
    if not kit:
        return request
    values = copy.deepcopy(request.values)
    for key, value in kit.items():
        current = values["streamingKit"].get(key)
        if isinstance(current, dict) and isinstance(value, dict):
            values["streamingKit"][key] = {**current, **value}
        else:
            values["streamingKit"][key] = value
    return replace(request, values=values, kit=parse_kit(values))


def wait_for(backend, session_id: str, states: set[SessionState], timeout: float = 10) -> Session:
    return testing.wait_for(backend, session_id, states, timeout, interval=0.05)
