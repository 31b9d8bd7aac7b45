"""kmock's Kubernetes emulator with the API server semantics ovas relies on.

kmock 0.8 stores objects and serves them, but ignores label selectors, sets no uid or
resourceVersion, never collects owned objects, and knows neither PUT nor delete-collection.
`ClusterEmulator` keeps kmock's server, request log, object store and discovery, and adds:

- uid, resourceVersion, creationTimestamp and generateName on create; 409 AlreadyExists;
  422 for a name that is not a DNS subdomain (RFC 1123) of at most 253 characters;
- label selectors (equality and set-based) and field selectors on list and delete-collection;
- metadata-only lists (`PartialObjectMetadataList`), asked for in the Accept header;
- merge and JSON patches, and PUT with optimistic concurrency (409 Conflict on a stale
  resourceVersion);
- deletion preconditions (`preconditions.resourceVersion` and `.uid`: 409 Conflict when
  the object differs);
- finalizers and graceful deletion of pods (a deletionTimestamp; the fake kubelet removes
  them; `gracePeriodSeconds=0` removes one at once, also while it terminates), and the
  garbage collector's cascade over ownerReferences;
- cluster IPs and node ports for Services; 404 for resources the cluster does not serve;
- pod logs (`pods/<name>/log`, with `tailLines`), as plain text, from lines the fake kubelet
  writes with `write_log`;
- admission, refusing a request with 403 in the API server's words: RBAC (`forbidden`: the
  (verb, resource) pairs the caller's service account may not use), ResourceQuota objects
  (`pods`, and `requests.<resource>` counted from the containers' requests or limits), and
  validating webhooks (`webhooks`: name -> a function of the resource and the object,
  returning the webhook's reason to deny it, or None).

User reactions (`emulator['list pods'] << 500`) still come first, as in kmock.
"""

from __future__ import annotations

import copy
import itertools
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Any

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import apps, k8s

CORE = {
    "pods": "Pod",
    "services": "Service",
    "configmaps": "ConfigMap",
    "events": "Event",
    "resourcequotas": "ResourceQuota",
}
CUSTOM = {
    "omniverse.nvidia.com/v1/applications": "Application",
    "omniverse.nvidia.com/v1/applicationversions": "ApplicationVersion",
    "omniverse.nvidia.com/v1/applicationprofiles": "ApplicationProfile",
    "ovas.io/v1alpha1/warmpools": "WarmPool",
}
FLUX = {"helm.toolkit.fluxcd.io/v2/helmreleases": "HelmRelease"}
NODE_PORTS = range(30000, 32768)
# apimachinery's IsDNS1123Subdomain, which every object name here must pass.
_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
PARTIAL = {"apiVersion": "meta.k8s.io/v1", "kind": "PartialObjectMetadata"}


def error(status: int, reason: str, message: str) -> k8s.KubernetesError:
    return k8s.KubernetesError(status=status, reason=reason, message=message, details={})


def now_text() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


_REQUIREMENT = re.compile(
    r"\s*(?P<neg>!)?(?P<key>[A-Za-z0-9./_-]+)\s*"
    r"(?:(?P<op>==|=|!=)\s*(?P<value>[A-Za-z0-9._-]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<values>[^)]*)\))?\s*(,|$)"
)


def label_matcher(selector: str | None):
    """A predicate over a labels dict for a Kubernetes label selector."""
    checks = []
    text = (selector or "").strip()
    pos = 0
    while pos < len(text):
        match = _REQUIREMENT.match(text, pos)
        if not match or match.end() == pos:
            raise error(400, "BadRequest", f"unable to parse requirement: {text[pos:]!r}")
        pos = match.end()
        key, op, value = match["key"], match["op"], match["value"]
        if match["neg"]:
            checks.append(lambda labels, k=key: k not in labels)
        elif op in ("=", "=="):
            checks.append(lambda labels, k=key, v=value: labels.get(k) == v)
        elif op == "!=":
            checks.append(lambda labels, k=key, v=value: labels.get(k) != v)
        elif match["setop"]:
            values = {v.strip() for v in match["values"].split(",") if v.strip()}
            if match["setop"] == "in":
                checks.append(lambda labels, k=key, vs=values: labels.get(k) in vs)
            else:
                checks.append(lambda labels, k=key, vs=values: labels.get(k) not in vs)
        else:
            checks.append(lambda labels, k=key: k in labels)
    if len(checks) == 1:
        return checks[0]
    return lambda labels: all(check(labels) for check in checks)


def field_matcher(selector: str | None):
    checks = []
    for part in filter(None, (selector or "").split(",")):
        negate = "!=" in part
        path, _, value = part.replace("!=", "=").replace("==", "=").partition("=")

        def get(obj: dict, path: str = path.strip()) -> str:
            node: Any = obj
            for key in path.split("."):
                node = node.get(key) if isinstance(node, dict) else None
            return "" if node is None else str(node)

        wanted = value.strip()
        checks.append(lambda obj, g=get, v=wanted, n=negate: (g(obj) == v) != n)
    return lambda obj: all(check(obj) for check in checks)


def merge(base: Any, patch: Any) -> Any:
    """RFC 7386 merge patch (strategic merge patches are treated the same way)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(base) if isinstance(base, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge(result.get(key), value)
    return result


@attrs.define(kw_only=True)
class ClusterEmulator(k8s.KubernetesEmulator):
    """See the module's docstring. Mutating helpers expect `self._lock` to be held."""

    flux: bool = True
    graceful_pods: bool = True
    forbidden: set[tuple[str, str]] = attrs.field(factory=set)  # (verb, plural) refused
    webhooks: dict[str, Any] = attrs.field(factory=dict)  # name -> (plural, obj) -> reason
    account: str = "system:serviceaccount:omni-streaming:ovas"
    _revision: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _node_ports: set[int] = attrs.field(factory=set, init=False)
    _addresses: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _builtin: int = attrs.field(default=0, init=False)  # reactions kmock and we register
    _encoded: dict[tuple, tuple[str, bytes]] = attrs.field(factory=dict, init=False)
    # The live objects by (resource, namespace), as an API server's cache indexes them; kmock
    # keeps its own store too (its watches read it), written alongside.
    _live: dict[tuple, dict[tuple, dict[str, Any]]] = attrs.field(factory=dict, init=False)
    _logs: dict[tuple, list[str]] = attrs.field(factory=dict, init=False)  # by pod key

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for plural, kind in CORE.items():
            self.resources[f"v1/{plural}"] = kmock.ResourceInfo(kind=kind, namespaced=True)
        self.resources["v1/nodes"] = kmock.ResourceInfo(kind="Node", namespaced=False)
        for name, kind in {**CUSTOM, **(FLUX if self.flux else {})}.items():
            self.resources[name] = kmock.ResourceInfo(kind=kind, namespaced=True)
        served = (self**-1000)[lambda request: bool(request.resource and request.resource.plural)]
        served << self._serve
        self._builtin = len(self._payloads)

    async def _handle(self, request: kmock.Request):
        # Skip KubernetesEmulator's own bookkeeping of writes: `_serve` does it, with the
        # semantics above. kmock matches every reaction against its whole request history,
        # which grows with each request; with no user reactions, serve directly.
        direct = request.resource is not None and request.resource.plural
        if direct and len(self._payloads) == self._builtin and request.action != kmock.action.WATCH:
            answer = await self._serve(request)
            if isinstance(answer, kmock.Response) and isinstance(answer.payload, bytes):
                return aiohttp.web.Response(
                    body=answer.payload, status=answer.status or 200, content_type="text/plain"
                )
            if isinstance(answer, kmock.Response):
                return aiohttp.web.json_response(answer.payload, status=answer.status or 200)
            if isinstance(answer, bytes):
                return aiohttp.web.Response(body=answer, content_type="application/json")
            return aiohttp.web.json_response(answer)
        return await apps.RawHandler._handle(self, request)

    # Reading the store

    def key(self, resource: Any, namespace: str | None, name: str) -> tuple:
        return (kmock.resource(resource), namespace, name)

    def live(self, key: tuple) -> dict[str, Any] | None:
        return self._live.get(key[:2], {}).get(key)

    def items(self, resource: Any, namespace: str | None = None):
        """(key, object) of every live object of a resource, by namespace, each in the order
        it was last created."""
        wanted = kmock.resource(resource)
        for (kind, space), objects in list(self._live.items()):
            if kind == wanted and (namespace is None or space == namespace):
                yield from list(objects.items())

    def logs(self, key: tuple) -> list[str]:
        """What the pod's container has written so far."""
        return list(self._logs.get(key, []))

    def calls(self) -> list[kmock.Request]:
        """Every request to a resource (discovery left out), oldest first."""
        return [r for r in self._requests if r.resource is not None and r.resource.plural]

    # Writing the store

    def write_log(self, key: tuple, line: str) -> None:
        """A line the pod's container writes (a pod has one container here)."""
        self._logs.setdefault(key, []).append(line)

    def store(self, key: tuple, obj: dict[str, Any]) -> dict[str, Any]:
        """Save a new version of the object with a fresh resourceVersion."""
        obj = copy.deepcopy(obj)
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._revision))
        if key in self._objects:
            self._objects[key].create(obj)
        else:
            self._objects[key] = obj
        self._live.setdefault(key[:2], {})[key] = obj
        return obj

    def create(self, resource: Any, namespace: str | None, body: dict[str, Any]) -> dict:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if not meta.get("name"):
            raise error(422, "Invalid", "metadata.name: Required value")
        name = meta["name"]
        if not isinstance(name, str) or len(name) > 253 or not _SUBDOMAIN.fullmatch(name):
            raise error(
                422,
                "Invalid",
                f"metadata.name: Invalid value: {name!r}: a lowercase RFC 1123 subdomain must "
                "consist of lower case alphanumeric characters, '-' or '.', and must start "
                "and end with an alphanumeric character",
            )
        if namespace is not None:
            if meta.get("namespace", namespace) != namespace:
                raise error(400, "BadRequest", "the namespace of the object does not match")
            meta["namespace"] = namespace
        key = self.key(resource, namespace, meta["name"])
        if self.live(key) is not None:
            raise error(409, "AlreadyExists", f'{key[0].plural} "{meta["name"]}" already exists')
        for field in ("deletionTimestamp", "deletionGracePeriodSeconds", "resourceVersion"):
            meta.pop(field, None)
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=now_text(), generation=1)
        if key[0].plural == "services":
            self._allocate(obj)
        if key[0].plural == "pods":
            obj.setdefault("status", {"phase": "Pending"})
        return self.store(key, obj)

    def _allocate(self, service: dict[str, Any]) -> None:
        spec = service.setdefault("spec", {})
        n = next(self._addresses)
        spec.setdefault("clusterIP", f"10.96.{n // 250}.{n % 250 + 1}")
        if spec.get("type") not in ("NodePort", "LoadBalancer"):
            return
        for port in spec.get("ports") or []:
            wanted = port.get("nodePort")
            if wanted and wanted in self._node_ports:
                raise error(422, "Invalid", f"spec.ports.nodePort: {wanted} is already allocated")
            if not wanted:
                wanted = next(p for p in NODE_PORTS if p not in self._node_ports)
            self._node_ports.add(wanted)
            port["nodePort"] = wanted

    def update(self, key: tuple, new: dict[str, Any], *, expected: str | None = None) -> dict:
        """Replace the object; 409 if `expected` is not its resourceVersion."""
        current = self.live(key)
        if current is None:
            raise error(404, "NotFound", f'{key[0].plural} "{key[2]}" not found')
        meta = current["metadata"]
        if expected and expected != meta.get("resourceVersion"):
            raise error(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {key[0].plural} "{key[2]}": the object '
                "has been modified; please apply your changes to the latest version",
            )
        new = copy.deepcopy(new)
        new_meta = new.setdefault("metadata", {})
        for field in ("name", "namespace", "uid", "creationTimestamp", "deletionTimestamp"):
            if field in meta:
                new_meta[field] = meta[field]
        saved = self.store(key, new)
        if new_meta.get("deletionTimestamp") and not new_meta.get("finalizers"):
            self.remove(key)
        return saved

    def delete(
        self,
        key: tuple,
        *,
        grace: int | None = None,
        cascade: bool = True,
        preconditions: dict[str, Any] | None = None,
    ) -> dict:
        """Delete as the API server does: check the preconditions, mark objects with
        finalizers (and pods, which the kubelet removes), remove the rest and, unless
        orphaning, what they own."""
        current = self.live(key)
        if current is None:
            raise error(404, "NotFound", f'{key[0].plural} "{key[2]}" not found')
        meta = current["metadata"]
        for field, said in (("uid", "UID"), ("resourceVersion", "ResourceVersion")):
            wanted = (preconditions or {}).get(field)
            if wanted and wanted != meta.get(field):
                raise error(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {key[0].plural} "{key[2]}": Precondition '
                    f"failed: {said} in precondition: {wanted}, {said} in object meta: "
                    f"{meta.get(field)}",
                )
        if meta.get("deletionTimestamp") and not (grace == 0 and not meta.get("finalizers")):
            return current
        graceful = key[0].plural == "pods" and self.graceful_pods and grace != 0
        if meta.get("finalizers") or graceful:
            marked = copy.deepcopy(current)
            marked["metadata"]["deletionTimestamp"] = now_text()
            marked["metadata"]["deletionGracePeriodSeconds"] = 30 if grace is None else grace
            return self.store(key, marked)
        self.remove(key, cascade=cascade)
        return current

    def remove(self, key: tuple, *, cascade: bool = True) -> None:
        """Remove at once (the end of a graceful deletion), then collect the dependents."""
        current = self.live(key)
        if current is None:
            return
        self._objects[key].delete()
        del self._live[key[:2]][key]
        self._logs.pop(key, None)
        if key[0].plural == "services":
            for port in (current.get("spec") or {}).get("ports") or []:
                self._node_ports.discard(port.get("nodePort"))
        if not cascade:
            return
        uid = current["metadata"].get("uid")
        dependents = [
            item
            for (_, space), objs in self._live.items()
            if space == key[1]
            for item in objs.items()
        ]
        for other, obj in dependents:
            if self.live(other) is None:
                continue  # collected already, through another owner
            owners = (obj.get("metadata") or {}).get("ownerReferences") or []
            if any(ref.get("uid") == uid for ref in owners):
                self.delete(other)

    # Serving

    def _check_served(self, request: kmock.Request) -> None:
        if request.resource not in self.resources:
            raise error(404, "NotFound", "the server could not find the requested resource")

    def _selected(self, request: kmock.Request):
        labels = label_matcher(request.params.get("labelSelector"))
        fields = field_matcher(request.params.get("fieldSelector"))
        for key, obj in self.items(request.resource, request.namespace):
            if labels((obj.get("metadata") or {}).get("labels") or {}) and fields(obj):
                yield key, obj

    async def _serve(self, request: kmock.Request):
        if request.action == kmock.action.WATCH:
            raise NotImplementedError  # kmock's own watch serves it
        self._check_served(request)
        method = request.method.value
        body = request.data if isinstance(request.data, dict | list) else {}
        self._authorize(request, method)
        async with self._lock:
            if request.name is None:
                if method == "GET":
                    return self._list_body(request)
                if method == "POST":
                    self._admit(request.resource.plural, request.namespace, body)
                    created = self.create(request.resource, request.namespace, body)
                    return kmock.Response(status=201, payload=created)
                if method == "DELETE":
                    for key, _ in list(self._selected(request)):
                        self.delete(key, **self._options(request, body))
                    return {"kind": "Status", "apiVersion": "v1", "status": "Success"}
                raise error(405, "MethodNotAllowed", f"{method} on a collection")
            key = self.key(request.resource, request.namespace, request.name)
            current = self.live(key)
            if current is None:
                raise error(
                    404, "NotFound", f'{request.resource.plural} "{request.name}" not found'
                )
            if request.subresource == "log" and method == "GET":
                return self._log_body(key, request.params)
            if request.subresource:
                raise error(404, "NotFound", f"no subresource {request.subresource!r} here")
            if method == "GET":
                return current
            if method == "DELETE":
                return self.delete(key, **self._options(request, body))
            if method == "PUT":
                expected = (body.get("metadata") or {}).get("resourceVersion")
                return self.update(key, body, expected=expected)
            if method == "PATCH":
                content_type = request.headers.get("Content-Type", "")
                if "json-patch" in content_type or isinstance(body, list):
                    new = jsonpatch.apply_patch(current, body)
                else:
                    new = merge(current, body)
                expected = (
                    (body.get("metadata") or {}).get("resourceVersion")
                    if isinstance(body, dict)
                    else None
                )
                return self.update(key, new, expected=expected)
            raise error(405, "MethodNotAllowed", method)

    def _authorize(self, request: kmock.Request, method: str) -> None:
        """RBAC: 403 for a verb on a resource the service account is not granted."""
        named = request.name is not None
        verb = {
            "GET": "get" if named else "list",
            "POST": "create",
            "PUT": "update",
            "PATCH": "patch",
            "DELETE": "delete" if named else "deletecollection",
        }.get(method, method.lower())
        plural = request.resource.plural
        if (verb, plural) in self.forbidden:
            group = request.resource.group or ""
            raise error(
                403,
                "Forbidden",
                f'{plural} is forbidden: User "{self.account}" cannot {verb} resource '
                f'"{plural}" in API group "{group}" in the namespace "{request.namespace}"',
            )

    def _admit(self, plural: str, namespace: str | None, obj: dict[str, Any]) -> None:
        """The admission chain of a create: ResourceQuota, then the validating webhooks."""
        name = (obj.get("metadata") or {}).get("name", "")
        if plural == "pods":
            self._quota(namespace, name, obj)
        for webhook, check in self.webhooks.items():
            reason = check(plural, obj)
            if reason:
                raise error(
                    403, "Forbidden", f'admission webhook "{webhook}" denied the request: {reason}'
                )

    def _quota(self, namespace: str | None, name: str, pod: dict[str, Any]) -> None:
        asked = _usage(pod)
        used: dict[str, int] = {}
        for _, other in self.items("v1/pods", namespace):
            if (other.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                for key, value in _usage(other).items():
                    used[key] = used.get(key, 0) + value
        for _, quota in self.items("v1/resourcequotas", namespace):
            hard = {
                k: int(str(v)) for k, v in ((quota.get("spec") or {}).get("hard") or {}).items()
            }
            over = [k for k in hard if asked.get(k) and used.get(k, 0) + asked[k] > hard[k]]
            if over:

                def listed(values: dict[str, int], keys: list[str] = over) -> str:
                    return ",".join(f"{k}={values.get(k, 0)}" for k in keys)

                raise error(
                    403,
                    "Forbidden",
                    f'pods "{name}" is forbidden: exceeded quota: {quota["metadata"]["name"]}, '
                    f"requested: {listed(asked)}, used: {listed(used)}, limited: {listed(hard)}",
                )

    def _list_body(self, request: kmock.Request) -> bytes:
        """The list as JSON, from each object's JSON kept while it is unchanged (as an API
        server's cache does): a test double this slow at a thousand objects would measure
        itself rather than ovas. Asked for `as=PartialObjectMetadataList` in Accept, as
        client-go's metadata client asks, it sends each object's metadata alone."""
        partial = "as=PartialObjectMetadataList" in request.headers.get("Accept", "")
        encoded = []
        for key, obj in self._selected(request):
            revision = obj["metadata"].get("resourceVersion")
            cache_key = (key, partial)
            cached = self._encoded.get(cache_key)
            if cached is None or cached[0] != revision:
                shown = {**PARTIAL, "metadata": obj["metadata"]} if partial else obj
                cached = (revision, json.dumps(shown, separators=(",", ":")).encode())
                self._encoded[cache_key] = cached
            encoded.append(cached[1])
        if partial:
            head = {"apiVersion": PARTIAL["apiVersion"], "kind": "PartialObjectMetadataList"}
        else:
            kind = self.resources[request.resource].kind or ""
            head = {"apiVersion": _api_version(request.resource), "kind": f"{kind}List"}
        head["metadata"] = {"resourceVersion": str(next(self._revision))}
        return json.dumps(head)[:-1].encode() + b',"items":[' + b",".join(encoded) + b"]}"

    def _log_body(self, key: tuple, params: Any) -> kmock.Response:
        """The pod's log as the API server sends it: plain text, the last `tailLines`."""
        lines = self._logs.get(key, [])
        tail = params.get("tailLines")
        if tail is not None:
            lines = lines[-int(tail) :] if int(tail) > 0 else []
        text = "".join(f"{line}\n" for line in lines)
        return kmock.Response(status=200, payload=text.encode())

    @staticmethod
    def _options(request: kmock.Request, body: Any) -> dict[str, Any]:
        options = {**(body if isinstance(body, dict) else {}), **request.params}
        grace = options.get("gracePeriodSeconds")
        return {
            "grace": None if grace is None else int(grace),
            "cascade": options.get("propagationPolicy") != "Orphan",
            "preconditions": options.get("preconditions") or None,
        }


def _usage(pod: dict[str, Any]) -> dict[str, int]:
    """What a pod counts against a ResourceQuota: itself (`pods`), and each whole-number
    resource it requests (`requests.<name>`; an extended resource's request is its limit)."""
    usage = {"pods": 1}
    for container in (pod.get("spec") or {}).get("containers") or []:
        resources = container.get("resources") or {}
        asked = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
        for resource, value in asked.items():
            if str(value).isdigit():
                key = f"requests.{resource}"
                usage[key] = usage.get(key, 0) + int(str(value))
    return usage


def _api_version(resource: Any) -> str:
    return f"{resource.group}/{resource.version}" if resource.group else resource.version
