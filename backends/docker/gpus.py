"""The host's GPUs (the inventory) and which of them sessions hold (the ledger).

The inventory comes from NVML (nvidia-ml-py), else from `nvidia-smi`, else is empty; the
setting OVAS_DOCKER_GPUS overrides it: `auto`, `none`, indexes/UUIDs such as `0,1`, or CDI
device names such as `nvidia.com/gpu=0,nvidia.com/gpu=1` (hosts whose NVIDIA Container
Toolkit is set up for the Container Device Interface, as `docker run --device` takes them).
The ledger keeps no state of its own: the caller passes the device ids that sessions hold
(read from their GPU claims, see `backends.docker.admission`), so it is rebuilt after every
restart for free. One session per GPU: a GPU is either free or held by exactly one session;
a CDI name is one such GPU, also `nvidia.com/gpu=all` (one session then holds them all).
"""

from __future__ import annotations

import logging
import re
import shutil
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from ovas.errors import CapacityExceeded, ConfigurationError, Unsatisfiable

log = logging.getLogger(__name__)


# A CDI device name, `vendor/class=name`, by the Container Device Interface's rules
# (container-device-interface, pkg/parser): vendor and class begin with a letter, the name
# with a letter or digit; each ends with a letter or digit; the name may also hold `:`.
_KIND = r"[A-Za-z](?:[A-Za-z0-9_.-]*[A-Za-z0-9])?"
_CDI = re.compile(rf"({_KIND}/{_KIND})=([A-Za-z0-9](?:[A-Za-z0-9_.:-]*[A-Za-z0-9])?)")
NVIDIA_GPU = "nvidia.com/gpu"  # the kind the NVIDIA Container Toolkit's CDI specs name


def is_cdi_name(device_id: str) -> bool:
    """Whether `device_id` is a CDI device name, which Docker's `cdi` driver takes."""
    return _CDI.fullmatch(device_id) is not None


@dataclass(frozen=True)
class Gpu:
    """One GPU: `device_id` is what a Docker DeviceRequest names: its CDI name when it was
    listed by one, else the UUID when known (it stays the same when device indexes change)."""

    index: int
    uuid: str = ""
    name: str = ""
    memory_bytes: int = 0
    cdi: str = ""

    @property
    def device_id(self) -> str:
        return self.cdi or self.uuid or str(self.index)

    @property
    def ids(self) -> set[str]:
        """Every id a container's label may use for this GPU."""
        if self.cdi:
            return {self.cdi}
        return {str(self.index), self.uuid} - {""}

    def describe(self) -> str:
        parts = [p for p in (self.name, _gib(self.memory_bytes), self.uuid) if p]
        return f"GPU {self.cdi or self.index}" + (f" ({', '.join(parts)})" if parts else "")


@dataclass(frozen=True)
class Inventory:
    """The GPUs ovas may hand out, and where that list came from (for messages)."""

    gpus: tuple[Gpu, ...]
    source: str


def _gib(size: int) -> str:
    return f"{size / 2**30:.0f} GiB" if size else ""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def nvml_gpus() -> list[Gpu]:
    """The GPUs NVML reports. Raises `RuntimeError` when NVML cannot be used."""
    try:
        import pynvml
    except ImportError as exc:
        raise RuntimeError("nvidia-ml-py is not installed") from exc
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        raise RuntimeError(f"NVML: {exc}") from exc
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append(
                Gpu(
                    index=index,
                    uuid=_text(pynvml.nvmlDeviceGetUUID(handle)),
                    name=_text(pynvml.nvmlDeviceGetName(handle)),
                    memory_bytes=int(memory.total),
                )
            )
        return gpus
    except pynvml.NVMLError as exc:
        raise RuntimeError(f"NVML: {exc}") from exc
    finally:
        pynvml.nvmlShutdown()


def parse_nvidia_smi(output: str) -> list[Gpu]:
    """Rows of `nvidia-smi --query-gpu=index,uuid,name,memory.total --format=csv,noheader,
    nounits` (memory in MiB) as GPUs."""
    gpus = []
    for line in output.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 4 or not fields[0].isdigit():
            continue
        memory = int(fields[3]) * 2**20 if fields[3].isdigit() else 0
        gpus.append(Gpu(int(fields[0]), fields[1], fields[2], memory))
    return gpus


def nvidia_smi_gpus() -> list[Gpu]:
    """The GPUs `nvidia-smi` reports. Raises `RuntimeError` when it cannot be run."""
    binary = shutil.which("nvidia-smi")
    if binary is None:
        raise RuntimeError("nvidia-smi is not on PATH")
    query = ["--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"]
    try:
        done = subprocess.run(
            [binary, *query], capture_output=True, text=True, timeout=20, check=True
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise RuntimeError(f"nvidia-smi: {exc}") from exc
    return parse_nvidia_smi(done.stdout)


def detect() -> Inventory:
    """The host's GPUs: NVML first, `nvidia-smi` second, none when neither works."""
    reasons = []
    for source, finder in (("NVML", nvml_gpus), ("nvidia-smi", nvidia_smi_gpus)):
        try:
            return Inventory(tuple(finder()), source)
        except RuntimeError as exc:
            reasons.append(str(exc))
    return Inventory((), "no NVIDIA GPU found (" + "; ".join(reasons) + ")")


def inventory(setting: str | None = "auto", detector=detect) -> Inventory:
    """The GPUs ovas may use under OVAS_DOCKER_GPUS (`auto`, `none`, `0,1` / UUIDs, or CDI
    names such as `nvidia.com/gpu=0`).

    Listed GPUs are described from detection where it works (an `nvidia.com/gpu` CDI name
    by the index or UUID it ends with), and used as given where it does not. Raises
    `ConfigurationError` for an entry that is none of these, and for a list that could give
    one GPU to two sessions: CDI names mixed with indexes/UUIDs, a GPU listed twice (also
    under two names detection tells apart), `<kind>=all` beside another device of its kind,
    or a MIG device (`nvidia.com/gpu=0:1`) beside its whole GPU.
    """
    raw = str(setting if setting is not None else "auto").strip()
    if raw.lower() == "auto" or raw == "":
        return detector()
    if raw.lower() == "none":
        return Inventory((), "OVAS_DOCKER_GPUS=none")
    detected = detector().gpus
    chosen: list[Gpu] = []
    for position, token in enumerate(t.strip() for t in raw.split(",") if t.strip()):
        cdi = _CDI.fullmatch(token)
        if cdi:
            kind, device = cdi.groups()
            ids = {device} if kind == NVIDIA_GPU else set()
            known = next((g for g in detected if g.ids & ids), None)
            chosen.append(replace(known, cdi=token) if known else Gpu(position, cdi=token))
            continue
        known = next((g for g in detected if token in g.ids), None)
        if known:
            chosen.append(known)
        elif token.isdigit():
            chosen.append(Gpu(int(token)))
        elif token.startswith(("GPU-", "MIG-")):
            chosen.append(Gpu(position, uuid=token))
        else:
            raise ConfigurationError(
                "OVAS_DOCKER_GPUS must be auto, none, GPU indexes/UUIDs such as 0,1, or CDI "
                f"device names such as nvidia.com/gpu=0; {token!r} is none of these"
            )
    _check_exclusive(chosen)
    return Inventory(tuple(chosen), f"OVAS_DOCKER_GPUS={raw}")


def _check_exclusive(gpus: list[Gpu]) -> None:
    """Refuse a list in which one GPU could be given to two sessions under two names."""
    if 0 < sum(1 for g in gpus if g.cdi) < len(gpus):
        raise ConfigurationError(
            "OVAS_DOCKER_GPUS names GPUs both by CDI name and by index/UUID; list them one "
            "way, as a GPU listed both ways could be given to two sessions"
        )
    seen: dict[object, str] = {}
    for gpu in gpus:
        # A GPU detection knows is the same GPU under any of its names.
        key = gpu.uuid or gpu.device_id
        if key in seen:
            raise ConfigurationError(
                f"OVAS_DOCKER_GPUS lists one GPU twice ({seen[key]} and {gpu.device_id})"
            )
        seen[key] = gpu.device_id
    names = [g.cdi.split("=", 1) for g in gpus if g.cdi]
    for kind, device in names:
        whole = device.split(":")[0]
        overlapping = [
            f"{k}={d}"
            for k, d in names
            if k == kind and d != device and (device == "all" or d == whole)
        ]
        if overlapping:
            raise ConfigurationError(
                f"OVAS_DOCKER_GPUS lists {kind}={device} and {overlapping[0]}, which share a "
                "GPU: two sessions could hold it at once; list one of them"
            )


class GpuLedger:
    """Which GPUs of an inventory are free, given the device ids sessions hold."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory

    @property
    def gpus(self) -> Sequence[Gpu]:
        return self.inventory.gpus

    def free(self, in_use: Iterable[str]) -> list[Gpu]:
        held = set(in_use)
        return [g for g in self.gpus if not (g.ids & held)]

    def candidates(self, count: int, in_use: Iterable[str]) -> list[Gpu]:
        """Every free GPU, lowest index first, when at least `count` are; [] for 0.

        Raises `CapacityExceeded` while too few are free, `Unsatisfiable` when the
        inventory holds fewer than `count` (see `refusal`). The caller claims them in
        turn; the claim, not this call, is the reservation."""
        if count <= 0:
            return []
        free = self.free(in_use)
        if len(free) >= count:
            return free
        raise self.refusal(count, free)

    def refusal(self, count: int, free: list[Gpu]) -> CapacityExceeded | Unsatisfiable:
        """The answer to a session asking for `count` GPUs when only `free` are: a retry
        later (`CapacityExceeded`, 503) while GPUs ovas may use are held by other sessions;
        `Unsatisfiable` (422) when there are fewer than `count` of them at all, which no
        wait changes. Without any GPU, it points to the stand-in Kit app."""
        asked = f"The profile asks for {count} GPU{'s' if count > 1 else ''}"
        if not self.gpus:
            return Unsatisfiable(
                f"{asked}, and this host has none that ovas may use "
                f"({self.inventory.source}). Without a GPU, try the stand-in Kit app of "
                'the sample catalog: build it with `make standin`, then start {"id": '
                '"kit-standin", "profile": "standin"}'
            )
        if count > len(self.gpus):
            listed = ", ".join(g.describe() for g in self.gpus)
            return Unsatisfiable(
                f"{asked}, and this host has only {len(self.gpus)} that ovas may use "
                f"({listed}); choose a profile asking for fewer"
            )
        listed = ", ".join(g.describe() for g in free) or "none"
        message = (
            f"{asked}; {len(free)} of the {len(self.gpus)} GPUs ovas may use "
            f"{'is' if len(free) == 1 else 'are'} free: {listed}"
        )
        return CapacityExceeded(message, retry_after=60, resource="gpu")
