"""Errors the core and backends raise. Each carries the HTTP status and a message safe to show.

Backends translate their SDK's exceptions into these; nothing else may leave a backend.
"""

from __future__ import annotations


class OvasError(Exception):
    """Base error: `message` is shown to the user; `detail` (optional) goes to the log only;
    `where` (optional: an engine's address) goes to the log and to authenticated admins,
    never to anonymous callers."""

    http_status = 500
    default_message = "Internal server error"

    def __init__(
        self, message: str | None = None, *, detail: str | None = None, where: str | None = None
    ):
        self.message = message or self.default_message
        self.detail = detail
        self.where = where
        super().__init__(self.message)

    def message_for(self, insider: bool) -> str:
        """The message, naming `where` for an insider (an authenticated admin)."""
        return f"{self.message} (at {self.where})" if insider and self.where else self.message

    @property
    def headers(self) -> dict[str, str]:
        return {}


class NotFound(OvasError):
    http_status = 404
    default_message = "Not found"


class ApplicationNotFound(NotFound):
    def __init__(self, app_id: str):
        super().__init__(f"Application '{app_id}' not found")


class VersionNotFound(NotFound):
    def __init__(self, app_id: str, version: str):
        super().__init__(f"Version '{version}' of application '{app_id}' not found")


class ProfileNotFound(NotFound):
    def __init__(self, profile_id: str, message: str | None = None):
        super().__init__(message or f"Profile '{profile_id}' not found")


class SessionNotFound(NotFound):
    def __init__(self, session_id: str):
        super().__init__(f"Session '{session_id}' not found")


class Conflict(OvasError):
    http_status = 409
    default_message = "Already exists"


class IdempotencyConflict(Conflict):
    """An `Idempotency-Key` whose start cannot be answered now: still being made (retry
    after `retry_after` seconds), or its session gone."""

    def __init__(self, message: str, *, retry_after: int | None = None, **kw):
        super().__init__(message, **kw)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.retry_after else {}


class InvalidInput(OvasError):
    """Input the schemas accepted but the rules reject (answered as a 422 on `field`, of
    the request's `location`: "body", "query" or "header")."""

    http_status = 422
    default_message = "Invalid input"

    def __init__(
        self,
        message: str | None = None,
        *,
        field: str | None = None,
        location: str = "body",
        **kw,
    ):
        super().__init__(message, **kw)
        self.field = field
        self.location = location


class Unsatisfiable(InvalidInput):
    """A request this ovas can never grant as it is set up (a profile asking for more GPUs
    than the host has): answered as a 422 on `field`, since waiting will not change it,
    unlike `CapacityExceeded`. The message names what is missing."""

    default_message = "This request cannot be granted on this host"

    def __init__(self, message: str | None = None, *, field: str | None = "profile", **kw):
        super().__init__(message, field=field, **kw)


class EditingDisabled(OvasError):
    http_status = 405
    default_message = (
        "Editing is disabled; set OVAS_EDITING_ENABLED=true to enable the editing routes"
    )


class SessionFailed(OvasError):
    """Raised for a session whose start failed; the body still describes the session."""

    http_status = 410
    default_message = "Session failed"


class CapacityExceeded(OvasError):
    """No room for another session; the client may retry after `retry_after` seconds.
    `resource` names what is short: "slot" (the shared capacity, host ports, a quota) or
    "gpu" (the GPUs): a queued start waiting for GPUs does not hold up one that needs none
    (`ovas.queueing`)."""

    http_status = 503
    default_message = "No capacity for another session; try again later"

    def __init__(
        self, message: str | None = None, *, retry_after: int = 30, resource: str = "slot", **kw
    ):
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.resource = resource

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class UserCapacityExceeded(CapacityExceeded):
    http_status = 429
    default_message = "You have reached your limit of sessions; stop one and try again"


class BackendUnavailable(OvasError):
    """The backend's engine (Docker daemon, Kubernetes API server) cannot be reached."""

    http_status = 503
    default_message = "The session backend cannot be reached"

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": "5"}


class CatalogError(OvasError):
    """A catalog document is not valid; `problems` lists `where: what` lines."""

    http_status = 500
    default_message = "The catalog is not valid"

    def __init__(self, problems: list[str], **kw):
        self.problems = list(problems)
        super().__init__("The catalog is not valid: " + "; ".join(self.problems), **kw)


class ConfigurationError(OvasError):
    """ovas is set up wrongly (unknown backend, missing optional dependency...)."""

    http_status = 500
    default_message = "ovas is not configured correctly"


class Unauthorized(OvasError):
    """Missing or invalid credentials."""

    http_status = 401
    default_message = "Authentication is required"

    def __init__(self, message: str | None = None, *, scheme: str = "Bearer", **kw):
        super().__init__(message, **kw)
        self.scheme = scheme

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'{self.scheme} realm="ovas"'}


class Forbidden(OvasError):
    """A known caller lacking the role an action needs."""

    http_status = 403
    default_message = "You are not allowed to do this"
