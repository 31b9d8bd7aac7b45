"""Requests and waits for the Kubernetes backend's tests."""

from __future__ import annotations

import copy
import time
from dataclasses import replace

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
    deadline = time.monotonic() + timeout
    while True:
        session = backend.get(session_id)
        if session.state in states or time.monotonic() > deadline:
            return session
        time.sleep(0.05)
