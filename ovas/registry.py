"""Finding backends: by name in the `ovas.backends` entry-point group, or as `module:Class`.

Only the selected backend is imported, so a missing optional dependency of another backend
never matters.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points

from ovas.backend import SessionBackend
from ovas.errors import ConfigurationError

GROUP = "ovas.backends"

# Which install command brings a module that a built-in backend needs.
_EXTRAS = {
    "docker": "pip install 'ovas[docker]'",
    "pynvml": "pip install 'ovas[docker]'",
    "kubernetes": "pip install 'ovas[kubernetes]'",
}


@dataclass(frozen=True)
class Installed:
    name: str
    target: str  # module:Class
    distribution: str


def installed() -> list[Installed]:
    """Every backend registered in the entry-point group, one row per registration."""
    rows = {}
    for ep in entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist else "?"
        rows[(ep.name, ep.value, dist)] = Installed(ep.name, ep.value, dist)
    return sorted(rows.values(), key=lambda r: (r.name, r.distribution))


def load(name: str) -> type[SessionBackend]:
    """The backend class for `name` (an entry-point name or `module:Class`).

    Raises `ConfigurationError` for an unknown name (listing the installed ones), a name
    that two distributions claim, a missing dependency (with the command installing it), or
    a target that is not a `SessionBackend`.
    """
    if ":" in name:
        return _checked(name, lambda: _import(name))
    candidates = {(r.target, r.distribution) for r in installed() if r.name == name}
    if not candidates:
        names = ", ".join(sorted({r.name for r in installed()})) or "none"
        raise ConfigurationError(
            f"Unknown backend '{name}'; installed backends: {names}. "
            "A backend is a name in the 'ovas.backends' entry-point group or 'module:Class'."
        )
    targets = {target for target, _ in candidates}
    if len(targets) > 1:
        claims = "; ".join(f"{dist} -> {target}" for target, dist in sorted(candidates))
        raise ConfigurationError(f"Backend name '{name}' is claimed by several packages: {claims}")
    (target,) = targets
    return _checked(name, lambda: EntryPoint(name, target, GROUP).load())


def _import(target: str):
    module_name, _, attr = target.partition(":")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _checked(name: str, loader) -> type[SessionBackend]:
    try:
        cls = loader()
    except ModuleNotFoundError as exc:
        top = (exc.name or "").split(".")[0]
        hint = _EXTRAS.get(top, f"pip install {top}")
        raise ConfigurationError(
            f"Backend '{name}' cannot be loaded: it needs the Python package '{top}', "
            f"which is not installed. Install it with: {hint}"
        ) from exc
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"Backend '{name}' cannot be loaded: {exc}") from exc
    if not (isinstance(cls, type) and issubclass(cls, SessionBackend)):
        raise ConfigurationError(
            f"Backend '{name}' is {cls!r}, not a subclass of ovas.SessionBackend"
        )
    return cls
