"""What one pass of the reaper costs: backend calls with 200 sessions on FakeBackend; engine
calls (HTTP requests to the Docker daemon) with 10, 20 and 40 stand-in sessions on a private
Docker daemon; and Kubernetes API calls with 5, 20 and 40 sessions in each session mode on
the emulated cluster of tests/support (its kubelet paused while measuring); each once every
session's marks are written (the steady state).

    .venv/bin/python bench/reap_pass.py [--docker-sessions 10,20,40]
        [--kubernetes-sessions 5,20,40] [--passes 5]

An empty list skips that engine. The goal: engine calls per pass constant in the number of
sessions. Exits 0 and reports; a goal missed is printed as MISSED.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from ovas.models import SessionState  # noqa: E402
from ovas.testing import FakeBackend, FakeClock, make_request, service_for, wait_for  # noqa: E402

CALLS = ("observe", "observe_all", "observe_page", "mark", "finish", "stop", "collect")


def counted(backend) -> Counter:
    """Count calls to the backend's methods from now on."""
    tally: Counter = Counter()
    for name in CALLS:
        method = getattr(backend, name)

        def wrapper(*args, _method=method, _name=name, **kwargs):
            tally[_name] += 1
            return _method(*args, **kwargs)

        setattr(backend, name, wrapper)
    return tally


def fake(sessions: int, passes: int) -> None:
    clock = FakeClock()
    backend = FakeBackend(now=clock)
    service = service_for(backend)
    for _ in range(sessions):
        backend.start(make_request(backend.catalog, now=clock()))
    service.reap()  # marks written: ready
    tally = counted(backend)
    took = []
    for _ in range(passes):
        began = time.perf_counter()
        service.reap()
        took.append(time.perf_counter() - began)
    per_pass = {k: v / passes for k, v in tally.items()}
    print(
        f"FakeBackend, {sessions} sessions: backend calls per pass {per_pass}, "
        f"{statistics.median(took) * 1000:.1f} ms a pass (median)"
    )


def docker(counts: list[int], passes: int) -> bool:
    from support import dockerd

    from backends.docker import DockerBackend
    from ovas.catalog_files import FileCatalog

    daemon = dockerd.find_or_start("ovasreap")
    work = Path(tempfile.mkdtemp(prefix="ovas-reap-"))
    per_pass_calls = []
    try:
        dockerd.build_standin(daemon)
        (work / "catalog").mkdir()
        shutil.copy(REPO / "config/catalog/standin.yaml", work / "catalog")
        catalog = FileCatalog(work / "catalog")
        backend = DockerBackend(
            catalog,
            docker_host=daemon.url,
            port_range=dockerd.free_ports(3 * max(counts) + 10),
            gpus="none",
        )
        service = service_for(backend)
        started: list[str] = []
        for count in counts:
            while len(started) < count:
                request = make_request(catalog, app_id="kit-standin", profile_id="standin")
                started.append(backend.start(request).record.id)
            for session_id in started:
                wait_for(service, session_id, SessionState.READY, timeout=60)
            service.reap()  # the steady state: every mark written
            calls: list[str] = []
            client = backend.engine.api()
            client.hooks["response"].append(lambda r, _c=calls, **kw: _c.append(r.request.method))
            took = []
            try:
                for _ in range(passes):
                    began = time.perf_counter()
                    service.reap()
                    took.append(time.perf_counter() - began)
            finally:
                client.hooks["response"].pop()
            per_pass_calls.append(len(calls) / passes)
            print(
                f"Docker, {count} sessions: engine calls per pass {len(calls) / passes:.1f} "
                f"({dict(Counter(calls))} in {passes} passes), "
                f"{statistics.median(took) * 1000:.0f} ms a pass (median; probes included)"
            )
        for session_id in started:
            backend.stop(session_id)
        backend.close()
    finally:
        daemon.close()
        shutil.rmtree(work, ignore_errors=True)
    constant = len(set(per_pass_calls)) == 1
    print(f"engine calls per pass constant in the sessions: {'met' if constant else 'MISSED'}")
    return constant


def kubernetes(counts: list[int], passes: int, mode: str) -> bool:
    import uuid
    from dataclasses import replace

    from support.kube_requests import request_for
    from support.kube_server import EmulatedCluster, catalog_documents

    from backends.kubernetes import KubernetesBackend

    per_pass_calls = []
    for count in counts:
        with EmulatedCluster() as cluster:
            cluster.seed("omni-streaming", catalog_documents())
            clock = FakeClock()
            backend = KubernetesBackend(
                namespace="omni-streaming", mode=mode, config_file=cluster.kubeconfig, now=clock
            )
            service = service_for(backend, capacity=count)
            template = request_for(backend, capacity=count, now=clock())
            started = [
                backend.start(replace(template, id=str(uuid.uuid4()))).record.id
                for _ in range(count)
            ]
            for session_id in started:
                wait_for(service, session_id, SessionState.READY, timeout=60)
            service.reap()  # the steady state: every mark written
            cluster.cluster.running = False  # the kubelet idles: measure the API alone
            before = len(cluster.emulator.calls())
            took = []
            for _ in range(passes):
                began = time.perf_counter()
                service.reap()
                took.append(time.perf_counter() - began)
            calls = Counter(
                f"{r.method.value} {r.resource.plural}" for r in cluster.emulator.calls()[before:]
            )
            per_pass_calls.append(sum(calls.values()) / passes)
            print(
                f"Kubernetes ({mode}), {count} sessions: API calls per pass "
                f"{per_pass_calls[-1]:.1f} ({dict(calls)} in {passes} passes), "
                f"{statistics.median(took) * 1000:.0f} ms a pass (median)"
            )
            backend.close()
    constant = len(set(per_pass_calls)) == 1
    print(f"API calls per pass constant in the sessions: {'met' if constant else 'MISSED'}")
    return constant


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docker-sessions", default="10,20,40")
    parser.add_argument("--kubernetes-sessions", default="5,20,40")
    parser.add_argument("--passes", type=int, default=5)
    args = parser.parse_args()
    fake(200, args.passes)
    if args.docker_sessions:
        docker([int(n) for n in args.docker_sessions.split(",")], args.passes)
    if args.kubernetes_sessions:
        for mode in ("pod", "helmrelease"):
            counts = [int(n) for n in args.kubernetes_sessions.split(",")]
            kubernetes(counts, args.passes, mode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
