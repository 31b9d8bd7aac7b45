"""A small Docker registry (the v2 HTTP API, read only) for pull tests: it serves one image,
taken from `docker save`, under any name, as slowly as a test asks.

Docker pulls from 127.0.0.1 over plain HTTP without configuration (loopback registries are
insecure-allowed by default), so no TLS is needed.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MANIFEST_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CHUNK = 16 * 1024


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """Serves the image in `saved` (a `docker save` tarball) at `<address>/<any name>:<any
    tag>`, with one more layer of `padding` random bytes, so that the engine has to download
    it even though it holds the original's layers. `rate` (bytes/second, None = full speed)
    may change while a pull runs; `gate`, while clear, holds every layer download."""

    def __init__(self, saved: bytes, rate: float | None = None, padding: int = 256 * 1024):
        self.padding = padding
        self.rate = rate
        self.gate = threading.Event()
        self.gate.set()
        self.blobs: dict[str, bytes] = {}
        self.manifest = self._load(saved)
        self.manifest_digest = _digest(self.manifest)
        self.pulled: list[str] = []  # the blobs served, in order
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.address = f"127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def image(self, name: str, tag: str = "1.0.0") -> str:
        return f"{self.address}/{name}:{tag}"

    def _load(self, saved: bytes) -> bytes:
        with tarfile.open(fileobj=io.BytesIO(saved)) as archive:
            (entry,) = json.loads(archive.extractfile("manifest.json").read())
            config = json.loads(archive.extractfile(entry["Config"]).read())
            tars = [archive.extractfile(path).read() for path in entry["Layers"]]
        tars.append(self._padding_layer())
        config["rootfs"]["diff_ids"].append(_digest(tars[-1]))
        config.setdefault("history", []).append({"created_by": "ovas test registry padding"})
        config = json.dumps(config).encode()
        layers = []
        for layer in tars:
            blob = gzip.compress(layer, compresslevel=1, mtime=0)
            self.blobs[_digest(blob)] = blob
            layers.append(
                {
                    "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                    "size": len(blob),
                    "digest": _digest(blob),
                }
            )
        self.blobs[_digest(config)] = config
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST_TYPE,
            "config": {
                "mediaType": "application/vnd.docker.container.image.v1+json",
                "size": len(config),
                "digest": _digest(config),
            },
            "layers": layers,
        }
        return json.dumps(manifest).encode()

    def _padding_layer(self) -> bytes:
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as archive:
            info = tarfile.TarInfo("padding")
            info.size = self.padding
            archive.addfile(info, io.BytesIO(os.urandom(self.padding)))
        return layer.getvalue()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()
        self.server.server_close()

    def _handler(self):
        registry = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_HEAD(self) -> None:
                self._answer(body=False)

            def do_GET(self) -> None:
                self._answer(body=True)

            def _send(self, status: int, data: bytes, kind: str, body: bool, **headers) -> None:
                self.send_response(status)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                if body:
                    self._write(data, slow=status == 200 and kind == "application/octet-stream")

            def _write(self, data: bytes, slow: bool) -> None:
                if slow:
                    registry.gate.wait()
                for start in range(0, len(data), CHUNK):
                    self.wfile.write(data[start : start + CHUNK])
                    if slow and registry.rate:
                        time.sleep(CHUNK / registry.rate)

            def _answer(self, body: bool) -> None:
                path = self.path.split("?")[0]
                if path in ("/v2", "/v2/"):
                    return self._send(200, b"{}", "application/json", body)
                manifest = re.match(r"^/v2/.+/manifests/[^/]+$", path)
                if manifest:
                    return self._send(
                        200,
                        registry.manifest,
                        MANIFEST_TYPE,
                        body,
                        Docker_Content_Digest=registry.manifest_digest,
                    )
                blob = re.match(r"^/v2/.+/blobs/(sha256:[0-9a-f]{64})$", path)
                if blob and blob.group(1) in registry.blobs:
                    registry.pulled.append(blob.group(1))
                    data = registry.blobs[blob.group(1)]
                    return self._send(
                        200,
                        data,
                        "application/octet-stream",
                        body,
                        Docker_Content_Digest=blob.group(1),
                    )
                error = {"errors": [{"code": "NAME_UNKNOWN", "message": "unknown"}]}
                return self._send(404, json.dumps(error).encode(), "application/json", body)

        return Handler
