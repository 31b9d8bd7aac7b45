"""ovas served as an operator serves it, in a process of its own on a Docker daemon, for the
tests and benches that go through gunicorn, `ovas serve` or `flask run` over real HTTP: its
environment (`docker_env`), the stand-in catalog (`standin_catalog`), gunicorn's command
line (`gunicorn`), the process (`serving`) and the wait until it answers (`wait_answering`);
for a bench, the daemon and a scratch folder (`standin_daemon`)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from support import dockerd

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent  # this interpreter's scripts: gunicorn, ovas, flask


def standin_daemon(name: str, held: contextlib.ExitStack) -> tuple[dockerd.Daemon, Path]:
    """A Docker daemon (`dockerd.find_or_start(name)`) holding the stand-in Kit image, and a
    new scratch folder; closing `held` closes the daemon and removes the folder. Raises
    `dockerd.NoDaemon` when there is no daemon or the image does not build (what was taken
    is then still in `held`)."""
    daemon = dockerd.find_or_start(name)
    work = Path(tempfile.mkdtemp(prefix=f"{name}-"))
    held.callback(shutil.rmtree, work, ignore_errors=True)
    held.callback(daemon.close)
    dockerd.build_standin(daemon)
    return daemon, work


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free at the moment of asking."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def standin_catalog(folder: Path) -> Path:
    """`folder`, made here, holding the stand-in catalog (config/catalog/standin.yaml)."""
    folder.mkdir(parents=True)
    shutil.copy(REPO / "config/catalog/standin.yaml", folder)
    return folder


def docker_env(
    daemon_url: str, catalog: Path, port_range: str, *, home: Path | None = None, **settings: str
) -> dict[str, str]:
    """The environment (variable: value) of an ovas server on the Docker backend at
    `daemon_url` with no GPUs, the catalog folder `catalog` and host ports from `port_range`
    ("first-last"), then `settings` (such as `OVAS_SESSION_CAPACITY="2"`). Over this
    process's environment; with `home`, over a plain one instead: PATH of this interpreter's
    scripts and the system's, HOME=`home`, and this process's PYTHONPATH."""
    if home is None:
        base = dict(os.environ)
    else:
        base = {
            "PATH": f"{BIN}:/usr/bin:/bin",
            "HOME": str(home),
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
    return {
        **base,
        "DOCKER_HOST": daemon_url,
        "OVAS_BACKEND": "docker",
        "OVAS_CATALOG_PATH": str(catalog),
        "OVAS_DOCKER_PORT_RANGE": port_range,
        "OVAS_DOCKER_GPUS": "none",
        **settings,
    }


def gunicorn(port: int, workers: int) -> list[str]:
    """gunicorn's command line as production runs it (`-c config/gunicorn.conf.py`), with
    `workers` worker processes bound to 127.0.0.1:`port`. Run by this interpreter with
    `-m`, so the working folder (the repository root) comes first in its import path."""
    command = [sys.executable, "-m", "gunicorn", "-c", str(REPO / "config/gunicorn.conf.py")]
    return [*command, "-w", str(workers), "-b", f"127.0.0.1:{port}"]


@contextlib.contextmanager
def serving(command: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """`command` run from the repository root with exactly `env`, in a session of its own,
    its stdout and stderr written to the file `log` (a pipe nobody reads would fill and stall
    a server's workers). Ended with its children when the block ends: SIGTERM to its process
    group, SIGKILL after 30 s."""
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True
        )
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)


def tail(log: Path, lines: int = 20) -> str:
    """The last `lines` lines of a server's log."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


def wait_answering(url: str, process: subprocess.Popen, log: Path, limit: float = 60) -> None:
    """Polls `url` every 50 ms until it answers 200. Raises RuntimeError, with the end of
    `log`, when `process` exits first or `limit` seconds pass."""
    deadline = time.monotonic() + limit
    while True:
        with contextlib.suppress(requests.RequestException):
            if requests.get(url, timeout=2).status_code == 200:
                return
        if process.poll() is not None:
            raise RuntimeError(f"the server exited ({process.returncode}):\n{tail(log)}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {limit} s:\n{tail(log)}")
        time.sleep(0.05)
