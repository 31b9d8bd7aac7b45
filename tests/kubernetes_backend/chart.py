"""The Helm chart (config/helm/ovas) in tests: where it is, and the parts of a rendering the
tests read (conftest.py's `helm` and `render` fixtures render it)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "config" / "helm" / "ovas"
NAMESPACE = "omni-streaming"


def one(docs: list[dict], kind: str) -> dict:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


def container(docs: list[dict]) -> dict:
    """The API's container (the gateway's Deployment, when enabled, is another)."""
    (api,) = [
        d
        for d in docs
        if d["kind"] == "Deployment"
        and d["metadata"]["labels"]["app.kubernetes.io/component"] == "api"
    ]
    (ovas,) = api["spec"]["template"]["spec"]["containers"]
    return ovas


def env(docs: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in container(docs)["env"]}
