"""A Docker daemon for the tests and the benchmarks.

`find_or_start()` returns the daemon DOCKER_HOST (or the default socket) names when it
answers; otherwise, as root, it starts a private `dockerd` in a temporary folder: its own
data root, exec root, socket, pid file and network bridge, no iptables rules, so it touches
nothing of the host's and leaves nothing behind when closed. `NoDaemon` says why none could
be had.
"""

from __future__ import annotations

import contextlib
import ipaddress
import itertools
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

REPO = Path(__file__).resolve().parents[2]
DEFAULT_SOCKET = "unix:///var/run/docker.sock"
STANDIN_IMAGE = "ovas/kit-standin:1.0.0"


class NoDaemon(Exception):
    """No Docker daemon is reachable and none can be started here; the message says why."""


def answers(url: str, timeout: float = 3) -> bool:
    try:
        client = docker.APIClient(base_url=url, version="auto", timeout=timeout)
    except docker.errors.DockerException:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def _free_subnet() -> ipaddress.IPv4Network:
    """A /24 no route of this host uses, for a private daemon's bridge."""
    taken = []
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
        for word in routes.split():
            with contextlib.suppress(ValueError):
                if "/" in word:
                    taken.append(ipaddress.ip_network(word, strict=False))
    for third in range(200, 255):
        candidate = ipaddress.ip_network(f"10.{third}.{os.getpid() % 200}.0/24")
        if not any(candidate.overlaps(net) for net in taken):
            return candidate
    raise NoDaemon("no free 10.x.y.0/24 subnet for a private Docker bridge")


@dataclass
class Daemon:
    """A Docker daemon: `url` for DOCKER_HOST; `private` when this module started it."""

    url: str
    private: bool = False
    root: Path | None = None
    bridge: str = ""
    options: list[str] = field(default_factory=list)
    process: subprocess.Popen | None = None

    @property
    def log(self) -> Path | None:
        return self.root / "dockerd.log" if self.root else None

    def start(self, wait: float = 60) -> None:
        """Start (or start again, with the same data) a private daemon; wait until it
        answers. Raises NoDaemon with the end of its log when it does not come up."""
        assert self.private and self.root is not None
        command = [
            "dockerd",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--host={self.url}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--bridge={self.bridge}",
            "--iptables=false",
            "--ip-masq=false",
            *self.options,
        ]
        with open(self.log, "ab") as log:  # type: ignore[arg-type]
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NoDaemon(f"dockerd exited at start: {self.tail()}")
            if answers(self.url, timeout=2):
                return
            time.sleep(0.2)
        self.stop()
        raise NoDaemon(f"dockerd did not answer within {wait:.0f}s: {self.tail()}")

    def stop(self) -> None:
        """Stop a private daemon (its containers stop too, unless it runs live-restore)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def tail(self, lines: int = 8) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return " | ".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        """Stop a private daemon and remove all it made: mounts, bridge, folder."""
        if not self.private:
            return
        self.stop()
        # Kill what a live-restore daemon left running (containers, their shims, proxies).
        with contextlib.suppress(Exception):
            for pid in _pids_under(self.root):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)
        root = str(self.root)
        with open("/proc/self/mountinfo") as mounts:
            points = [line.split()[4] for line in mounts if line.split()[4].startswith(root)]
        for point in sorted(points, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        subprocess.run(["ip", "link", "delete", self.bridge], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _pids_under(root: Path | None) -> list[int]:
    """Processes whose command line names a path under `root` (shims, proxies...)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(root) in (entry / "cmdline").read_bytes().decode(errors="replace"):
                found.append(int(entry.name))
    return found


def start_private(name: str = "ovas", options: list[str] | None = None) -> Daemon:
    """Start a private dockerd (as root) with its own bridge. Raises NoDaemon."""
    if os.geteuid() != 0:
        raise NoDaemon("not root, so no private dockerd can be started")
    if shutil.which("dockerd") is None:
        raise NoDaemon("dockerd is not installed (make system-deps installs docker.io)")
    root = Path(tempfile.mkdtemp(prefix=f"{name}-dockerd-"))
    bridge = f"{name[:6]}{os.getpid() % 10000}{len(list(root.parent.glob(f'{name}-dockerd-*')))}"
    subnet = _free_subnet()
    gateway = f"{next(subnet.hosts())}/{subnet.prefixlen}"
    for step in (
        ["ip", "link", "add", "name", bridge, "type", "bridge"],
        ["ip", "addr", "add", gateway, "dev", bridge],
        ["ip", "link", "set", bridge, "up"],
    ):
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            shutil.rmtree(root, ignore_errors=True)
            subprocess.run(["ip", "link", "delete", bridge], capture_output=True)
            raise NoDaemon(f"cannot make a network bridge ({' '.join(step)}): {done.stderr}")
    daemon = Daemon(
        url=f"unix://{root}/docker.sock",
        private=True,
        root=root,
        bridge=bridge,
        options=list(options or []),
    )
    last = None
    # overlay2 is fast; vfs works where overlay mounts are refused (some sandboxes).
    for driver in ("overlay2", "vfs"):
        daemon.options = [*(options or []), f"--storage-driver={driver}"]
        try:
            daemon.start()
            return daemon
        except NoDaemon as exc:
            last = exc
            daemon.stop()
    daemon.close()
    raise NoDaemon(f"a private dockerd would not start: {last}")


def find_or_start(name: str = "ovas") -> Daemon:
    """The daemon DOCKER_HOST or the default socket names if it answers, else a private
    one. Raises NoDaemon saying why neither works."""
    url = os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET
    if answers(url):
        return Daemon(url=url)
    try:
        return start_private(name)
    except NoDaemon as exc:
        raise NoDaemon(f"no Docker daemon answers at {url}, and {exc}") from None


def _port_free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def free_ports(count: int) -> str:
    """A range `first-last` of `count` host ports that nothing holds now (TCP nor UDP),
    below Linux's ephemeral ports (32768+) so no outgoing connection takes one meanwhile,
    starting where another test run on this host is unlikely to look."""
    start = 30000 + (os.getpid() * 37) % 2000
    run, previous = 0, None
    for port in itertools.chain(range(start, 32700), range(30000, start)):
        contiguous = previous is not None and port == previous + 1
        run = (run + 1 if contiguous else 1) if _port_free(port) else 0
        previous = port
        if run == count:
            return f"{port - count + 1}-{port}"
    raise NoDaemon(f"no {count} free host ports in 30000-32699")


def build_standin(daemon: Daemon) -> subprocess.CompletedProcess:
    """Build the stand-in Kit image on the daemon with config/standin/build.sh; returns the
    finished build (its output). Raises `NoDaemon` when it fails."""
    done = subprocess.run(
        ["bash", str(REPO / "config/standin/build.sh")],
        env={**os.environ, "DOCKER_HOST": daemon.url},
        capture_output=True,
        text=True,
        timeout=300,
    )
    if done.returncode != 0:
        raise NoDaemon(f"the stand-in image did not build: {done.stderr.strip()[-600:]}")
    return done


def wait_running(client: docker.APIClient, name: str, timeout: float = 60) -> None:
    """Return once the container named `name` runs; an AssertionError after `timeout`
    seconds (polled every 0.2 s)."""
    deadline = time.monotonic() + timeout
    while not any(s["State"] == "running" for s in client.containers(filters={"name": name})):
        assert time.monotonic() < deadline, f"{name} is not running after {timeout:g} s"
        time.sleep(0.2)
