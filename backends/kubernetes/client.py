"""The few Kubernetes API calls ovas makes, through one explicit `ApiClient` built lazily
(never the client library's global configuration).

Calls return plain dicts decoded from the API server's JSON (the typed models cost more than
the calls themselves at a thousand sessions). An unreachable or refusing API server raises
`BackendUnavailable`; 404 and 409 become `Missing` and `Taken`, for the caller to read;
an object the API server rejects as invalid raises `InvalidInput`; a refusal by admission is
told apart (see `_refused`). A failed start of the
client is retried on the next call, so ovas recovers without a restart.
"""

from __future__ import annotations

import gc
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from ovas.errors import BackendUnavailable, CapacityExceeded, InvalidInput, OvasError
from ovas.logs import output_lines


@dataclass(frozen=True)
class Kind:
    """A resource; `core` is its name in `CoreV1Api` method names. Namespaced unless
    `cluster` (a Node): of those, ovas only reads one by name (`Kube.get`)."""

    kind: str
    plural: str
    group: str = ""
    version: str = "v1"
    core: str | None = None
    cluster: bool = False


POD = Kind("Pod", "pods", core="pod")
SERVICE = Kind("Service", "services", core="service")
CONFIG_MAP = Kind("ConfigMap", "configmaps", core="config_map")
EVENT = Kind("Event", "events", core="event")
NODE = Kind("Node", "nodes", core="node", cluster=True)
HELM_RELEASE = Kind("HelmRelease", "helmreleases", "helm.toolkit.fluxcd.io", "v2")
# As client-go asks for it: metadata alone, or else the whole objects.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
LARGE = 256 * 1024  # bytes of a response worth decoding without the garbage collector


class Missing(Exception):
    """The object (or the resource itself) does not exist: HTTP 404."""


class Taken(Exception):
    """The object exists already, or changed since it was read: HTTP 409."""


def _status_message(exc: ApiException) -> str:
    try:
        return orjson.loads(exc.body or "{}").get("message") or exc.reason or ""
    except (TypeError, ValueError, AttributeError):
        return str(exc.reason or "")


# The API server's words for a create that a ResourceQuota refuses, and for a request that
# RBAC refuses the caller (kubernetes/apiserver: admission/plugin/resourcequota and
# endpoints/handlers/responsewriters "forbidden").
_QUOTA = re.compile(r"exceeded quota: (?P<quota>[^,]+)(?:, (?P<rest>.*))?")
_RBAC = re.compile(r'is forbidden: User "(?P<user>[^"]*)" cannot ')
QUOTA_RETRY_AFTER = 30  # seconds: a quota frees up as other sessions end


def _refused(status: int, what: str, message: str) -> OvasError:
    """The error for a 401 or 403: a full ResourceQuota is a capacity answer (503 with
    Retry-After, naming the quota); RBAC refusing ovas's own account, or credentials the API
    server does not accept, make the backend unavailable; any other admission refusal (a
    webhook, PodSecurity, a LimitRange) is the cluster refusing the session as the profile
    asks it, with the refuser's own words (422). The error's `detail`, which the log line of
    a 503 carries, is the API server's own words for this refusal alone (not the response's
    headers), so a quota's log line speaks of the quota, and only RBAC's of RBAC."""
    detail = f"the API server answered {status} on {what}: {message}"
    quota = _QUOTA.search(message)
    if status == 403 and quota:
        usage = f" ({quota['rest']})" if quota["rest"] else ""
        # What the quota was exceeded on: GPUs (`requests.nvidia.com/gpu`...) hold up only
        # starts that need GPUs (`ovas.queueing`).
        exceeded = (quota["rest"] or "").partition("used:")[0]
        return CapacityExceeded(
            f"The namespace's ResourceQuota {quota['quota']} has no room for the session"
            f"{usage}; try again later",
            retry_after=QUOTA_RETRY_AFTER,
            detail=detail,
            resource="gpu" if "gpu" in exceeded else "slot",
        )
    rbac = None if "admission webhook" in message else _RBAC.search(message)
    if status == 401 or rbac:
        check = "RBAC (its Role)" if rbac else "credentials"
        return BackendUnavailable(
            f"The Kubernetes API server refused ovas ({status}) on {what}: {message}; check "
            f"ovas's {check}",
            detail=detail,
        )
    return InvalidInput(f"The cluster refused the session's {what}: {message}", field="profile")


class Kube:
    """Namespaced API calls for one namespace, and the read of a Node. Safe to share
    between threads."""

    def __init__(
        self,
        namespace: str,
        *,
        config_file: str | None = None,
        context: str | None = None,
        api_client: k8s.ApiClient | None = None,
        timeout: tuple[float, float] = (3.05, 20.0),
    ):
        self.namespace = namespace
        self.config_file = config_file
        self.context = context
        self.timeout = timeout
        self._api_client = api_client
        self._lock = threading.Lock()

    # The client

    def _load(self) -> k8s.ApiClient:
        configuration = k8s.Configuration()
        try:
            if os.environ.get("KUBERNETES_SERVICE_HOST") and not self.config_file:
                k8s_config.load_incluster_config(client_configuration=configuration)
            else:
                path = self.config_file or os.environ.get("KUBECONFIG") or "~/.kube/config"
                k8s_config.load_kube_config(
                    config_file=os.path.expanduser(path),
                    context=self.context,
                    client_configuration=configuration,
                    persist_config=False,
                )
        except (ConfigException, OSError, TypeError, ValueError) as exc:
            raise BackendUnavailable(
                "ovas has no usable Kubernetes configuration (in-cluster service account or "
                f"KUBECONFIG): {exc}",
                detail=repr(exc),
            ) from None
        # One quick retry of a dropped connection; an unreachable server should fail fast.
        configuration.retries = 1
        return k8s.ApiClient(configuration)

    def api_client(self) -> k8s.ApiClient:
        with self._lock:
            if self._api_client is None:
                self._api_client = self._load()
            return self._api_client

    @property
    def host(self) -> str:
        client = self._api_client
        return client.configuration.host if client is not None else "(not connected)"

    def close(self) -> None:
        with self._lock:
            if self._api_client is not None:
                self._api_client.close()
                self._api_client = None

    # Calls

    def _send(self, what: str, method: Callable[..., Any], *args: Any, **kw: Any) -> bytes:
        """The raw body of one call, with the API server's refusals mapped (module docstring)."""
        try:
            response = method(*args, _preload_content=False, _request_timeout=self.timeout, **kw)
        except ApiException as exc:
            message = _status_message(exc)
            if exc.status == 404:
                raise Missing(message) from None
            if exc.status == 409:
                raise Taken(message) from None
            if exc.status in (400, 422):
                raise InvalidInput(
                    f"The cluster refused the session's {what}: {message}", field="profile"
                ) from None
            if exc.status in (401, 403):
                raise _refused(exc.status, what, message) from None
            raise BackendUnavailable(
                f"The Kubernetes API server failed on {what} ({exc.status}): {message}",
                detail=str(exc),
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendUnavailable(
                "The Kubernetes API server cannot be reached",
                detail=repr(exc),
                where=self.host,
            ) from None
        except ValueError as exc:
            # The client library checks bodies against its models before sending them.
            raise InvalidInput(
                f"The session's {what} is not valid: {exc}", field="profile"
            ) from None
        return response.data or b""

    def _call(self, what: str, method: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        data = self._send(what, method, *args, **kw)
        if not data:
            return {}
        if len(data) < LARGE or not gc.isenabled():
            return orjson.loads(data)
        # A list of a thousand pods is some 100,000 new containers: enough to set off full
        # collections of the whole heap while decoding, though JSON makes no cycles.
        gc.disable()
        try:
            return orjson.loads(data)
        finally:
            gc.enable()

    def _core(self, verb: str, kind: Kind) -> Callable[..., Any]:
        return getattr(k8s.CoreV1Api(self.api_client()), f"{verb}_namespaced_{kind.core}")

    def _custom(self, verb: str) -> Callable[..., Any]:
        return getattr(k8s.CustomObjectsApi(self.api_client()), f"{verb}_namespaced_custom_object")

    def _args(self, kind: Kind) -> tuple[str, ...]:
        return (kind.group, kind.version, self.namespace, kind.plural)

    def get(self, kind: Kind, name: str) -> dict[str, Any] | None:
        """The object, or None if it does not exist."""
        what = f"{kind.kind} {name}"
        try:
            if kind.cluster:
                read = getattr(k8s.CoreV1Api(self.api_client()), f"read_{kind.core}")
                return self._call(what, read, name)
            if kind.core:
                return self._call(what, self._core("read", kind), name, self.namespace)
            return self._call(what, self._custom("get"), *self._args(kind), name)
        except Missing:
            return None

    def list(
        self,
        kind: Kind,
        selector: str | None = None,
        *,
        fields: str | None = None,
        metadata_only: bool = False,
    ) -> list[dict[str, Any]]:
        """The objects matching the label selector and the field selector `fields` (one
        call). Raises `Missing` when the resource itself is unknown (a CRD not installed).
        `metadata_only`: ask for each object's metadata alone (a `PartialObjectMetadataList`),
        a fraction of the bytes; a server that cannot answer so sends the whole objects."""
        what = f"{kind.plural} list"
        kw: dict[str, Any] = {"label_selector": selector}
        if fields:
            kw["field_selector"] = fields
        if metadata_only:
            kw["_headers"] = {"Accept": METADATA_ONLY}
        if kind.core:
            found = self._call(what, self._core("list", kind), self.namespace, **kw)
        else:
            found = self._call(what, self._custom("list"), *self._args(kind), **kw)
        return found.get("items") or []

    def create(self, kind: Kind, body: dict[str, Any]) -> dict[str, Any]:
        """The created object. Raises `Taken` if one of that name exists."""
        what = kind.kind
        if kind.core:
            return self._call(what, self._core("create", kind), self.namespace, body)
        return self._call(what, self._custom("create"), *self._args(kind), body)

    def patch(self, kind: Kind, name: str, body: dict[str, Any]) -> dict[str, Any] | None:
        """Merge `body` into the object; None if it does not exist. A `resourceVersion` in
        `body["metadata"]` is a precondition: raises `Taken` if the object changed since."""
        what = f"{kind.kind} {name}"
        # Said outright: client versions differ in the patch type they pick for a dict.
        merge = {"_content_type": "application/merge-patch+json"}
        try:
            if kind.core:
                method = self._core("patch", kind)
                return self._call(what, method, name, self.namespace, body, **merge)
            return self._call(what, self._custom("patch"), *self._args(kind), name, body, **merge)
        except Missing:
            return None

    def replace(self, kind: Kind, name: str, body: dict[str, Any]) -> dict[str, Any]:
        """Replace the object as read (its `resourceVersion` included). Raises `Taken` if it
        changed since, `Missing` if it is gone."""
        what = f"{kind.kind} {name}"
        if kind.core:
            return self._call(what, self._core("replace", kind), name, self.namespace, body)
        return self._call(what, self._custom("replace"), *self._args(kind), name, body)

    def logs(self, pod: str, *, tail: int, container: str | None = None) -> list[str]:
        """The last `tail` lines a pod's container wrote (one call), as `output_lines` cuts
        them; [] when the pod is gone or its container has not started yet (the API server
        answers 400 then)."""
        what = f"log of Pod {pod}"
        kw: dict[str, Any] = {"tail_lines": max(0, tail)}
        if container:
            kw["container"] = container
        method = k8s.CoreV1Api(self.api_client()).read_namespaced_pod_log
        try:
            data = self._send(what, method, pod, self.namespace, **kw)
        except (Missing, InvalidInput):
            return []
        return output_lines(data.decode("utf-8", errors="replace"), max(0, tail))

    def delete(
        self, kind: Kind, name: str, *, now: bool = False, version: str | None = None
    ) -> bool:
        """Delete, letting the garbage collector remove what the object owns. False if it
        was not there. `now`: with no grace period (a pod the cluster is already taking
        away, whose kubelet may be gone). `version`: only while the object's
        resourceVersion is this one (a precondition); raises `Taken` if it changed."""
        what = f"{kind.kind} {name}"
        grace = {"grace_period_seconds": 0} if now else {}
        body = {}
        if version is not None:
            preconditions = k8s.V1Preconditions(resource_version=version)
            body["body"] = k8s.V1DeleteOptions(preconditions=preconditions)
        try:
            if kind.core:
                self._call(
                    what,
                    self._core("delete", kind),
                    name,
                    self.namespace,
                    propagation_policy="Background",
                    **grace,
                    **body,
                )
            else:
                self._call(
                    what,
                    self._custom("delete"),
                    *self._args(kind),
                    name,
                    propagation_policy="Background",
                    **body,
                )
            return True
        except Missing:
            return False

    def delete_all(self, kind: Kind, selector: str) -> None:
        """Delete every object matching the label selector (one call)."""
        what = f"{kind.plural} collection"
        try:
            if kind.core:
                self._call(
                    what,
                    getattr(
                        k8s.CoreV1Api(self.api_client()),
                        f"delete_collection_namespaced_{kind.core}",
                    ),
                    self.namespace,
                    label_selector=selector,
                )
            else:
                self._call(
                    what,
                    self._custom("delete_collection"),
                    *self._args(kind),
                    label_selector=selector,
                )
        except Missing:
            pass
