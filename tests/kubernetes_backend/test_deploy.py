"""The deployable base (config/deploy, mostly rendered from the Helm chart: test_helm.py keeps
it so): it renders with `kubectl kustomize`, every object is valid against the Kubernetes
schemas (kubernetes-validate, offline), every catalog object against our CRDs' schemas, the
signaling gateway runs beside the API with the settings both read, and the Role grants
exactly the calls the backend and the gateway make."""

from __future__ import annotations

import copy
import shutil
import subprocess
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from support.kube_server import catalog_documents

from kubernetes_backend.grants import assert_least_privilege
from ovas import create_app
from ovas.testing import FakeBackend

pytestmark = pytest.mark.kubernetes
ROOT = Path(__file__).resolve().parents[2]
BASE = ROOT / "config" / "deploy"
K8S_VERSION = "1.30"
SCHEMA = "openAPIV3Schema"


def render_in_python() -> list[dict]:
    """The base as kustomize renders it: it only lists resource files."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    assert set(kustomization) <= {"apiVersion", "kind", "resources"}, "keep the base plain"
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]
    return docs


@pytest.fixture(scope="module")
def rendered() -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        # config/system-deps.sh installs kubectl; without it the plain base is read directly.
        return render_in_python()
    out = subprocess.run(
        [kubectl, "kustomize", str(BASE)], check=True, capture_output=True, text=True, timeout=60
    ).stdout
    docs = [d for d in yaml.safe_load_all(out) if d]
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(docs, key=key) == sorted(render_in_python(), key=key)
    return docs


CLUSTER_WIDE = ("ClusterRole", "ClusterRoleBinding")  # reading Nodes by name


def by_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def test_every_builtin_object_is_valid(rendered):
    custom = {c["spec"]["names"]["kind"] for c in by_kind(rendered, "CustomResourceDefinition")}
    checked = 0
    for doc in rendered:
        if doc["kind"] in custom:
            continue
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        checked += 1
        if doc["kind"] not in ("Namespace", "CustomResourceDefinition", *CLUSTER_WIDE):
            assert doc["metadata"]["namespace"] == "omni-streaming", doc["metadata"]["name"]
    # 4 CRDs, namespace, service account, role, binding, the Nodes' cluster role and
    # binding, PDB; the API's deployment and service; the gateway's settings, deployment
    # and service.
    assert checked == 16


def _closed(schema: dict) -> dict:
    """The schema as the API server applies it: unknown fields are pruned unless preserved,
    so here they are errors."""
    schema = copy.deepcopy(schema)
    if schema.get("type") == "object" and "properties" in schema:
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        for name, sub in schema["properties"].items():
            schema["properties"][name] = _closed(sub)
    if isinstance(schema.get("items"), dict):
        schema["items"] = _closed(schema["items"])
    return schema


def test_every_catalog_object_is_valid_against_its_crd(rendered):
    schemas = {
        crd["spec"]["names"]["kind"]: _closed(crd["spec"]["versions"][0]["schema"][SCHEMA])
        for crd in by_kind(rendered, "CustomResourceDefinition")
    }
    assert set(schemas) == {"Application", "ApplicationVersion", "ApplicationProfile", "WarmPool"}
    custom = [d for d in rendered if d["kind"] in schemas]
    assert custom
    for doc in custom:
        jsonschema.validate(doc, schemas[doc["kind"]])
    broken = {**custom[0], "spec": {**custom[0]["spec"], "nmae": "typo"}}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schemas[broken["kind"]])


def test_a_warm_pool_is_checked_by_its_crd_as_the_catalog_checks_it(rendered):
    (crd,) = [
        c for c in by_kind(rendered, "CustomResourceDefinition") if c["spec"]["group"] == "ovas.io"
    ]
    schema = _closed(crd["spec"]["versions"][0]["schema"][SCHEMA])
    pool = {
        "apiVersion": "ovas.io/v1alpha1",
        "kind": "WarmPool",
        "metadata": {"name": "viewers"},
        "spec": {"application": "usd-viewer", "version": "latest", "profile": "default", "size": 2},
    }
    jsonschema.validate(pool, schema)
    jsonschema.validate({**pool, "spec": {**pool["spec"], "version": "107.3.2+build.1"}}, schema)
    for bad in ({"size": "2"}, {"size": -1}, {"version": "newest"}, {"profile": None}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**pool, "spec": {**pool["spec"], **bad}}, schema)


def test_the_sample_catalog_is_the_one_of_config_catalog(rendered):
    deployed = [d for d in rendered if d["apiVersion"] == "omniverse.nvidia.com/v1"]
    for doc in deployed:
        doc["metadata"].pop("namespace")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    assert sorted(deployed, key=key) == sorted(catalog_documents(), key=key)


def named(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in by_kind(docs, kind)}


def test_the_deployment_is_replicated_probed_and_locked_down(rendered):
    deployment = named(rendered, "Deployment")["ovas"]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["serviceAccountName"] == "ovas"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    env = {e["name"]: e for e in container["env"]}
    assert env["OVAS_BACKEND"]["value"] == "kubernetes"
    assert env["OVAS_BIND"]["value"].endswith(":8080")
    # One image for the API and the gateway (aiohttp is the `gateway` extra).
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "config/gunicorn.conf.py" in dockerfile
    assert ".[kubernetes,serve,gateway]" in dockerfile


def test_the_gateway_runs_locked_down_on_one_node_port_with_the_apis_settings(rendered):
    deployments = named(rendered, "Deployment")
    assert set(deployments) == {"ovas", "ovas-gateway"}
    gateway = deployments["ovas-gateway"]
    pod = gateway["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["command"]
    assert command[:2] == ["ovas", "gateway"]  # setup.cfg's console script
    assert "ovas = ovas.cli:main" in (ROOT / "setup.cfg").read_text()
    assert command[command.index("--host") + 1] == "0.0.0.0"
    (port,) = container["ports"]
    assert command[command.index("--port") + 1] == str(port["containerPort"])
    assert pod["serviceAccountName"] == "ovas"  # the API's Role: sessions and ConfigMaps
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert container["resources"]["limits"]["memory"]
    # The API and the gateway read one set of gateway settings, which ovas accepts, and
    # the same backend settings.
    settings = named(rendered, "ConfigMap")["ovas-gateway"]["data"]
    for deployment in deployments.values():
        (app,) = deployment["spec"]["template"]["spec"]["containers"]
        assert app["envFrom"] == [{"configMapRef": {"name": "ovas-gateway"}}]
    (api,) = deployments["ovas"]["spec"]["template"]["spec"]["containers"]
    assert [e for e in api["env"] if e["name"] != "OVAS_BIND"] == container["env"]
    config = {k.removeprefix("OVAS_"): v for k, v in settings.items()}
    assert config["GATEWAY_DOMAIN"] == "streams.example.com"  # the placeholder to replace
    app = create_app({"TESTING": True, **config}, backend=FakeBackend())
    assert app.extensions["ovas"].sessions.gateway.on
    # One Service, on a node port of every node (where the sessions' media ports are too),
    # which is the port clients are given.
    services = named(rendered, "Service")
    assert set(services) == {"ovas", "ovas-gateway"}
    spec = services["ovas-gateway"]["spec"]
    assert spec["type"] == "NodePort"
    assert spec["selector"].items() <= gateway["spec"]["template"]["metadata"]["labels"].items()
    assert (
        not spec["selector"].items()
        <= deployments["ovas"]["spec"]["template"]["metadata"]["labels"].items()
    )
    (exposed,) = spec["ports"]
    assert exposed["targetPort"] == port["name"]
    assert exposed["nodePort"] == int(settings["OVAS_GATEWAY_PUBLIC_PORT"])


def test_the_role_grants_exactly_what_the_backend_uses(rendered, make_backend, cluster):
    (role,) = by_kind(rendered, "Role")
    (nodes,) = by_kind(rendered, "ClusterRole")
    assert_least_privilege(role, make_backend, cluster, nodes)
    (binding,) = by_kind(rendered, "RoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"][0]["name"] == "ovas"
    (cluster_binding,) = by_kind(rendered, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == nodes["metadata"]["name"]
    assert cluster_binding["subjects"] == binding["subjects"]
