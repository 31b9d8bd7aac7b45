"""What a profile asks beyond its container: its own pending limit (`ovas/max-pending`), and
OVAS's secure streaming: the TLS proxy (`streamingKit.envoy`, run by the chart in helmrelease
mode, refused in pod mode at start and in `catalog check`), and hostname route keys
`<session-id>.<base domain>` with `OVAS_KUBERNETES_BASE_DOMAIN`."""

from __future__ import annotations

import copy
from dataclasses import replace

import pytest
from support.kube_requests import wait_for

from backends.kubernetes import KubernetesBackend
from backends.kubernetes import objects as o
from kubernetes_backend.steps import (
    RELEASES,
    SERVICES,
    leftovers,
    of_session,
    record_of,
    request_for,
    wait_until,
)
from kubernetes_backend.steps import start as begin
from ovas.errors import ConfigurationError, InvalidInput
from ovas.models import Reason, SessionState
from ovas.testing import service_for

pytestmark = pytest.mark.kubernetes
MODES = ["pod", "helmrelease"]
ENVOY = {"envoy": {"image": {"repository": "envoyproxy/envoy", "tag": "v1.31"}}}


def with_profile(request, *, annotations=None, kit=None):
    """`request` for a copy of its profile with `annotations`, and `kit` in its values."""
    profile = request.profile
    values = copy.deepcopy(profile.chart_values)
    values["streamingKit"].update(kit or {})
    profile = replace(
        profile, annotations={**profile.annotations, **(annotations or {})}, chart_values=values
    )
    rendered = copy.deepcopy(request.values)
    rendered["streamingKit"].update(kit or {})
    return replace(request, profile=profile, values=rendered)


def test_a_profiles_pending_limit_is_the_sessions_start_deadline(make_backend, clock):
    sessions = service_for(make_backend())
    request = request_for(sessions.backend, {"nodeSelector": {"pool": "gpu"}})
    request = with_profile(request, annotations={"ovas/max-pending": "30"})
    begin(sessions, request)
    assert wait_until(lambda: "Waiting for a node: 0/3" in sessions.get(request.id).message)
    clock.advance(29)
    assert sessions.get(request.id).state is SessionState.CREATING
    clock.advance(1)
    failed = sessions.get(request.id)
    assert failed.reason is Reason.START_TIMEOUT
    assert failed.message.startswith(
        "The session was not ready within 30 seconds (Waiting for a node: 0/3 nodes are "
    )


def test_a_pending_limit_longer_than_the_start_timeout_changes_nothing(make_backend, cluster):
    sessions = service_for(make_backend())
    request = with_profile(request_for(sessions.backend), annotations={"ovas/max-pending": "9999"})
    begin(sessions, request)
    assert of_session(cluster, "v1/pods", request.id)
    assert record_of(cluster, request.id)[0].deadline == request.deadline


def test_a_pending_limit_that_is_not_seconds_is_refused(make_backend, cluster):
    backend = make_backend()
    request = with_profile(request_for(backend), annotations={"ovas/max-pending": "soon"})
    with pytest.raises(InvalidInput) as refused:
        backend.start(request)
    assert refused.value.message == (
        "Profile 'standin' cannot run in pod mode: ovas/max-pending: 'soon' is not a whole "
        "number of seconds from 0 to 31536000"
    )
    assert leftovers(cluster, request.id) == []


def test_a_tls_proxy_profile_is_refused_in_pod_mode(make_backend, cluster):
    backend = make_backend()
    request = with_profile(request_for(backend, capacity=3), kit=ENVOY)
    with pytest.raises(InvalidInput) as refused:
        backend.start(request)
    assert refused.value.field == "profile"
    assert refused.value.message == (
        "Profile 'standin' cannot run in pod mode: streamingKit.envoy: OVAS's TLS proxy runs "
        "only in helmrelease mode, where the session chart adds it; set "
        "OVAS_KUBERNETES_SESSION_MODE=helmrelease, or remove streamingKit.envoy to stream "
        "without TLS"
    )
    assert leftovers(cluster, request.id) == []  # no pod, no slot


def test_a_tls_proxy_profile_goes_to_the_chart_in_helmrelease_mode(make_backend, cluster):
    sessions = service_for(make_backend("helmrelease"))
    request = with_profile(request_for(sessions.backend), kit=ENVOY)
    begin(sessions, request)
    (release,) = of_session(cluster, RELEASES, request.id)
    assert release["spec"]["values"]["streamingKit"]["envoy"] == ENVOY["envoy"]


def test_catalog_check_reports_the_profiles_pod_mode_refuses(make_backend, cluster):
    document = {
        "apiVersion": "omniverse.nvidia.com/v1",
        "kind": "ApplicationProfile",
        "metadata": {"name": "secure", "annotations": {"ovas/max-pending": "-1"}},
        "spec": {
            "name": "Secure",
            "supportedApplications": [{"name": "*", "versions": ["*"]}],
            "chartValues": {"streamingKit": {"image": {"repository": "r"}, **ENVOY}},
        },
    }
    unlimited = copy.deepcopy(document)
    unlimited["metadata"] = {"name": "secure-tls"}
    cluster.seed("omni-streaming", [document, unlimited])
    assert make_backend("pod").catalog.problems == [
        "ApplicationProfile omni-streaming/secure: metadata.annotations.ovas/max-pending: '-1' "
        "is less than 0 (a whole number of seconds from 0 to 31536000)",
        "ApplicationProfile omni-streaming/secure-tls: streamingKit.envoy: OVAS's TLS proxy "
        "runs only in helmrelease mode, where the session chart adds it; set "
        "OVAS_KUBERNETES_SESSION_MODE=helmrelease, or remove streamingKit.envoy to stream "
        "without TLS",
    ]
    assert make_backend("helmrelease").catalog.problems == [
        "ApplicationProfile omni-streaming/secure: metadata.annotations.ovas/max-pending: '-1' "
        "is less than 0 (a whole number of seconds from 0 to 31536000)",
    ]
    # A profile the backend cannot run is served still (a start says why it refuses); one
    # with a duration out of range is not valid in any mode, so it is skipped.
    served = {p.id for p in make_backend().catalog.profiles()}
    assert "secure-tls" in served and "secure" not in served


@pytest.mark.parametrize("mode", MODES)
def test_a_base_domain_makes_the_route_key_the_sessions_hostname(make_backend, cluster, mode):
    sessions = service_for(make_backend(mode, base_domain="Streams.Example.com."))
    plain = service_for(make_backend(mode))
    session = begin(sessions, request_for(sessions.backend))
    ready = wait_for(sessions, session.id, {SessionState.READY})
    assert ready.host == f"{session.id}.streams.example.com"
    assert ready.routes == wait_for(plain, session.id, {SessionState.READY}).routes
    assert plain.get(session.id).host != ready.host  # the address itself, without a domain
    if mode == "pod":
        (service,) = of_session(cluster, SERVICES, session.id)
        assert service["metadata"]["annotations"][o.EXTERNAL_DNS] == ready.host


def test_a_base_domain_that_is_no_dns_name_is_a_configuration_error():
    with pytest.raises(ConfigurationError) as wrong:
        KubernetesBackend(base_domain="streams_example.com", config_file="/nonexistent")
    assert wrong.value.message == (
        "OVAS_KUBERNETES_BASE_DOMAIN: 'streams_example.com' is not a DNS name"
    )
