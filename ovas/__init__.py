"""ovas: the Omniverse Kit App Streaming API, with pluggable backends.

`ovas.create_app` builds the Flask app (`flask --app ovas run`). Importing the package
starts nothing.
"""

from ovas.backend import Catalog, SessionBackend
from ovas.models import Application, Profile, Route, Session, SessionRequest, SessionState, Version
from ovas.workloads import Backend, WorkloadBackend

__all__ = [
    "Application",
    "Backend",
    "Catalog",
    "Profile",
    "Route",
    "Session",
    "SessionBackend",
    "SessionRequest",
    "SessionState",
    "Version",
    "WorkloadBackend",
    "create_app",
]


def __getattr__(name: str):
    # Keeps `import ovas` (and plugins importing its interfaces) free of the web stack.
    if name == "create_app":
        from ovas.app import create_app

        return create_app
    raise AttributeError(name)
