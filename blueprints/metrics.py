"""`/metrics`: Prometheus metrics of one ovas app, correct under several gunicorn workers.

`init_app(app)` registers the route and the request hooks; calling it twice is harmless.

What is measured (every label takes a bounded set of values):

- `ovas_http_requests_total{route, method, status}` and
  `ovas_http_request_duration_seconds{route, method}`: `route` is the URL rule
  (`/stream/<session_id>`), never the raw path, and `<unmatched>` for paths no rule matches;
  `method` is one of the HTTP methods or `other`.
- `ovas_session_starts_total{outcome}` and `ovas_session_stops_total{outcome}`: `outcome` is
  `ok`, or the error as a snake-case name of its class in `ovas.errors`
  (`capacity_exceeded`, `backend_unavailable`, `application_not_found`...),
  `invalid_request` for a body that failed validation, or `http_<status>` otherwise.
- `ovas_session_failures_total{reason}`: sessions first seen failed (a 410 on
  `GET /stream/<id>`), `reason` derived from the message: one of `REASONS`.
- `ovas_session_start_to_ready_seconds{app, profile}`: now minus the session's
  `created_time`, observed the first time this process answers a session as ready
  (`GET /stream/<id>` or `POST /stream` with 200). Lists are not used: their readiness is the
  engine's record, not a probe, and every worker serving a dashboard's list would count each
  session again. Sessions created before this process started are skipped, so a restarted
  worker does not record hours for a session it never saw starting. With several workers a
  session is counted again only if a client keeps polling it after its first 200.
- `ovas_backend_errors_total{route, method}`: answers made from `BackendUnavailable`.
- At scrape time, from one `backend.list()` by the worker answering the scrape:
  `ovas_sessions{state, app, profile}`, `ovas_backend_up{backend}`,
  `ovas_backend_scrape_duration_seconds{backend}` and, only when the list failed,
  `ovas_backend_scrape_error{backend, error}` (`unavailable` or `error`).

Registries. Each app gets its own metric objects and its own `CollectorRegistry`, never
prometheus_client's global `REGISTRY`: the global one refuses a second metric of the same name,
so a test process that builds several apps would fail, and counters shared between apps would
make one test see another's requests. In production there is one app per process, so nothing
is lost. Under gunicorn, `PROMETHEUS_MULTIPROC_DIR` (set by config/gunicorn.conf.py before the
workers fork, and so before prometheus_client is imported) makes every counter and histogram
write to per-process files; a scrape then builds a fresh registry with a
`MultiProcessCollector` that sums the files of every worker, plus the session collector, which
must not be summed (each worker would report the same sessions). Whether multiprocess mode is
on is what prometheus_client decided at import, not the variable now: values written to
memory cannot be read back from files.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import Counter as Tally
from collections import OrderedDict
from datetime import UTC, datetime

from flask import (
    Blueprint,
    Flask,
    Response,
    current_app,
    got_request_exception,
    request,
)
from prometheus_client import (
    CollectorRegistry,
    Counter,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    values,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.multiprocess import MultiProcessCollector
from werkzeug.exceptions import HTTPException

from blueprints.edge import STARTED_KEY
from blueprints.streaming.resources import StreamById, Streams
from ovas import errors
from ovas.errors import BackendUnavailable, ConfigurationError, OvasError

log = logging.getLogger("ovas")

EXTENSION = "ovas_metrics"
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REASONS = ("timeout", "image_pull", "no_gpu", "capacity", "exited", "other")
# Checked in order: a timeout message may carry an image or exit detail in parentheses, and
# "no node has a free GPU" is about GPUs before it is about capacity.
_REASON_PATTERNS = (
    ("timeout", re.compile(r"not ready within|timed? ?out|deadline", re.I)),
    ("image_pull", re.compile(r"\bimage\b|\bpull", re.I)),
    ("no_gpu", re.compile(r"\bgpus?\b|nvidia", re.I)),
    ("capacity", re.compile(r"capacity|no node|unschedulable|insufficient|no room", re.I)),
    ("exited", re.compile(r"exit|crash|oomkilled|terminated|pod failed", re.I)),
)
# Remembering more ids than this would let a long-lived worker grow without bound.
SEEN_LIMIT = 10_000
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A Kit app takes from seconds (warm image) to many minutes (cold pull of a large image).
_READY_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600)
blp = Blueprint("metrics", __name__)
_ERROR_KEY = "ovas_metrics_error"


def multiprocess_mode() -> bool:
    """True when prometheus_client writes values to `PROMETHEUS_MULTIPROC_DIR` files."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def failure_reason(message: str) -> str:
    """A failed session's message -> one of `REASONS`."""
    for reason, pattern in _REASON_PATTERNS:
        if pattern.search(message or ""):
            return reason
    return "other"


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_outcome(exc: BaseException | None, status: int) -> str:
    """The `outcome` label of a failed request: bounded by the classes of `ovas.errors`."""
    if isinstance(exc, OvasError):
        # A backend's own subclass is named after the ovas error it extends.
        for cls in type(exc).__mro__:
            if cls.__module__ == errors.__name__:
                return _snake(cls.__name__)
    if isinstance(exc, HTTPException) and exc.code in (400, 422):
        return "invalid_request"
    if exc is not None and not isinstance(exc, HTTPException):
        return "internal_error"
    return f"http_{status}"


class _Seen:
    """A bounded, thread-safe set of ids: `add` is True only the first time."""

    def __init__(self, limit: int = SEEN_LIMIT):
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._limit = limit
        self._lock = threading.Lock()

    def add(self, key: str) -> bool:
        with self._lock:
            if key in self._ids:
                return False
            self._ids[key] = None
            if len(self._ids) > self._limit:
                self._ids.popitem(last=False)
            return True

    def __contains__(self, key: object) -> bool:
        return key in self._ids


class SessionCollector:
    """Sessions by state, app and profile, from one `backend.list()` per scrape."""

    def __init__(self, app: Flask):
        self.app = app

    def describe(self):
        # Lets a registry check names without listing sessions at registration.
        return self._families("")[:3]

    def _families(self, backend: str):
        return (
            GaugeMetricFamily(
                "ovas_sessions", "Sessions now, by state", labels=["state", "app", "profile"]
            ),
            GaugeMetricFamily(
                "ovas_backend_up", "1 if the backend listed its sessions", labels=["backend"]
            ),
            GaugeMetricFamily(
                "ovas_backend_scrape_duration_seconds",
                "Time the backend took to list its sessions",
                labels=["backend"],
            ),
            GaugeMetricFamily(
                "ovas_backend_scrape_error",
                "1 when listing sessions failed, by kind of error",
                labels=["backend", "error"],
            ),
        )

    def collect(self):
        backend = self.app.extensions["ovas"].backend
        name = type(backend).name or type(backend).__name__
        sessions, up, duration, error = self._list(backend)
        by_state, backend_up, took, failed = self._families(name)
        tally = Tally((s.state.value, s.app_id, s.profile) for s in sessions)
        for labels, count in sorted(tally.items()):
            by_state.add_metric(list(labels), count)
        backend_up.add_metric([name], up)
        took.add_metric([name], duration)
        families = [by_state, backend_up, took]
        if error:
            failed.add_metric([name, error], 1)
            families.append(failed)
        return families

    def _list(self, backend):
        started = time.perf_counter()
        try:
            sessions = backend.list()
        except BackendUnavailable:
            return [], 0, time.perf_counter() - started, "unavailable"
        except Exception:
            # A scrape must still answer, so that `ovas_backend_up 0` reaches the alert.
            log.exception("listing sessions for /metrics failed")
            return [], 0, time.perf_counter() - started, "error"
        return sessions, 1, time.perf_counter() - started, ""


class Metrics:
    """The metric objects and hooks of one app (`app.extensions["ovas_metrics"]`)."""

    def __init__(self, app: Flask):
        self.multiprocess = multiprocess_mode()
        if self.multiprocess:
            path = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")
            if not os.path.isdir(path):
                raise ConfigurationError(
                    f"PROMETHEUS_MULTIPROC_DIR={path!r} is not a directory; create it before "
                    "the workers start (config/gunicorn.conf.py does)"
                )
        self.registry = CollectorRegistry()
        self.sessions = SessionCollector(app)
        self.started = datetime.now(UTC)
        self.seen_ready = _Seen()
        self.seen_failed = _Seen()
        self._child_cache: dict[tuple, tuple] = {}
        self._rules: dict[int, tuple[str, type]] = {}  # id(url rule) -> (label, view class)
        r = self.registry
        self.requests = Counter(
            "ovas_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ovas_http_request_duration_seconds",
            "Time to answer an HTTP request",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.starts = Counter(
            "ovas_session_starts", "Requests to start a session", ["outcome"], registry=r
        )
        self.stops = Counter(
            "ovas_session_stops", "Requests to stop a session", ["outcome"], registry=r
        )
        self.failures = Counter(
            "ovas_session_failures", "Sessions seen failed, by reason", ["reason"], registry=r
        )
        self.ready = Histogram(
            "ovas_session_start_to_ready_seconds",
            "Time from a session's creation until it was first answered as ready",
            ["app", "profile"],
            buckets=_READY_BUCKETS,
            registry=r,
        )
        self.backend_errors = Counter(
            "ovas_backend_errors",
            "Answers made because the session backend could not be reached",
            ["route", "method"],
            registry=r,
        )
        if not self.multiprocess:
            # Per-process figures mean nothing summed over workers, so only without them.
            r.register(self.sessions)
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # Scraping

    def scrape(self) -> Response:
        if self.multiprocess:
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            registry.register(self.sessions)
        else:
            registry = self.registry
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry), status=200, headers={"Content-Type": content_type})

    # Hooks

    def on_exception(self, sender, exception=None, **extra) -> None:
        request.environ.setdefault(_ERROR_KEY, exception)

    def after_request(self, response: Response) -> Response:
        try:
            self._record(response)
        except Exception:
            # Measuring must never turn an answer into an error.
            log.exception("recording metrics failed")
        return response

    def _record(self, response: Response) -> None:
        # Every request passes here: read the request once, and keep each label set's child
        # metric rather than looking it up through `labels()` and its lock every time.
        req = request._get_current_object()
        environ = req.environ
        url_rule = req.url_rule
        known = self._rules.get(id(url_rule))
        if known is None:
            view = current_app.view_functions.get(url_rule.endpoint) if url_rule else None
            known = (url_rule.rule if url_rule else UNMATCHED, getattr(view, "view_class", type))
            # Rules live as long as the app (and are not hashable): bounded by its routes.
            self._rules[id(url_rule)] = known
        rule, resource = known
        method = req.method
        if method not in METHODS:
            method = "other"
        status = response.status_code
        counted, timed = self._children(rule, method, status)
        counted.inc()
        started = environ.get(STARTED_KEY)
        if started is not None:
            timed.observe(time.perf_counter() - started)
        exc = environ.get(_ERROR_KEY)
        if isinstance(exc, BackendUnavailable):
            self.backend_errors.labels(rule, method).inc()
        if resource is StreamById and method == "GET":
            # Clients poll a ready session again and again: look at the body only once.
            if status == 200:
                if (req.view_args or {}).get("session_id") not in self.seen_ready:
                    self._seen_ready(response)
            elif status == 410:
                self._seen_failed(response)
            return
        outcome = "ok" if status < 400 else error_outcome(exc, status)
        if resource is Streams and method == "POST":
            self.starts.labels(outcome).inc()
            if status == 200:
                self._seen_ready(response)
        elif resource in (Streams, StreamById) and method == "DELETE":
            self.stops.labels(outcome).inc()

    def _children(self, rule: str, method: str, status: int):
        key = (rule, method, status)
        found = self._child_cache.get(key)
        if found is None:
            found = (
                self.requests.labels(rule, method, str(status)),
                self.latency.labels(rule, method),
            )
            # Bounded: routes are patterns, methods and statuses few; never grows per path.
            if len(self._child_cache) < 4096:
                self._child_cache[key] = found
        return found

    def _session(self, response: Response) -> dict | None:
        if response.is_streamed or not response.is_json:
            return None
        body = response.get_json(silent=True)
        if isinstance(body, dict) and isinstance(body.get("id"), str):
            return body
        return None

    def _seen_ready(self, response: Response) -> None:
        session = self._session(response)
        if session is None:
            return
        created = _parse_time(session.get("created_time"))
        if created is None or created < self.started:
            return
        if self.seen_ready.add(session["id"]):
            elapsed = max(0.0, (datetime.now(UTC) - created).total_seconds())
            app_id, profile = str(session.get("app_id", "")), str(session.get("profile", ""))
            self.ready.labels(app_id, profile).observe(elapsed)

    def _seen_failed(self, response: Response) -> None:
        session = self._session(response)
        if session is None or not self.seen_failed.add(session["id"]):
            return
        status = session.get("status")
        message = status.get("message", "") if isinstance(status, dict) else ""
        self.failures.labels(failure_reason(str(message))).inc()


def _parse_time(value) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def init_app(app: Flask) -> Metrics:
    """Register `/metrics` and the request hooks on `app`; returns its `Metrics`. Raises
    `ConfigurationError` in multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is missing."""
    if EXTENSION in app.extensions:
        return app.extensions[EXTENSION]
    recorder = Metrics(app)
    app.extensions[EXTENSION] = recorder
    app.register_blueprint(blp)
    # An after_request hook sees every answer, error handlers' included, and costs less than
    # a signal on every request. ovas registers no other after_request hook that could change
    # the status (the edge middleware only adds headers). The clock starts in that
    # middleware, before any hook, so a request refused by one is timed too.
    app.after_request(recorder.after_request)
    got_request_exception.connect(recorder.on_exception, app)
    _remember_handled_errors(app)
    return recorder


@blp.get("/metrics")
def metrics():
    """The scrape. Its endpoint, `metrics.metrics`, is public in blueprints/security.py."""
    return current_app.extensions[EXTENSION].scrape()


def _remember_handled_errors(app: Flask) -> None:
    # Flask signals only unhandled exceptions; errors answered by an error handler (every
    # OvasError) are seen here, so that outcomes name the error, not just the status.
    handle = app.handle_user_exception

    def handle_user_exception(e):
        request.environ.setdefault(_ERROR_KEY, e)
        return handle(e)

    app.handle_user_exception = handle_user_exception


__all__ = ["REASONS", "Metrics", "failure_reason", "init_app"]
