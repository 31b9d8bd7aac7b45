"""Logging: plain lines for development, JSON lines in production (`OVAS_LOG_FORMAT=json`);
every line carries the request id of the request it was written in. Also how a session's
container log output is cut into lines (`output_lines`), the same for every backend."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

from flask import has_request_context, request

# Where the WSGI edge puts each request's id in its environ.
REQUEST_ID_KEY = "ovas.request_id"
_FIELDS = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            in_request = has_request_context()
            record.request_id = request.environ.get(REQUEST_ID_KEY, "-") if in_request else "-"
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "-"),
        }
        # Structured extras (`log.info(..., extra={...})`), such as the audit's fields.
        line.update({k: v for k, v in record.__dict__.items() if k not in _FIELDS})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


PLAIN = "%(asctime)s %(levelname)s [%(request_id)s] %(name)s: %(message)s"
# Characters that would end a log line, or forge one, in a value a client sent.
_CONTROL = re.compile("[\x00-\x1f\x7f\x85\u2028\u2029]")


def escape_controls(text: str) -> str:
    """`text` with its control characters written as escapes (`\\n`, `\\x1b`...)."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class PlainFormatter(logging.Formatter):
    """Plain lines, one per record whatever its values hold (a traceback keeps its lines)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return escape_controls(super().formatMessage(record))


def configure(fmt: str = "plain", level: str = "INFO") -> None:
    """Give the `ovas` logger one handler on stderr in the chosen format (idempotent)."""
    logger = logging.getLogger("ovas")
    logger.setLevel(level.upper())
    for handler in list(logger.handlers):
        if getattr(handler, "_ovas", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._ovas = True  # type: ignore[attr-defined]
    handler.addFilter(RequestIdFilter())
    handler.setFormatter(JsonFormatter() if fmt == "json" else PlainFormatter(PLAIN))
    logger.addHandler(handler)
    logger.propagate = fmt != "json"


def output_lines(text: str, tail: int | None = None) -> list[str]:
    """A container's log output as its lines, oldest first, for both backends.

    Lines end at `\\n` alone, as Docker's and the kubelet's `tail` count them: a line
    holding `\\r`, `\\v`, `\\f`, `\\x1c`-`\\x1e`, U+0085 or U+2028 stays one line (where
    `str.splitlines` would cut it), so `tail` lines asked are at most `tail` lines given.
    The `\\r` of a `\\r\\n` ending is part of the ending, not of the line, and is dropped;
    every other character is kept as the container wrote it. A final `\\n` starts no
    empty line. With `tail` (0 or more), only the last `tail` lines."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    if tail is None:
        return lines
    return lines[-tail:] if tail > 0 else []
