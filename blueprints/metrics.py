"""`/metrics`: Prometheus metrics of one ovas app, correct under several gunicorn workers.

`init_app(app)` registers the route and the request hooks; calling it twice is harmless.

What is measured (every label takes a bounded set of values):

- `ovas_http_requests_total{route, method, status}` and
  `ovas_http_request_duration_seconds{route, method}`: `route` is the URL rule
  (`/stream/<session_id>`), never the raw path, and `<unmatched>` for paths no rule matches;
  `method` is one of the HTTP methods or `other`.
Session metrics come from the events the session service emits (`ovas.events`), with the
structured reason, never from message text or response bodies:

- `ovas_session_starts_total{outcome}` and `ovas_session_stops_total{outcome}`: `outcome` is
  `ok`, or the error as a snake-case name of its class in `ovas.errors`
  (`capacity_exceeded`, `backend_unavailable`, `application_not_found`...). A body that
  fails validation never reaches the service: it is a 422 in `ovas_http_requests_total`.
- `ovas_session_ends_total{state, reason}`: sessions that reached their outcome, `state`
  `ended` or `failed` and `reason` one of `ovas.models.Reason`; and
  `ovas_session_failures_total{reason}` for the failed ones. Each session is counted once
  across every worker and replica: by the process that recorded its outcome.
- `ovas_session_start_to_ready_seconds{app, profile}`: from the session's creation until it
  was first seen ready, observed once, by the process that recorded its readiness.
- `ovas_backend_errors_total{route, method}`: answers made from `BackendUnavailable`.
- At scrape time, from one listing of every session by the worker answering the scrape:
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
import time
from collections import Counter as Tally

from flask import Blueprint, Flask, Response, current_app, g, request
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

from blueprints.edge import STARTED_KEY
from ovas import errors, events
from ovas.errors import BackendUnavailable, ConfigurationError, OvasError
from ovas.metrics_files import scrape_lock
from ovas.models import SessionState

log = logging.getLogger("ovas")

EXTENSION = "ovas_metrics"
UNMATCHED = "<unmatched>"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
ERROR_KEY = "ovas_error"  # where blueprints.errors leaves the OvasError a request answered
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
# A Kit app takes from seconds (warm image) to many minutes (cold pull of a large image).
_READY_BUCKETS = (1, 2, 5, 10, 20, 30, 45, 60, 90, 120, 180, 300, 600, 900, 1800, 3600)
_QUEUE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
blp = Blueprint("metrics", __name__)


def multiprocess_mode() -> bool:
    """True when prometheus_client writes values to `PROMETHEUS_MULTIPROC_DIR` files."""
    return bool(getattr(values.ValueClass, "_multiprocess", False))


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def error_outcome(exc: OvasError) -> str:
    """The `outcome` label of a refused start or stop: bounded by the classes of
    `ovas.errors` (a backend's own subclass is named after the ovas error it extends)."""
    for cls in type(exc).__mro__:
        if cls.__module__ == errors.__name__:
            return _snake(cls.__name__)
    return "error"


class SessionCollector:
    """Sessions by state, app and profile, from one listing of every session per scrape."""

    def __init__(self, app: Flask):
        self.app = app

    def describe(self):
        # Lets a registry check names without listing sessions at registration.
        return [*self._families("")[:4], *self._pool_families()]

    def _families(self, backend: str):
        return (
            GaugeMetricFamily(
                "ovas_sessions", "Sessions now, by state", labels=["state", "app", "profile"]
            ),
            GaugeMetricFamily(
                "ovas_backend_up", "1 if the backend listed its sessions", labels=["backend"]
            ),
            GaugeMetricFamily("ovas_queue_length", "Starts waiting in line for capacity now"),
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

    @staticmethod
    def _pool_families():
        return (
            GaugeMetricFamily(
                "ovas_pool_size", "Sessions each warm pool keeps started", labels=["pool"]
            ),
            GaugeMetricFamily(
                "ovas_pool_sessions",
                "Unclaimed sessions of each warm pool, by state",
                labels=["pool", "state"],
            ),
        )

    def collect(self):
        state = self.app.extensions["ovas"]
        backend = state.backend
        name = type(backend).name or type(backend).__name__
        sessions, up, duration, error = self._list(state.sessions)
        by_state, backend_up, queue_length, took, failed = self._families(name)
        tally = Tally((s.state.value, s.app_id, s.profile) for s in sessions)
        for labels, count in sorted(tally.items()):
            by_state.add_metric(list(labels), count)
        backend_up.add_metric([name], up)
        queue_length.add_metric([], sum(1 for s in sessions if s.state is SessionState.QUEUED))
        took.add_metric([name], duration)
        families = [
            by_state,
            backend_up,
            queue_length,
            took,
            *self._pools(state.sessions, sessions),
        ]
        if error:
            failed.add_metric([name, error], 1)
            families.append(failed)
        return families

    def _pools(self, service, sessions):
        size, members = self._pool_families()
        try:
            pools = service.warm_pools()
        except Exception:
            log.exception("reading the warm pools for /metrics failed")
            return []
        tally = Tally((s.pool, s.state.value) for s in sessions if s.pooled)
        for pool in pools:
            size.add_metric([pool.name], pool.size)
            for state in (SessionState.READY, SessionState.CREATING):
                members.add_metric([pool.name, state.value], tally.get((pool.name, state.value), 0))
        return [size, members]

    def _list(self, service):
        started = time.perf_counter()
        try:
            sessions = service.all()
        except BackendUnavailable:
            return [], 0, time.perf_counter() - started, "unavailable"
        except Exception:
            # A scrape must still answer, so that `ovas_backend_up 0` reaches the alert.
            log.exception("listing sessions for /metrics failed")
            return [], 0, time.perf_counter() - started, "error"
        return sessions, 1, time.perf_counter() - started, ""


class _Collected:
    """Metrics read already, as a collector."""

    def __init__(self, metrics: list):
        self.metrics = metrics

    def collect(self):
        return self.metrics


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
        self.ends = Counter(
            "ovas_session_ends",
            "Sessions that ended or failed, by state and reason",
            ["state", "reason"],
            registry=r,
        )
        self.failures = Counter(
            "ovas_session_failures", "Sessions that failed, by reason", ["reason"], registry=r
        )
        self.ready = Histogram(
            "ovas_session_start_to_ready_seconds",
            "Time from a session's creation until it was first answered as ready",
            ["app", "profile"],
            buckets=_READY_BUCKETS,
            registry=r,
        )
        self.pool_claims = Counter(
            "ovas_pool_claims",
            "Starts given a warm pool's ready session at once (hits)",
            ["pool"],
            registry=r,
        )
        self.pool_misses = Counter(
            "ovas_pool_misses",
            "Starts that matched a warm pool but started on demand, by reason",
            ["pool", "reason"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "ovas_queue_wait_seconds",
            "Time queued starts waited in line before they started, by profile",
            ["profile"],
            buckets=_QUEUE_BUCKETS,
            registry=r,
        )
        self.queue_drops = Counter(
            "ovas_queue_drops",
            "Queued starts that left the line without starting, by reason (stopped, "
            "abandoned, create_failed)",
            ["reason"],
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
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        if self.multiprocess:
            folder = os.environ["PROMETHEUS_MULTIPROC_DIR"]
            # Not while the master folds a gone worker's files into the archives.
            with scrape_lock(folder):
                summed = list(MultiProcessCollector(None, folder).collect())
            registry = CollectorRegistry()
            registry.register(_Collected(summed))
            registry.register(self.sessions)
            body = encode(registry)
        else:
            body = encode(self.registry)
        return Response(body, status=200, headers={"Content-Type": content_type})

    # Hooks

    def after_request(self, response: Response) -> Response:
        try:
            self._record(response)
        except Exception:
            # Measuring must never turn an answer into an error.
            log.exception("recording metrics failed")
        return response

    def _record(self, response: Response) -> None:
        url_rule = request.url_rule
        rule = url_rule.rule if url_rule is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        self.requests.labels(rule, method, str(response.status_code)).inc()
        started = request.environ.get(STARTED_KEY)
        if started is not None:
            self.latency.labels(rule, method).observe(time.perf_counter() - started)
        if isinstance(g.get(ERROR_KEY), BackendUnavailable):
            self.backend_errors.labels(rule, method).inc()

    def on_event(self, event: events.Event) -> None:
        """Count what the session service tells (subscribed in `init_app`)."""
        if isinstance(event, events.SessionStarted):
            self.starts.labels("ok").inc()
        elif isinstance(event, events.StartRefused):
            self.starts.labels(error_outcome(event.error)).inc()
        elif isinstance(event, events.PoolClaimed):
            self.pool_claims.labels(event.pool).inc()
        elif isinstance(event, events.PoolMissed):
            self.pool_misses.labels(event.pool, event.reason).inc()
        elif isinstance(event, events.QueueLeft):
            if event.how == "started" and event.wait is not None:
                self.queue_wait.labels(event.profile).observe(event.wait)
            elif event.how != "started":
                self.queue_drops.labels(event.how).inc()
        elif isinstance(event, events.SessionStopped):
            self.stops.labels("ok").inc()
        elif isinstance(event, events.StopRefused):
            self.stops.labels(error_outcome(event.error)).inc()
        elif isinstance(event, events.SessionReady):
            session = event.session
            elapsed = max(0.0, (event.at - session.created_time).total_seconds())
            self.ready.labels(session.app_id, session.profile).observe(elapsed)
        elif isinstance(event, events.SessionEnded):
            session = event.session
            reason = session.reason.value if session.reason else "unknown"
            self.ends.labels(session.state.value, reason).inc()
            if session.state is SessionState.FAILED:
                self.failures.labels(reason).inc()


def init_app(app: Flask) -> Metrics:
    """Register `/metrics` and the request hooks on `app`; returns its `Metrics`. Raises
    `ConfigurationError` in multiprocess mode when `PROMETHEUS_MULTIPROC_DIR` is missing."""
    if EXTENSION in app.extensions:
        return app.extensions[EXTENSION]
    recorder = Metrics(app)
    app.extensions[EXTENSION] = recorder
    app.register_blueprint(blp)
    # An after_request hook sees every answer, error handlers' included. ovas registers no
    # other after_request hook that could change the status (the edge middleware only adds
    # headers). The clock starts in that middleware, before any hook, so a request refused
    # by one is timed too.
    app.after_request(recorder.after_request)
    app.extensions["ovas"].sessions.events.subscribe(recorder.on_event)
    return recorder


@blp.get("/metrics")
def metrics():
    """The scrape. Its endpoint, `metrics.metrics`, is public in blueprints/security.py."""
    return current_app.extensions[EXTENSION].scrape()


__all__ = ["Metrics", "init_app"]
