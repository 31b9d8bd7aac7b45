"""The Helm chart (config/helm/ovas) as Helm renders it: it lints, every rendering is valid
against the Kubernetes schemas of the version the backend targets, its schema refuses typos,
every setting of ovas/config.py can be set through it, secrets come from Secrets, and an
upgrade changes only what its values change. test_helm_install.py runs what it renders."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import kubernetes_validate
import pytest
import yaml

from kubernetes_backend.chart import CHART, NAMESPACE, ROOT, container, env, one
from kubernetes_backend.test_deploy import K8S_VERSION
from ovas import config

pytestmark = pytest.mark.kubernetes


RENDERINGS = {
    "defaults": {},
    "helmrelease": {"settings": {"KUBERNETES_SESSION_MODE": "helmrelease"}},
    "replicas": {"replicaCount": 5, "podDisruptionBudget": {"maxUnavailable": "40%"}},
    "secrets": {
        "secretSettings": {
            "values": {"AUTH_PROXY_SECRET": "s3cret", "JWT_AUDIENCE": "ovas"},
            "fromSecrets": {"JWT_ISSUER": {"name": "oidc", "key": "issuer"}},
        },
        "apiKeys": {"entries": [{"sha256": "ab" * 32, "user": "ci", "roles": ["streamer"]}]},
        "settings": {"AUTH": "apikey"},
    },
    "gateway": {
        "gateway": {
            "enabled": True,
            "domain": "streams.example.com",
            "tls": {"secretName": "streams-wildcard"},
            "secret": {"value": "s3cret"},
            "service": {"type": "LoadBalancer"},
        },
        "apiKeys": {"existingSecret": "keys"},
        "settings": {"AUTH": "apikey"},
    },
}


@pytest.mark.parametrize("name", RENDERINGS)
def test_the_chart_lints_strictly(helm, tmp_path, name):
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(RENDERINGS[name]))
    command = [helm, "lint", "--strict", str(CHART), "-f", str(values)]
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


CLUSTER_WIDE = ("ClusterRole", "ClusterRoleBinding")


@pytest.mark.parametrize("name", RENDERINGS)
def test_every_rendered_object_is_valid(render, name):
    docs = render(RENDERINGS[name])
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        if doc["kind"] not in ("CustomResourceDefinition", *CLUSTER_WIDE):
            assert doc["metadata"]["namespace"] == NAMESPACE, doc["metadata"]["name"]
    kinds = sorted(d["kind"] for d in docs)
    assert kinds.count("CustomResourceDefinition") == 4
    # Cluster-wide, only the read of a Node by name (test_helm_install.py checks its rules).
    assert kinds.count("ClusterRole") == kinds.count("ClusterRoleBinding") == 1
    assert {"ServiceAccount", "Role", "RoleBinding", "Service", "PodDisruptionBudget"} < set(kinds)


def test_the_modes_and_replicas_reach_the_deployment(render):
    assert env(render())["OVAS_KUBERNETES_SESSION_MODE"]["value"] == "pod"
    helmrelease = render(RENDERINGS["helmrelease"])
    assert env(helmrelease)["OVAS_KUBERNETES_SESSION_MODE"]["value"] == "helmrelease"
    replicas = render(RENDERINGS["replicas"])
    assert one(replicas, "Deployment")["spec"]["replicas"] == 5
    assert one(replicas, "PodDisruptionBudget")["spec"]["maxUnavailable"] == "40%"


def test_the_deployment_is_probed_and_locked_down(render):
    docs = render()
    pod = one(docs, "Deployment")["spec"]["template"]["spec"]
    ovas = container(docs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert ovas["securityContext"]["readOnlyRootFilesystem"] is True
    assert ovas["securityContext"]["allowPrivilegeEscalation"] is False
    assert ovas["livenessProbe"]["httpGet"]["path"] == "/health"
    assert ovas["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert ovas["resources"]["limits"]["memory"] == "512Mi"
    assert env(docs)["OVAS_KUBERNETES_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.namespace"
    )


@pytest.mark.parametrize(
    "flag, named",
    [
        ("replicaCount=two", "replicaCount"),
        ("settings.SESSION_IDLE_TIMEOUT=soon", "settings.SESSION_IDLE_TIMEOUT"),
        ("settings.SESSION_IDLE_TIMEOUT=31536001", "settings.SESSION_IDLE_TIMEOUT"),
        ("settings.EDITING_ENABLED=maybe", "settings.EDITING_ENABLED"),
        ("settings.SESION_IDLE_TIMEOUT=600", "SESION_IDLE_TIMEOUT"),
        ("secretSettings.values.NOT_A_SETTING=x", "NOT_A_SETTING"),
        ("image.tagg=1.0", "tagg"),
        ("service.type=Ingress", "service.type"),
        ("gateway.auth=open", "gateway.auth"),
        ("gateway.maxClients=0", "gateway.maxClients"),
        ("gateway.domain=Streams_Example", "gateway.domain"),
        ("gateway.service.nodePort=8443", "gateway.service.nodePort"),
        ("gateway.replicas=2", "replicas"),
    ],
)
def test_the_schema_refuses_a_typo_naming_it(render, flag, named):
    refused = render(None, "--set", flag, check=False)
    assert refused.returncode != 0
    assert named in refused.stderr and "values don't meet the specifications" in refused.stderr


def test_the_schema_takes_the_settings_of_config_py():
    """As the README's table is checked: the settings part of values.schema.json is what
    config/tools/chart_schema.py writes from ovas/config.py's SETTINGS."""
    done = subprocess.run(
        [sys.executable, "config/tools/chart_schema.py", "--check"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    schema = json.loads((CHART / "values.schema.json").read_text())
    chart_names = set(schema["definitions"]["settings"]["properties"])
    assert chart_names == {s.name.removeprefix("OVAS_") for s in config.SETTINGS}


def _sample(setting: config.Setting) -> Any:
    name = setting.name.removeprefix("OVAS_")
    if name in config.BOOLEANS:
        return True
    if setting.bounds is not None:
        return setting.bounds.high  # the largest: no 3.1536e+07 on its way through Helm
    return f"text of {name}"


def test_every_setting_becomes_its_variable(render):
    every = {s.name.removeprefix("OVAS_"): _sample(s) for s in config.SETTINGS}
    rendered = env(render({"settings": every}))
    assert set(rendered) == {s.name for s in config.SETTINGS}
    for setting in config.SETTINGS:
        value = _sample(setting)
        text = str(value).lower() if isinstance(value, bool) else str(value)
        assert rendered[setting.name] == {"name": setting.name, "value": text}
    one_flag = render(None, "--set", "settings.SESSION_IDLE_TIMEOUT=600")
    assert env(one_flag)["OVAS_SESSION_IDLE_TIMEOUT"]["value"] == "600"


def test_secret_settings_and_api_keys_come_from_secrets(render):
    docs = render(RENDERINGS["secrets"])
    secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    assert secrets["ovas-settings"]["stringData"] == {
        "AUTH_PROXY_SECRET": "s3cret",
        "JWT_AUDIENCE": "ovas",
    }
    entries = yaml.safe_load(secrets["ovas-apikeys"]["stringData"]["apikeys.yaml"])
    assert entries == RENDERINGS["secrets"]["apiKeys"]["entries"]
    variables = env(docs)
    assert variables["OVAS_AUTH_PROXY_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "ovas-settings",
        "key": "AUTH_PROXY_SECRET",
    }
    assert "value" not in variables["OVAS_AUTH_PROXY_SECRET"]
    assert variables["OVAS_JWT_ISSUER"]["valueFrom"]["secretKeyRef"] == {
        "name": "oidc",
        "key": "issuer",
    }
    path = variables["OVAS_APIKEYS_FILE"]["value"]
    (mount,) = [m for m in container(docs)["volumeMounts"] if m["name"] == "apikeys"]
    assert path == f"{mount['mountPath']}/apikeys.yaml"
    named = render({"apiKeys": {"existingSecret": "my-keys"}})
    (volume,) = [
        v
        for v in one(named, "Deployment")["spec"]["template"]["spec"]["volumes"]
        if v["name"] == "apikeys"
    ]
    assert volume["secret"]["secretName"] == "my-keys"
    assert not [d for d in named if d["kind"] == "Secret"]


@pytest.mark.parametrize(
    "values, said",
    [
        (
            {
                "settings": {"JWT_AUDIENCE": "a"},
                "secretSettings": {"values": {"JWT_AUDIENCE": "b"}},
            },
            "settings.JWT_AUDIENCE is given twice",
        ),
        (
            {"settings": {"APIKEYS_FILE": "/k"}, "apiKeys": {"existingSecret": "keys"}},
            "settings.APIKEYS_FILE is set by apiKeys",
        ),
    ],
)
def test_a_setting_given_twice_is_refused(render, values, said):
    refused = render(values, check=False)
    assert refused.returncode != 0 and said in refused.stderr


def deployments(docs: list[dict]) -> dict[str, dict]:
    """Each Deployment's one container, by the Deployment's name."""
    return {
        d["metadata"]["name"]: d["spec"]["template"]["spec"]["containers"][0]
        for d in docs
        if d["kind"] == "Deployment"
    }


def test_the_gateway_runs_beside_the_api_with_the_settings_and_secret_they_share(render):
    docs = render(RENDERINGS["gateway"])
    containers = deployments(docs)
    assert set(containers) == {"ovas", "ovas-gateway"}
    gateway = containers["ovas-gateway"]
    assert gateway["command"] == ["ovas", "gateway", "--host", "0.0.0.0", "--port", "8443"]
    (settings,) = [d for d in docs if d["kind"] == "ConfigMap"]
    assert settings["data"] == {
        "OVAS_GATEWAY_DOMAIN": "streams.example.com",
        "OVAS_GATEWAY_PUBLIC_PORT": "443",  # the load balancer's port
        "OVAS_GATEWAY_AUTH": "token",
        "OVAS_GATEWAY_MAX_CLIENTS": "4",
    }
    (secret,) = [d for d in docs if d["kind"] == "Secret"]
    assert secret["stringData"] == {"secret": "s3cret"}
    for one_container in containers.values():
        assert one_container["envFrom"] == [
            {"configMapRef": {"name": settings["metadata"]["name"]}}
        ]
        variables = {e["name"]: e for e in one_container["env"]}
        assert variables["OVAS_GATEWAY_SECRET"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": "secret",
        }
        # The API's keys open a session's socket through the gateway too.
        assert variables["OVAS_APIKEYS_FILE"]["value"] == "/etc/ovas/apikeys/apikeys.yaml"
    variables = {e["name"]: e.get("value") for e in gateway["env"]}
    mounts = {m["name"]: m["mountPath"] for m in gateway["volumeMounts"]}
    assert variables["OVAS_GATEWAY_TLS_CERT"] == f"{mounts['tls']}/tls.crt"
    assert variables["OVAS_GATEWAY_TLS_KEY"] == f"{mounts['tls']}/tls.key"
    assert gateway["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    pods = {d["metadata"]["name"]: d["spec"]["template"] for d in docs if d["kind"] == "Deployment"}
    (tls,) = [v for v in pods["ovas-gateway"]["spec"]["volumes"] if v["name"] == "tls"]
    assert tls["secret"]["secretName"] == "streams-wildcard"
    # Both restart when a shared setting or the secret changes.
    sums = {name: pod["metadata"]["annotations"]["checksum/gateway"] for name, pod in pods.items()}
    assert len(set(sums.values())) == 1
    changed = {**RENDERINGS["gateway"]["gateway"], "secret": {"value": "other"}}
    again = render({**RENDERINGS["gateway"], "gateway": changed})
    resummed = {
        d["metadata"]["name"]: d["spec"]["template"]["metadata"]["annotations"]["checksum/gateway"]
        for d in again
        if d["kind"] == "Deployment"
    }
    assert set(resummed.values()).isdisjoint(sums.values())
    (service,) = [d for d in docs if d["kind"] == "Service" and d["metadata"]["name"] != "ovas"]
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["selector"]["app.kubernetes.io/component"] == "gateway"


def test_the_gateways_secret_is_made_named_or_left_to_the_ledger(render):
    on = {"enabled": True, "domain": "streams.example.com"}

    def secret_of(docs):
        """OVAS_GATEWAY_SECRET's entry, the same in the API and the gateway."""
        api, gateway = (
            {e["name"]: e for e in c["env"]}.get("OVAS_GATEWAY_SECRET")
            for c in deployments(docs).values()
        )
        assert api == gateway
        return api

    made = render({"gateway": on})
    (secret,) = [d for d in made if d["kind"] == "Secret"]
    assert len(secret["stringData"]["secret"]) == 48
    assert secret_of(made)["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    named = render({"gateway": {**on, "secret": {"existingSecret": "mine"}}})
    assert not [d for d in named if d["kind"] == "Secret"]
    assert secret_of(named)["valueFrom"]["secretKeyRef"] == {"name": "mine", "key": "secret"}
    ledger = render({"gateway": {**on, "secret": {"create": False}}})
    assert not [d for d in ledger if d["kind"] == "Secret"] and secret_of(ledger) is None
    node_port = render({"gateway": {**on, "service": {"nodePort": 31443}}})
    (settings,) = [d for d in node_port if d["kind"] == "ConfigMap"]
    assert settings["data"]["OVAS_GATEWAY_PUBLIC_PORT"] == "31443"


@pytest.mark.parametrize(
    "values, said",
    [
        ({"gateway": {"enabled": True}}, "gateway.domain is required"),
        (
            {
                "gateway": {"enabled": True, "domain": "streams.example.com"},
                "settings": {"GATEWAY_AUTH": "none"},
            },
            "settings.GATEWAY_AUTH is set by gateway",
        ),
        (
            {
                "gateway": {
                    "enabled": True,
                    "domain": "streams.example.com",
                    "secret": {"value": "a", "existingSecret": "b"},
                }
            },
            "give value or existingSecret",
        ),
    ],
)
def test_a_gateway_given_half_or_twice_is_refused(render, values, said):
    refused = render(values, check=False)
    assert refused.returncode != 0 and said in refused.stderr


def test_sessions_elsewhere_get_the_role_there(render):
    docs = render({"settings": {"KUBERNETES_NAMESPACE": "kit-sessions"}})
    assert one(docs, "Role")["metadata"]["namespace"] == "kit-sessions"
    binding = one(docs, "RoleBinding")
    assert binding["metadata"]["namespace"] == "kit-sessions"
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    assert env(docs)["OVAS_KUBERNETES_NAMESPACE"]["value"] == "kit-sessions"


def test_the_crds_and_service_monitor_are_optional(render):
    def crds(docs):
        return sorted(
            d["metadata"]["name"] for d in docs if d["kind"] == "CustomResourceDefinition"
        )

    assert crds(render({"crds": {"ovas": False}})) == ["warmpools.ovas.io"]
    assert crds(render({"crds": {"warmPool": False, "ovas": False}})) == []
    kept = [d for d in render() if d["kind"] == "CustomResourceDefinition"]
    assert {d["metadata"]["annotations"]["helm.sh/resource-policy"] for d in kept} == {"keep"}
    monitored = {"metrics": {"serviceMonitor": {"enabled": True}}}
    assert not [d for d in render(monitored) if d["kind"] == "ServiceMonitor"]
    with_crd = render(monitored, "--api-versions", "monitoring.coreos.com/v1/ServiceMonitor")
    monitor = one(with_crd, "ServiceMonitor")
    service = one(with_crd, "Service")
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert monitor["spec"]["endpoints"] == [{"port": "http", "path": "/metrics", "interval": "30s"}]


def changes(old: Any, new: Any, path: str = "") -> set[str]:
    """Dotted paths where `new` differs from `old` (a list of another length is one change)."""
    if isinstance(old, dict) and isinstance(new, dict):
        found: set[str] = set()
        for key in old.keys() | new.keys():
            found |= changes(old.get(key), new.get(key), f"{path}.{key}".lstrip("."))
        return found
    if isinstance(old, list) and isinstance(new, list) and len(old) == len(new):
        found = set()
        for i, (a, b) in enumerate(zip(old, new, strict=True)):
            found |= changes(a, b, f"{path}.{i}")
        return found
    return set() if old == new else {path}


def test_an_upgrade_changes_only_what_its_values_change(render):
    """`helm upgrade` from the defaults to another values file: a diff of the two renderings."""
    before = {(d["kind"], d["metadata"]["name"]): d for d in render()}
    upgrade = {
        "replicaCount": 3,
        "settings": {"SESSION_IDLE_TIMEOUT": 600, "KUBERNETES_SESSION_MODE": "helmrelease"},
        "secretSettings": {"values": {"AUTH_PROXY_SECRET": "s3cret"}},
        "service": {"type": "LoadBalancer"},
    }
    after = {(d["kind"], d["metadata"]["name"]): d for d in render(upgrade)}
    assert after.keys() - before.keys() == {("Secret", "ovas-settings")}
    assert before.keys() - after.keys() == set()
    changed = {key: changes(before[key], after[key]) for key in before}
    pod = "spec.template"
    env_path = f"{pod}.spec.containers.0.env"
    assert {key: paths for key, paths in changed.items() if paths} == {
        ("Deployment", "ovas"): {
            "spec.replicas",
            env_path,  # one variable more: the secret's
            f"{pod}.metadata.annotations",  # its checksum, so pods restart for a new secret
        },
        ("Service", "ovas"): {"spec.type"},
    }
    old_env = {
        e["name"]: e
        for e in before[("Deployment", "ovas")]["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    new_env = env(list(after.values()))
    assert {n for n in new_env if new_env[n] != old_env.get(n)} == {
        "OVAS_SESSION_IDLE_TIMEOUT",
        "OVAS_KUBERNETES_SESSION_MODE",
        "OVAS_AUTH_PROXY_SECRET",
    }
