"""Serving ovas in production: `gunicorn -c config/gunicorn.conf.py` (from the repository root).

Every setting can be changed from the environment:

- `wsgi_app`: `ovas:create_app()`, configured by the `OVAS_*` variables as always.
- `bind`: `OVAS_BIND`, default `127.0.0.1:8080` (set `0.0.0.0:8080` in a container).
- `workers`: `OVAS_WORKERS`, default 2 x usable CPUs + 1, at most 8 (each worker holds its own
  engine clients and reaper thread; more rarely helps an API this light).
- `threads`: `OVAS_THREADS`, default 4, with the `gthread` worker: a `GET /stream/<id>` may
  wait about a second on a readiness probe, and the other threads keep answering meanwhile.
- `timeout`: `OVAS_TIMEOUT`, default 30 s before a silent worker is killed and replaced;
  `graceful_timeout` 30 s to finish requests on restart.
- `keepalive`: `OVAS_KEEPALIVE`, default 75 s that an idle keep-alive connection stays open.
  It must exceed the idle timeout of any proxy or load balancer in front (60 s for AWS ALB
  and nginx's `keepalive_timeout`): when the server closes first, a request the proxy sends
  at that moment is lost, and the client sees a 502.
- `accesslog` and `errorlog`: stdout and stderr, one line per request with its time in ms and
  its `X-Request-ID`.
- `forwarded_allow_ips`: `OVAS_FORWARDED_ALLOW_IPS` (else gunicorn's `FORWARDED_ALLOW_IPS`),
  default `127.0.0.1,::1`: the proxies trusted to say the request came over https.
- `PROMETHEUS_MULTIPROC_DIR`: kept if set (its stale files are removed at start), else a fresh
  temporary folder, removed at exit. It must exist before prometheus_client is first imported,
  which is in the workers (see `preload_app`), so `/metrics` sums every worker's counters;
  `child_exit` folds a gone worker's files into one archive per type (`ovas.metrics_files`),
  so the folder stays about two files per live worker however many have come and gone.
- `post_worker_init`: each worker starts its reaper as soon as it has loaded the app, so the
  session clocks and the warm pools run after a restart with no traffic.
- `preload_app`: off, so each worker builds its own app and backend clients after the fork
  (an engine connection or a thread inherited across a fork is not safe to use).
- `worker_tmp_dir`: `/dev/shm` where present, so worker heartbeats never wait on a slow disk.
- `control_socket_disable`: on; gunicorn's control socket has one path per user by default,
  which several ovas servers on one host would take from each other.
"""

from __future__ import annotations

import os
import shutil
import tempfile


def _int(name: str, default: int) -> int:
    """A bounded number setting (its range is in ovas/config.py's list); a value out of it
    stops gunicorn with one line naming the variable and the largest allowed."""
    from ovas.config import gunicorn_number
    from ovas.errors import ConfigurationError

    try:
        return gunicorn_number(name, default)
    except ConfigurationError as exc:
        raise SystemExit(f"Error: {exc.message}") from None


def _cpus() -> int:
    # The CPUs this process may run on, which a container's cpuset narrows; cpu_count() is
    # the whole host's.
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


wsgi_app = "ovas:create_app()"
bind = os.environ.get("OVAS_BIND", "127.0.0.1:8080")
workers = _int("OVAS_WORKERS", min(2 * _cpus() + 1, 8))
threads = _int("OVAS_THREADS", 4)
worker_class = "gthread"
timeout = _int("OVAS_TIMEOUT", 30)
graceful_timeout = 30
keepalive = _int("OVAS_KEEPALIVE", 75)
accesslog = "-"
errorlog = "-"
access_log_format = (
    '%(h)s %(l)s %(u)s %(t)s "%(r)s" %(s)s %(b)s "%(f)s" "%(a)s" %(M)sms %({x-request-id}o)s'
)
forwarded_allow_ips = os.environ.get(
    "OVAS_FORWARDED_ALLOW_IPS", os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
)
preload_app = False
control_socket_disable = True
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

# Remembered in the environment, not a variable: gunicorn reads this file again on SIGHUP.
_CREATED = "OVAS_METRICS_DIR_CREATED"
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="ovas-metrics-")
    os.environ[_CREATED] = os.environ["PROMETHEUS_MULTIPROC_DIR"]
else:
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


def on_starting(server) -> None:
    # Files left by a previous run would be summed into this one's counters.
    from ovas.metrics_files import clear

    clear(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    # The workers read how many they are (a backend keeping sessions in one process's
    # memory warns when several serve it), also when `-w` said it.
    os.environ["OVAS_WORKERS"] = str(server.cfg.workers)


def post_worker_init(worker) -> None:
    # The reaper of each worker runs from now: clocks and warm pools need no request.
    from ovas.app import serving

    serving(worker.wsgi)


def child_exit(server, worker) -> None:
    from ovas.metrics_files import retire_worker

    try:
        retire_worker(worker.pid)
    except Exception:  # a metrics file must never take the master down
        server.log.exception("could not fold the metrics of worker %s", worker.pid)


def on_exit(server) -> None:
    if os.environ.get(_CREATED):
        shutil.rmtree(os.environ[_CREATED], ignore_errors=True)
