"""The chart installed, as far as a test can: its Role is the least the backend needs, the
environment it renders runs ovas (as the image runs it) against the emulated cluster, the
READMEs' values files install, and the kustomize base is the chart rendered."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml
from support.kube_server import free_port

from kubernetes_backend.chart import NAMESPACE, ROOT, container, env, one
from kubernetes_backend.grants import assert_least_privilege, granted, used

pytestmark = pytest.mark.kubernetes


def test_the_role_is_the_least_the_backend_needs(render, make_backend, cluster):
    docs = render()
    role = one(docs, "Role")
    nodes = one(docs, "ClusterRole")
    assert nodes["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get"]}]
    assert_least_privilege(role, make_backend, cluster, nodes)
    cluster_binding = one(docs, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == nodes["metadata"]["name"]
    binding = one(docs, "RoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    account = one(docs, "ServiceAccount")["metadata"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account["name"], "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("readme", ["README.md", "backends/kubernetes/README.md"])
def test_the_readmes_values_files_install(render, readme):
    text = (ROOT / readme).read_text()
    block = re.split(r"\n *YAML\n", text.split("cat > my-values.yaml <<'YAML'\n", 1)[1])[0]
    indent = len(block) - len(block.lstrip())
    values = yaml.safe_load("\n".join(line[indent:] for line in block.splitlines()))
    docs = render(values)
    assert container(docs)["image"].startswith(values["image"]["repository"] + ":")


def test_the_kustomize_base_is_the_chart_rendered(helm):
    """config/deploy's objects are the chart's defaults (config/tools/render_deploy.py), so
    the two install the same; test_deploy.py checks the base itself."""
    done = subprocess.run(
        [sys.executable, "config/tools/render_deploy.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _variables(rendered: dict[str, dict], namespace: str) -> dict[str, str]:
    """The container's environment as the kubelet would give it (a downward-API field
    resolved to the pod's namespace)."""
    out = {}
    for name, entry in rendered.items():
        if "value" in entry:
            out[name] = entry["value"]
        else:
            assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace", name
            out[name] = namespace
    return out


def _wait(url: str, server: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        assert server.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)


def test_the_rendered_environment_serves_the_catalog_and_a_session(render, cluster, tmp_path):
    """ovas started as the chart's container starts it (the image's command, the rendered
    environment; the emulated cluster's kubeconfig standing in for the in-cluster config,
    and loopback for 0.0.0.0) serves the catalog and runs a session from start to stop,
    calling only what the chart's Role grants."""
    port = free_port()
    docs = render(None, "--set", f"containerPort={port}")
    variables = _variables(env(docs), NAMESPACE)
    assert variables.pop("OVAS_BIND") == f"0.0.0.0:{port}"
    dockerfile = (ROOT / "Dockerfile").read_text()
    (cmd,) = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    command = json.loads(cmd.removeprefix("CMD "))
    assert command[0] == "gunicorn"
    environment = {
        **variables,
        "OVAS_BIND": f"127.0.0.1:{port}",
        "KUBECONFIG": cluster.kubeconfig,
        "PATH": os.environ["PATH"],
        "PYTHONPATH": str(ROOT),
    }
    log = tmp_path / "ovas.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", *command],
            cwd=ROOT,
            env=environment,
            stdout=out,
            stderr=out,
        )
    url = f"http://127.0.0.1:{port}"
    probes = container(docs)
    try:
        _wait(f"{url}{probes['readinessProbe']['httpGet']['path']}", server, log)
        assert requests.get(f"{url}{probes['livenessProbe']['httpGet']['path']}").ok
        http = requests.Session()
        apps = http.get(f"{url}/cfg/apps").json()["items"]
        assert {"kit-standin", "usd-viewer"} <= {a["id"] for a in apps}
        body = {"id": "kit-standin", "profile": "standin", "version": "1.0.0", "arguments": {}}
        started = http.post(f"{url}/streaming/stream", json=body)
        assert started.status_code == 202, started.text
        session = f"{url}/streaming/stream/{started.json()['id']}"
        deadline = time.monotonic() + 30
        while (answer := http.get(session)).status_code == 202:
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        assert answer.json()["status"]["condition"] == "ready", answer.text
        stopped = http.delete(f"{url}/streaming/stream", json={"id": started.json()["id"]})
        assert stopped.status_code == 204, stopped.text
        assert http.get(session).status_code == 404
    finally:
        server.terminate()
        server.wait(timeout=30)
    calls = used(cluster.emulator.calls())
    assert {("omniverse.nvidia.com", "applications", "list"), ("", "pods", "create")} <= calls
    assert calls - granted(one(docs, "Role")) == set(), "calls the chart's Role does not allow"
