"""A Kubernetes API to test against: the `ClusterEmulator` with its `FakeCluster`, served
over real HTTP on 127.0.0.1 from a thread of its own, plus the kubeconfig that reaches it.

    with EmulatedCluster() as cluster:
        cluster.seed("ns", catalog_documents())
        backend = KubernetesBackend(namespace="ns", config_file=cluster.kubeconfig)
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import kmock
import yaml
from support.kube_cluster import FakeCluster
from support.kube_emulator import ClusterEmulator

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "config" / "catalog"
T = TypeVar("T")


def catalog_documents(folder: Path = CATALOG) -> list[dict[str, Any]]:
    """The sample catalog's custom resources."""
    docs = []
    for path in sorted(folder.glob("*.yaml")):
        docs += [d for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_kubeconfig(path: Path, url: str, namespace: str = "default") -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "emulated", "cluster": {"server": url}}],
                "users": [{"name": "tester", "user": {"token": "emulated"}}],
                "contexts": [
                    {
                        "name": "emulated",
                        "context": {
                            "cluster": "emulated",
                            "user": "tester",
                            "namespace": namespace,
                        },
                    }
                ],
                "current-context": "emulated",
            }
        )
    )
    return path


class EmulatedCluster:
    """Runs the emulator and the fake cluster in a background event loop until closed."""

    def __init__(self, *, port: int | None = None, flux: bool = True, **cluster: Any):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.emulator = ClusterEmulator(flux=flux)
        self.cluster = FakeCluster(self.emulator, **cluster)
        self._folder = tempfile.TemporaryDirectory(prefix="ovas-kube-")
        self.kubeconfig = str(write_kubeconfig(Path(self._folder.name) / "config", self.url))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="kube-emulator", daemon=True)

    def __enter__(self) -> EmulatedCluster:
        self._thread.start()
        self._ready.wait(10)
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # surfaced to __enter__ if it happens while starting
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator, port=self.port):
            runner = asyncio.create_task(self.cluster.run())
            self._ready.set()
            await self._stop.wait()
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner

    def close(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)
        self._folder.cleanup()

    def locked(self, fn: Callable[[], T]) -> T:
        """Run `fn` in the emulator's loop while holding its lock (for direct edits)."""

        async def call() -> T:
            async with self.emulator._lock:
                return fn()

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(10)

    def seed(self, namespace: str, documents: Iterable[dict[str, Any]]) -> None:
        """Create objects directly, as `kubectl apply` would have."""

        def create() -> None:
            for doc in documents:
                api = doc["apiVersion"]
                plural = PLURALS[doc["kind"]]
                resource = f"{api}/{plural}" if "/" in api else f"v1/{plural}"
                self.emulator.create(resource, namespace, doc)

        self.locked(create)

    def calls(self) -> int:
        """How many resource requests the API server has answered so far."""
        return len(self.emulator.calls())

    def objects(self, resource: str, namespace: str | None = None) -> list[dict[str, Any]]:
        return self.locked(lambda: [obj for _, obj in self.emulator.items(resource, namespace)])


PLURALS = {
    "Application": "applications",
    "ApplicationVersion": "applicationversions",
    "ApplicationProfile": "applicationprofiles",
    "Pod": "pods",
    "Service": "services",
    "ConfigMap": "configmaps",
    "ResourceQuota": "resourcequotas",
    "HelmRelease": "helmreleases",
    "WarmPool": "warmpools",
}
