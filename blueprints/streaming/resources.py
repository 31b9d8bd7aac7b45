"""Streaming Session service: `/streaming/stream...` (also served bare, as `/stream...`)."""

from __future__ import annotations

from flask import Response, request

from blueprints.common import Blueprint, Resource, error_responses, sessions
from blueprints.security import audited, current_identity, rate_limited
from blueprints.streaming.cookies import expire_cookie, set_cookie
from blueprints.streaming.schemas import (
    StreamIdSchema,
    StreamListQuerySchema,
    StreamListSchema,
    StreamLogsQuerySchema,
    StreamLogsSchema,
    StreamRequestSchema,
    StreamResponseSchema,
)
from ovas.idempotency import HEADER, parse_key
from ovas.models import Session, SessionState

blp = Blueprint(
    "streaming",
    __name__,
    url_prefix="/stream",
    description="Streaming sessions: start a Kit app, poll until it is ready, stop it",
)

# Clients poll until exactly 200; a failed or ended session answers 410 with the reason in
# the body.
_STATUS = {SessionState.READY: 200, SessionState.FAILED: 410, SessionState.ENDED: 410}
_IDEMPOTENCY = {
    HEADER: {
        "description": "ovas: makes the start retry-safe (IETF httpapi draft "
        "`Idempotency-Key`): the same user and key within `OVAS_IDEMPOTENCY_TTL` seconds "
        "answer the session the first start made, as it is now, and start nothing; the "
        "same key with another body is a 422",
        "schema": {"type": "string", "maxLength": 257},
        "required": False,
    }
}


def _answer(session: Session, status: int) -> tuple[Session, int, dict[str, str]]:
    """The session, with its stream token's cookie for its owner's browser
    (`blueprints.streaming.cookies`)."""
    service = sessions()
    cookie = set_cookie(session, current_identity().username, service.gateway.domain, service.now())
    return session, status, cookie


def _stop(session_id: str) -> Response:
    with audited("session.stop", session=session_id):
        sessions().stop(session_id, current_identity())
    # The web viewer shows any body of a DELETE as an error: answer with none.
    return Response(status=204, headers=expire_cookie(session_id, sessions().gateway.domain))


@blp.route("")
class Streams(Resource):
    @blp.arguments(StreamListQuerySchema(), location="query")
    @blp.response(200, StreamListSchema)
    @error_responses(blp, 503)
    def get(self, query):
        """List sessions, paged and sorted; an admin may filter by state, app and profile, and
        list the warm pools' unclaimed sessions (`pooled=true`)"""
        return sessions().list(**query, caller=current_identity())

    @blp.arguments(StreamRequestSchema())
    @blp.response(
        202,
        StreamResponseSchema,
        description="The session is starting, or waits in line for capacity (condition "
        "`queued`, with its `queue_position`)",
    )
    @blp.alt_response(
        200,
        schema=StreamResponseSchema,
        description="The session is ready: a warm pool's, taken at once",
        success=True,
    )
    @blp.doc(parameters=[{"in": "header", "name": k, **v} for k, v in _IDEMPOTENCY.items()])
    @error_responses(blp, 404, 409, 422, 429, 503)
    def post(self, body):
        """Start a session of an application version with a profile; poll it until 200

        When the capacity or the GPUs are taken, the session waits in line (202, condition
        `queued`) and starts as soon as room frees; 503 only when the line is full or off."""
        target = {"app": body["id"], "version": body.get("version"), "profile": body["profile"]}
        with audited("session.start", **target) as record:
            rate_limited()
            header = request.headers.get(HEADER)
            stage = (body["arguments"] or {}).get("usd_stage_uri")
            session = sessions().start(
                body["id"],
                body["profile"],
                body.get("version"),
                username=current_identity().username,
                caller=current_identity(),
                usd_stage_uri=stage,
                idempotency_key=parse_key(header) if header is not None else None,
            )
            record["session"] = session.id
            record["version"] = session.version  # what it resolved to, when omitted
            if session.queue_position is not None:
                record["queue_position"] = session.queue_position
        return _answer(session, 200 if session.ready else 202)

    @blp.arguments(StreamIdSchema())
    @blp.response(204)
    @error_responses(blp, 404, 503)
    def delete(self, body):
        """Stop the session named in the body, also while it is starting"""
        return _stop(body["id"])


@blp.route("/<session_id>")
class StreamById(Resource):
    @blp.response(200, StreamResponseSchema, description="The session is ready")
    @blp.alt_response(
        202, schema=StreamResponseSchema, description="The session is starting", success=True
    )
    @blp.alt_response(
        410,
        schema=StreamResponseSchema,
        description="The session failed or ended; `reason` and `status.message` say why",
    )
    @error_responses(blp, 404, 503)
    def get(self, session_id):
        """Get a session: 200 only when ready, 202 while starting, 410 when failed or ended"""
        session = sessions().get(session_id, current_identity())
        return _answer(session, _STATUS.get(session.state, 202))

    @blp.response(204)
    @error_responses(blp, 404, 503)
    def delete(self, session_id):
        """Stop a session, also while it is starting"""
        return _stop(session_id)


@blp.route("/<session_id>/logs")
class StreamLogs(Resource):
    @blp.arguments(StreamLogsQuerySchema(), location="query")
    @blp.response(200, StreamLogsSchema)
    @error_responses(blp, 404, 422, 503)
    def get(self, query, session_id):
        """A session's log lines; admins only

        The last `tail` lines of the session's container or pod, while the session is kept:
        running, ended or failed (for `OVAS_SESSION_RETENTION` seconds). An ovas extension:
        OVAS has no such route. A caller who is not an admin is answered 403.
        """
        lines = sessions().logs(session_id, query["tail"], current_identity())
        return {"id": session_id, "lines": lines}
