"""The Docker backend: each streaming session is one Kit container on a Docker engine.

`DockerBackend` is imported on first use, so the pure parts (container specs, the GPU
inventory and ledger, port ranges) can be used without the Docker SDK installed.
"""

__all__ = ["DockerBackend"]


def __getattr__(name: str):
    if name == "DockerBackend":
        from backends.docker.backend import DockerBackend

        return DockerBackend
    raise AttributeError(name)
