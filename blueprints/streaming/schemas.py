"""Shapes of the Streaming Session service, as OVAS clients read them."""

from __future__ import annotations

from marshmallow import EXCLUDE, RAISE, Schema, fields, pre_dump, pre_load, validate

from ovas.models import Reason, Route, Session, SessionState
from ovas.names import APP_ID_PATTERN, PROFILE_ID_PATTERN, VERSION_PATTERN
from ovas.services import LOG_TAIL, MAX_LOG_TAIL


class Prepared(fields.Nested):
    """A nested value that `session_fields` has already built in its wire form (dicts of
    str, int and bool): the OpenAPI document shows `nested` as it would for `fields.Nested`,
    and a dump writes the value as it is instead of walking it field by field again. Output
    only: nothing is loaded through it."""

    def _serialize(self, value, attr, obj, **kwargs):
        return value


class RouteSchema(Schema):
    description = fields.String(required=True, metadata={"example": "signaling"})
    protocol = fields.String(required=True, metadata={"example": "TCP"})
    source_port = fields.Integer(
        required=True, metadata={"description": "The port the client connects to"}
    )
    destination_port = fields.Integer(
        required=True, metadata={"description": "The port inside the Kit container"}
    )


class RouteSetSchema(Schema):
    routes = fields.List(fields.Nested(RouteSchema), required=True)


class StreamStatusSchema(Schema):
    condition = fields.String(
        required=True, validate=validate.OneOf([s.value for s in SessionState])
    )
    message = fields.String(required=True)
    status = fields.Boolean(required=True, metadata={"description": "True only when ready"})


class StreamResponseSchema(Schema):
    id = fields.String(required=True)
    routes = fields.Dict(
        keys=fields.String(),
        values=Prepared(RouteSetSchema),
        required=True,
        metadata={
            "description": "One key, the address a client reaches; empty until ready. With "
            "the signaling gateway on, `<session id>.<OVAS_GATEWAY_DOMAIN>`, and the "
            "signaling route's `source_port` is the gateway's"
        },
    )
    status = Prepared(StreamStatusSchema, required=True)
    app_id = fields.String()
    version = fields.String()
    profile = fields.String()
    username = fields.String()
    created_time = fields.DateTime()
    reason = fields.String(
        allow_none=True,
        validate=validate.OneOf([r.value for r in Reason]),
        metadata={
            "description": "Why the session ended or failed (machine-readable); null while "
            "it is alive"
        },
    )
    connected = fields.Boolean(
        allow_none=True,
        metadata={
            "description": "Whether a client is connected to the signaling port; null when "
            "the backend cannot tell"
        },
    )
    last_connected_time = fields.DateTime(allow_none=True)
    expires_time = fields.DateTime(
        allow_none=True, metadata={"description": "When the max lifetime ends the session"}
    )
    ended_time = fields.DateTime(allow_none=True)
    stream_token = fields.String(
        allow_none=True,
        metadata={
            "description": "ovas: what opens the session's signaling socket through the "
            "signaling gateway, sent as the WebSocket subprotocol `Authorization-Bearer."
            "<token>`, an `access_token` query parameter or an `Authorization: Bearer` "
            "header; valid while the session lives. Given to the session's owner and to "
            "admins when the gateway checks tokens (`OVAS_GATEWAY_AUTH=token`); null "
            "otherwise"
        },
    )

    queue_position = fields.Integer(
        allow_none=True,
        metadata={
            "description": "ovas: while the session waits in line for capacity (condition "
            "`queued`), its place: 1 = next; null otherwise"
        },
    )

    @pre_dump
    def _shape(self, session: Session, **kwargs) -> dict:
        return session_fields(session)


class StreamListSchema(Schema):
    offset = fields.Integer(required=True)
    limit = fields.Integer(required=True)
    count = fields.Integer(required=True)
    items = fields.Nested(StreamResponseSchema, many=True, required=True)


def session_fields(session: Session) -> dict:
    """A session in the StreamResponse's shape, for the schema to write: `routes` is `{}`
    until the session is ready, with one key, the address a client reaches. `routes` and
    `status` are built here in their wire form (see `Prepared`)."""
    ready = session.state is SessionState.READY
    routes = {}
    if ready and session.host:
        routes = {session.host: {"routes": [route_fields(r) for r in session.routes]}}
    return {
        "id": session.id,
        "routes": routes,
        "status": {
            "condition": session.state.value,
            "message": session.message or ("Session is active" if ready else ""),
            "status": ready,
        },
        "app_id": session.app_id,
        "version": session.version,
        "profile": session.profile,
        "username": session.username,
        "created_time": session.created_time,
        "reason": session.reason,
        "connected": session.connected,
        "last_connected_time": session.last_connected_time,
        "expires_time": session.expires_time,
        "ended_time": session.ended_time,
        "stream_token": session.stream_token,
        "queue_position": session.queue_position,
    }


def route_fields(route: Route) -> dict:
    """One route in RouteSchema's shape."""
    return {
        "description": route.description,
        "protocol": route.protocol,
        "source_port": route.source_port,
        "destination_port": route.destination_port,
    }


class StreamArgumentsSchema(Schema):
    class Meta:
        unknown = RAISE

    usd_stage_uri = fields.String(
        allow_none=True,
        validate=validate.Length(max=2048),
        metadata={"description": "The USD stage to open; empty means the profile's"},
    )


class StreamRequestSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    # Names are checked against their patterns before any lookup (or log line).
    id = fields.String(
        required=True,
        validate=validate.Regexp(APP_ID_PATTERN, error="Not an application id"),
        metadata={"description": "The application's id"},
    )
    profile = fields.String(
        required=True, validate=validate.Regexp(PROFILE_ID_PATTERN, error="Not a profile id")
    )
    version = fields.String(
        allow_none=True,
        validate=validate.Regexp(VERSION_PATTERN, error="Not a version"),
        metadata={"description": "A version, or `latest` (the default; so is empty)"},
    )
    arguments = fields.Nested(StreamArgumentsSchema, load_default=dict, allow_none=True)


class StreamListQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    limit = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    # Bounded so that every answer fits a JSON number clients parse (64-bit).
    offset = fields.Integer(load_default=0, validate=validate.Range(min=0, max=2**31 - 1))
    sort_by = fields.String(
        data_key="sort-by",
        load_default="created_time",
        validate=validate.OneOf(["created_time", "username"]),
    )
    order = fields.String(load_default="DESC", validate=validate.OneOf(["ASC", "DESC"]))
    username = fields.String(validate=validate.Length(min=1, max=253))
    pooled = fields.Boolean(
        load_default=False,
        metadata={
            "description": "ovas: list the warm pools' sessions nobody has claimed yet, and "
            "only those (an admin only; 403 otherwise). They never appear without it."
        },
    )
    # ovas's filters, for admins (a non-admin sees only their own sessions either way).
    state = fields.String(
        validate=validate.OneOf([s.value for s in SessionState]),
        metadata={"description": "Only sessions whose `status.condition` is this (ovas)"},
    )
    app_id = fields.String(
        validate=validate.Regexp(APP_ID_PATTERN, error="Not an application id"),
        metadata={"description": "Only sessions of this application (ovas)"},
    )
    profile = fields.String(
        validate=validate.Regexp(PROFILE_ID_PATTERN, error="Not a profile id"),
        metadata={"description": "Only sessions of this profile (ovas)"},
    )

    @pre_load
    def _upper_order(self, data, **kwargs):
        if "order" in data and isinstance(data.get("order"), str):
            data = {**data, "order": data["order"].upper()}
        return data


class StreamIdSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    id = fields.String(required=True, validate=validate.Length(min=1, max=64))


class StreamLogsQuerySchema(Schema):
    class Meta:
        unknown = EXCLUDE

    tail = fields.Integer(
        load_default=LOG_TAIL,
        validate=validate.Range(min=1, max=MAX_LOG_TAIL),
        metadata={"description": "How many of the last lines"},
    )


class StreamLogsSchema(Schema):
    id = fields.String(required=True)
    lines = fields.List(
        fields.String(),
        required=True,
        metadata={"description": "The container's or pod's last log lines, oldest first"},
    )
