"""Shows that ovas finds this host's GPUs and gives each to one session at a time.

1. the inventory, as ovas builds it (NVML, else nvidia-smi; OVAS_DOCKER_GPUS overrides):
   index, UUID, name, memory;
2. a first one-GPU session gets a GPU from the ledger, and the Docker device request its
   container would carry;
3. once every GPU is held, another one-GPU session is refused with a message saying what
   was asked and what is free.

No Docker daemon is needed for that. With `--docker`, it then starts real sessions of the
stand-in image (built by `make standin`) on the Docker engine, each asking for one GPU:
each GPU's session runs with that device, and one more is refused.

Exits 0 with a clear message on a host without NVIDIA GPUs, 1 if something misbehaves.

    python bench/gpu_check.py [--docker]
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.docker import containers
from backends.docker.gpus import GpuLedger, inventory
from ovas.errors import CapacityExceeded, OvasError
from ovas.kitspec import KitSpec
from ovas.models import Application, Profile, SessionRequest, Version


def one_gpu_request(number: int) -> SessionRequest:
    """A session as the sample catalog's `default` profile asks for it: one GPU."""
    now = datetime.now(UTC)
    return SessionRequest(
        id=f"00000000-0000-4000-8000-{number:012d}",
        app=Application("usd-viewer", "USD Viewer"),
        version=Version("usd-viewer", "107.3.2", "nvcr.io/nvidia/omniverse/usd-viewer", "107.3.2"),
        profile=Profile("default", "Default"),
        username="gpu-check",
        created_time=now,
        deadline=now + timedelta(minutes=15),
        values={},
        kit=KitSpec(image="nvcr.io/nvidia/omniverse/usd-viewer:107.3.2", gpus=1),
    )


def main() -> int:
    setting = os.environ.get("OVAS_DOCKER_GPUS", "auto")
    found = inventory(setting)
    print(f"GPU inventory (OVAS_DOCKER_GPUS={setting}), from {found.source}:")
    if not found.gpus:
        print("  no GPU: ovas would refuse every session that asks for one, saying so.")
        print("gpu_check: no NVIDIA GPU found on this host; nothing more to check.")
        return 0
    for gpu in found.gpus:
        print(f"  {gpu.describe()}")

    ledger = GpuLedger(found)
    held: set[str] = set()
    for number in range(1, len(found.gpus) + 1):
        request = one_gpu_request(number)
        gpu = ledger.candidates(request.kit.gpus, held)[0]  # the one a claim takes first
        if gpu.ids & held:
            print(f"gpu_check: FAILED, {gpu.describe()} was given twice", file=sys.stderr)
            return 1
        held |= gpu.ids
        spec = containers.container_spec(request, [gpu.device_id])
        _, host = containers.create_arguments(spec)
        print(f"session {number}: given {gpu.describe()}")
        print(f"  its container's device request: {host['device_requests']}")

    try:
        extra = ledger.candidates(1, held)
    except CapacityExceeded as refusal:
        print(f"session {len(found.gpus) + 1}: refused (HTTP {refusal.http_status}): {refusal}")
    else:
        print(f"gpu_check: FAILED, a session got {extra[0].describe()} though all were held")
        return 1
    if "--docker" not in sys.argv[1:]:
        return 0
    try:
        return on_docker(len(found.gpus))
    except OvasError as exc:
        print(f"gpu_check: {exc.message}", file=sys.stderr)
        return 1


def on_docker(count: int) -> int:
    """Start `count` + 1 one-GPU stand-in sessions on the Docker engine (DOCKER_HOST)."""
    from dataclasses import replace

    from backends.docker import DockerBackend
    from ovas.catalog_files import FileCatalog
    from ovas.testing import make_request, service_for, wait_for

    catalog = FileCatalog(Path(__file__).resolve().parents[1] / "config/catalog")
    backend = DockerBackend(catalog, gpus=os.environ.get("OVAS_DOCKER_GPUS", "auto"))
    sessions = service_for(backend)
    started, status = [], 0
    print(f"On the Docker engine at {backend.engine.url}:")
    try:
        for number in range(1, count + 2):
            request = make_request(catalog, app_id="kit-standin", profile_id="standin")
            request = replace(request, kit=replace(request.kit, gpus=1))
            try:
                session_id = backend.start(request).record.id
            except CapacityExceeded as refusal:
                print(f"  session {number}: refused (HTTP {refusal.http_status}): {refusal}")
                return status if number == count + 1 else 1
            started.append(session_id)
            session = wait_for(sessions, session_id, {"ready", "failed", "ended"}, timeout=60)
            kinds = (containers.CONTAINER, containers.PENDING)
            (record, *_) = [
                s
                for s in backend.engine.summaries(session_id)
                if s["Labels"].get(containers.RECORD) in kinds
            ]
            gpu = record["Labels"][containers.GPUS]
            print(f"  session {number}: {session.state.value} with GPU {gpu}: {session.message}")
            if not session.ready:
                status = 1
        print("gpu_check: FAILED, no session was refused though every GPU was held")
        return 1
    finally:
        for session_id in started:
            backend.stop(session_id)
        backend.close()


if __name__ == "__main__":
    sys.exit(main())
