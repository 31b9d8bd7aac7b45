"""The connection to the Docker engine: made lazily from the environment (DOCKER_HOST,
DOCKER_TLS_VERIFY, DOCKER_CERT_PATH), dropped after a connection failure and made again on
the next call, so ovas starts without a daemon and recovers when it is back, unrestarted.
SDK exceptions are translated here into ovas errors."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tarfile
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import docker
import docker.errors
import requests.exceptions

from backends.docker import containers as c
from ovas.errors import BackendUnavailable, OvasError
from ovas.logs import output_lines

log = logging.getLogger(__name__)
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
CALL_TIMEOUT = 30  # seconds for one ordinary engine call
PULL_TIMEOUT = 600  # seconds a pull may go without a progress event
# What the SDK raises when the engine cannot be reached (APIError, a subclass of the first,
# is caught before these).
UNREACHABLE = (docker.errors.DockerException, requests.exceptions.RequestException, OSError)


# The Docker SDK reaches ssh:// engines through paramiko (its `ssh` extra), whether it speaks
# SSH itself or runs the system's ssh client (`use_ssh_client`).
SSH_MISSING = (
    "The Docker engine is at an ssh:// address (DOCKER_HOST), which needs the Python package "
    "paramiko: install ovas[docker] (it brings docker[ssh]) or `pip install paramiko`"
)


def _has_paramiko() -> bool:
    try:
        import paramiko  # noqa: F401
    except ImportError:
        return False
    return True


class EngineError(OvasError):
    """The engine answered an error ovas has no better word for."""

    default_message = "The Docker engine reported an error"


class PullFailed(Exception):
    """The engine refused the pull (unknown image, no access, bad reference)."""


class ImageMissing(Exception):
    """The engine does not hold the image a container was to be created from."""


class Engine:
    """One Docker engine, reached through clients built on demand."""

    def __init__(self, base_url: str | None = None):
        self._explicit_url = base_url
        self._lock = threading.RLock()  # re-entered when a failed connect drops the client
        self._client: docker.APIClient | None = None
        self._cpus: int | None = None
        self._record_image = False

    @property
    def url(self) -> str:
        """The engine's address, as messages name it."""
        return self._explicit_url or os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET

    @property
    def address(self) -> str:
        """`url` without any user or password it names (`ssh://user@host` -> `ssh://host`),
        for logs and admins."""
        parts = urllib.parse.urlsplit(self.url)
        if not parts.netloc or "@" not in parts.netloc:
            return self.url
        return parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]).geturl()

    @property
    def is_local(self) -> bool:
        """True when the engine runs on this host (a unix socket, or TCP on a loopback
        address), so its published ports are this host's ports."""
        url = self.url
        if url.startswith("unix://"):
            return True
        host = urllib.parse.urlsplit(url).hostname or ""
        return url.startswith("tcp://") and host in ("127.0.0.1", "localhost", "::1")

    def new_client(self, timeout: float = CALL_TIMEOUT) -> docker.APIClient:
        """A fresh client. Raises `BackendUnavailable` when the engine cannot be reached
        (building one asks the engine for its API version), or when its address needs a
        transport that is not installed."""
        kwargs = docker.utils.kwargs_from_env()
        if self._explicit_url:
            kwargs["base_url"] = self._explicit_url
        if self.url.startswith("ssh://") and not _has_paramiko():
            raise BackendUnavailable(SSH_MISSING, where=self.url)
        with self.translated():
            return docker.APIClient(version="auto", timeout=timeout, max_pool_size=32, **kwargs)

    def api(self) -> docker.APIClient:
        """The shared client, made on first use or after a failure."""
        with self._lock:
            if self._client is None:
                self._client = self.new_client()
            return self._client

    @property
    def cpus(self) -> int:
        """How many CPUs the engine's host has (asked once per connection)."""
        if self._cpus is None:
            api = self.api()
            with self.translated():
                self._cpus = int(api.info().get("NCPU") or 0)
        return self._cpus

    def drop(self) -> None:
        """Forget the client, so the next call connects afresh."""
        with self._lock:
            client, self._client = self._client, None
            self._cpus = None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

    def unavailable(self, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(
            "The Docker engine cannot be reached; is the Docker daemon running?",
            detail=repr(exc),
            where=self.url,
        )

    @contextlib.contextmanager
    def translated(self) -> Iterator[None]:
        """Turn the SDK's failures into ovas errors: unreachable -> `BackendUnavailable`
        (and the client is dropped); any other engine error -> `EngineError`. Callers catch
        the SDK errors they expect (404, 409) inside this block."""
        try:
            yield
        except OvasError:
            raise
        except docker.errors.APIError as exc:
            raise EngineError(detail=str(exc)) from exc
        except UNREACHABLE as exc:
            self.drop()
            raise self.unavailable(exc) from exc

    def close(self) -> None:
        self.drop()

    # The calls ovas makes. Idempotent where that matters: creating what exists and
    # removing what is gone are not errors.

    def ping(self) -> None:
        api = self.api()
        with self.translated():
            api.ping()

    def summaries(self, session_id: str | None = None) -> list[dict[str, Any]]:
        """Our containers (all, or one session's) as `containers.list` summaries: one call."""
        label = f"{c.SESSION}={session_id}" if session_id else c.SESSION
        api = self.api()
        with self.translated():
            return api.containers(all=True, filters={"label": label})

    def image_present(self, image: str) -> bool:
        api = self.api()
        with self.translated():
            try:
                api.inspect_image(image)
                return True
            except docker.errors.ImageNotFound:
                return False

    def named(self, patterns: list[str]) -> list[dict[str, Any]]:
        """Containers, of any state, whose name ("/" first) matches any of the regular
        expressions `patterns`, as `containers.list` summaries: one call."""
        api = self.api()
        with self.translated():
            return api.containers(all=True, filters={"name": list(patterns)})

    def create_kit(self, spec: Mapping[str, Any]) -> tuple[str, str]:
        """Create a Kit container: (its id, '') or ('', the engine's reason for refusing);
        ('', '') when it exists already (another process created it). Raises
        `ImageMissing` when the engine does not hold the image."""
        api = self.api()
        create, host = c.create_arguments(spec)
        with self.translated():
            try:
                host_config = api.create_host_config(**host)
                return api.create_container(**create, host_config=host_config)["Id"], ""
            except docker.errors.ImageNotFound:
                raise ImageMissing(spec["image"]) from None
            except docker.errors.APIError as exc:
                if is_conflict(exc):
                    return "", ""
                return "", explanation(exc)

    def labelled(self, label: str, name: str | None = None) -> list[dict[str, Any]]:
        """Containers carrying `label` ("key" or "key=value"), of any state, as
        `containers.list` summaries: one call. `name`, when given, is a regular expression
        the engine matches against each name ("/" first), as `docker ps --filter name=`."""
        filters = {"label": label, **({"name": name} if name is not None else {})}
        api = self.api()
        with self.translated():
            return api.containers(all=True, filters=filters)

    def create_record(self, spec: Mapping[str, Any]) -> bool:
        """Create a record (a never-started container): True, or False when one of that
        name exists already (the engine refused a second: the claim is someone else's)."""
        return bool(self.make_record(spec))

    def make_record(self, spec: Mapping[str, Any]) -> str:
        """Create a record as `create_record` does: its container id, or '' when one of
        that name exists already."""
        api = self.api()
        create, _ = c.create_arguments(spec)
        with self.translated():
            for attempt in (1, 2):
                self._ensure_record_image(api)
                try:
                    return api.create_container(**create)["Id"]
                except docker.errors.ImageNotFound:
                    self._record_image = False  # someone removed it: make it again
                    if attempt == 2:
                        raise
                except docker.errors.APIError as exc:
                    if not is_conflict(exc):
                        raise
                    return ""
        return ""

    def _ensure_record_image(self, api: docker.APIClient) -> None:
        """The empty image records are made from; they are never started, so it needs no
        files. Built here from an empty archive, so it needs no registry."""
        if self._record_image:
            return
        try:
            api.inspect_image(c.RECORD_IMAGE)
        except docker.errors.ImageNotFound:
            empty = io.BytesIO()
            tarfile.open(fileobj=empty, mode="w").close()
            repository, tag = c.RECORD_IMAGE.split(":")
            api.import_image_from_data(empty.getvalue(), repository=repository, tag=tag)
        self._record_image = True

    def start(self, container_id: str) -> str:
        """Start a container: '' when it runs, or when it is gone or going (the session was
        stopped meanwhile), else the engine's reason."""
        api = self.api()
        with self.translated():
            try:
                api.start(container_id)
                return ""
            except docker.errors.NotFound:
                return ""
            except docker.errors.APIError as exc:
                reason = explanation(exc)
            # A start that loses the race with a forced removal fails too; that is no
            # failure of the session.
            try:
                state = api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:
                return ""
        return "" if state.get("Status") == "removing" or state.get("Dead") else reason

    def stop(self, container_id: str, grace: float) -> None:
        """Stop a container, killing it after `grace` seconds (gone already is fine)."""
        api = self.api()
        with self.translated(), contextlib.suppress(docker.errors.NotFound):
            api.stop(container_id, timeout=max(0, int(grace)))

    def remove(self, name_or_id: str) -> bool:
        """Force-remove a container; False if it was already gone (or going)."""
        api = self.api()
        with self.translated():
            try:
                api.remove_container(name_or_id, force=True)
                return True
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as exc:
                if is_conflict(exc):
                    return False
                raise

    def pull(self, image: str, on_event: Callable[[Mapping[str, Any]], None]) -> None:
        """Pull `image`, reporting each progress event. Raises `PullFailed` when the engine
        refuses or the registry fails, `BackendUnavailable` when the engine is gone."""
        client = self.new_client(timeout=PULL_TIMEOUT)
        try:
            with self.translated():
                try:
                    for event in client.pull(image, stream=True, decode=True):
                        if "error" in event:
                            raise PullFailed(str(event["error"]).strip())
                        on_event(event)
                except docker.errors.APIError as exc:
                    raise PullFailed(explanation(exc)) from None
        finally:
            client.close()

    def state(self, container_id: str) -> dict[str, Any]:
        """A container's `State` (Pid, OOMKilled, FinishedAt...); {} if it is gone."""
        api = self.api()
        with self.translated():
            try:
                return api.inspect_container(container_id)["State"]
            except docker.errors.NotFound:
                return {}

    def started(self) -> str:
        """When the engine last started, as its own clock says (RFC 3339), or "" where it
        cannot tell. It is the creation of its default `bridge` network, which dockerd
        deletes and makes again at every start, except when it restores running containers
        (live-restore, which stops none); a daemon run with `--bridge=none` has none."""
        api = self.api()
        with self.translated():
            try:
                return str(api.inspect_network("bridge").get("Created") or "")
            except docker.errors.NotFound:
                return ""

    def logs(self, container_id: str, tail: int) -> list[str]:
        """A container's last `tail` log lines, stdout and stderr, as `output_lines` cuts
        them; [] if it is gone."""
        api = self.api()
        with self.translated():
            try:
                text = api.logs(container_id, tail=tail).decode(errors="replace")
            except docker.errors.NotFound:
                return []
        return output_lines(text, tail)

    def run_inside(self, container_id: str, command: list[str]) -> str | None:
        """The output of `command` run in a running container (no shell), or None when it
        cannot be run there (no such program, the container ended)."""
        api = self.api()
        with self.translated():
            try:
                made = api.exec_create(container_id, command, stdout=True, stderr=False)
                output = api.exec_start(made["Id"])
                if api.exec_inspect(made["Id"]).get("ExitCode") not in (0, None):
                    return None
            except docker.errors.APIError:
                return None
        return output.decode(errors="replace")


def is_port_clash(reason: str) -> bool:
    """Whether a refused start is a host port taken by another program: Docker then moves
    on to the range's next port when asked again."""
    text = reason.lower()
    return "address already in use" in text or "port is already allocated" in text


def is_conflict(exc: docker.errors.APIError) -> bool:
    """409: a container of that name exists, or a removal is already in progress."""
    return exc.status_code == 409


def explanation(exc: docker.errors.APIError) -> str:
    """The engine's own words for an error, without the SDK's HTTP wrapping."""
    text = exc.explanation
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text or exc).strip()
