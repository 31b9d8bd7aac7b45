"""Both OpenAPI documents, fuzzed with schemathesis: every answer is documented and matches.

Each operation gets valid and invalid requests (a fixed seed, so a run is repeatable), and
each answer must be no 5xx, a documented status, of the documented content type, and valid
against the documented schema. A failure here means the code or its documentation is wrong;
fix one of them, never this test.

Purely random ids would only ever meet 404s, so the generated path parameters and bodies are
mixed with ids that exist (the sample catalog's apps, versions and profiles; sessions started
before each test, in turn ready, starting and failed), which reaches the 200, 202, 410, 201,
204 and 409 answers too.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from ovas import create_app
from ovas.catalog_files import FileCatalog
from ovas.lifecycle import Mark, Observation, Stage
from ovas.models import SessionState
from ovas.testing import FakeBackend

ROOT = Path(__file__).resolve().parent.parent
SEED = 20_240_601
# Enough to find what is wrong in an operation; the 18 operations stay well under a minute.
MAX_EXAMPLES = 30


def status_explicitly_documented(ctx, response, case) -> None:
    """Like `status_code_conformance`, which passes any status when a `default` response is
    documented (flask-smorest adds one to every operation): the status must be listed."""
    if case.method.upper() != case.operation.method.upper():
        return  # a method the operation lacks: not this operation's answer
    listed = {str(code) for code in case.operation.responses.status_codes} - {"default"}
    if str(response.status_code) not in listed:
        raise AssertionError(
            f"{case.method} {case.formatted_path} answered {response.status_code}, "
            f"documented: {', '.join(sorted(listed))}"
        )


CHECKS = [
    schemathesis.checks.not_a_server_error,
    schemathesis.checks.status_code_conformance,
    status_explicitly_documented,
    schemathesis.checks.content_type_conformance,
    schemathesis.checks.response_schema_conformance,
]

_CATALOG = FileCatalog(ROOT / "config" / "catalog")
APPS = sorted(a.id for a in _CATALOG.applications())
VERSIONS = sorted({v.version for app in APPS for v in _CATALOG.versions(app)})
PROFILES = sorted(p.id for p in _CATALOG.profiles())
# Sessions of the current test's app (filled by its fixture, read when a case is drawn).
LIVE_SESSIONS: list[str] = []


class MixedBackend(FakeBackend):
    """Sessions in turn ready, starting, failed and ended, so that every state is answered."""

    FATES = (SessionState.READY, SessionState.CREATING, SessionState.FAILED, SessionState.ENDED)

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self._fates: dict[str, SessionState] = {}

    def start(self, request):
        fate = self._fates.setdefault(request.id, self.FATES[len(self._fates) % 4])
        started = super().start(request)
        if fate is SessionState.ENDED:
            self.mark(request.id, Mark.READY, self.now())
            return self.observe(request.id)
        return started

    def observe_workload(self, session_id):
        return self._fated(session_id, super().observe_workload(session_id))

    def observe_workloads(self):
        return {sid: self._fated(sid, seen) for sid, seen in super().observe_workloads().items()}

    def _fated(self, session_id, seen):
        fate = self._fates.get(session_id, SessionState.READY)
        if seen is None or fate is SessionState.READY:
            return seen
        if fate is SessionState.CREATING:
            return Observation(Stage.WAITING, detail="Pulling the image")
        return Observation(Stage.EXITED, exit_code=137 if fate is SessionState.FAILED else 0)


# Who calls: anyone (`OVAS_AUTH=none`, the default); a gateway-vouched viewer, whose reads
# are answered and whose writes are refused (403); and a caller without credentials (401).
CALLERS = {
    "open": ({}, {}),
    "viewer": (
        {"AUTH": "header"},
        {"X-Forwarded-User": "bob", "X-Forwarded-Roles": "viewer"},
    ),
    "anonymous": ({"AUTH": "header"}, {}),
}


@pytest.fixture(params=list(CALLERS))
def target(request, tmp_path):
    """(app, headers): an app on the fake backend, editing on, over a copy of the sample
    catalog, with six sessions of the caller already started; the caller's headers."""
    settings_, headers = CALLERS[request.param]
    catalog = tmp_path / "catalog"
    shutil.copytree(ROOT / "config" / "catalog", catalog)
    backend = MixedBackend(FileCatalog(catalog, reload_interval=0))
    config = {
        "TESTING": True,
        "REAP_INTERVAL": 0,
        "EDITING_ENABLED": True,
        # The fuzzer starts hundreds of sessions; the per-caller limit would answer most.
        "START_RATE_LIMIT": "",
        **settings_,
    }
    app = create_app(config, backend=backend)
    sessions = app.extensions["ovas"].sessions
    owner = headers.get("X-Forwarded-User", "")
    LIVE_SESSIONS[:] = [
        sessions.start("usd-viewer", "default", username=owner).id for _ in range(6)
    ]
    return app, headers


def _live_session() -> st.SearchStrategy[str]:
    return st.integers(0, 63).map(lambda i: LIVE_SESSIONS[i % len(LIVE_SESSIONS)])


_SEMVER = st.builds(
    lambda major, minor, patch, suffix: f"{major}.{minor}.{patch}{suffix}",
    st.integers(0, 300),
    st.integers(0, 20),
    st.integers(0, 20),
    st.sampled_from(["", "-alpha.1", "-rc.1+build.123", "+b7"]),
)
KNOWN_PATH = {
    "app_id": st.sampled_from([*APPS, "*"]),
    "version": st.sampled_from([*VERSIONS, "*", "latest"]),
    "profile_id": st.sampled_from(PROFILES),
    "session_id": _live_session(),
}
KNOWN_BODY = {
    ("POST", "/streaming/stream"): st.fixed_dictionaries(
        {"id": st.sampled_from(APPS), "profile": st.sampled_from(PROFILES)},
        optional={
            "version": st.sampled_from([*VERSIONS, "latest"]),
            "arguments": st.fixed_dictionaries(
                {},
                optional={
                    "usd_stage_uri": st.sampled_from(["", "/app/samples/stage02.usd", "x.usd"])
                },
            ),
        },
    ),
    ("DELETE", "/streaming/stream"): st.fixed_dictionaries({"id": _live_session()}),
    ("POST", "/cfg/apps/{app_id}/versions"): st.fixed_dictionaries(
        {"version": _SEMVER},
        optional={"container": st.just("example/app"), "container_version": st.just("1")},
    ),
    ("DELETE", "/cfg/apps/{app_id}/versions"): st.fixed_dictionaries(
        {"version": st.sampled_from(VERSIONS)}
    ),
}


def _with_known(params):
    if not isinstance(params, dict):
        return st.just(params)
    return st.fixed_dictionaries({k: KNOWN_PATH.get(k, st.just(v)) for k, v in params.items()})


def before_generate_path_parameters(context, strategy):
    return st.one_of(strategy, strategy.flatmap(_with_known))


def before_generate_body(context, strategy):
    known = KNOWN_BODY.get((context.operation.method.upper(), context.operation.path))
    return strategy if known is None else st.one_of(strategy, known)


def _load(path: str):
    # Loaded at collection from an app of its own: the documents do not depend on the catalog,
    # and each test then calls the app of its fixture. (schemathesis.pytest.from_fixture would
    # load them per test, but its subtests break on pytest 9: no `Function._nodeid`.)
    app = create_app({"TESTING": True}, backend=FakeBackend())
    schema = schemathesis.openapi.from_wsgi(path, app)
    schema.config.seed = SEED
    schema.config.generation.update(max_examples=MAX_EXAMPLES, deterministic=True)
    schema.hook(before_generate_path_parameters)
    schema.hook(before_generate_body)
    return schema


# Identity headers count only from a trusted proxy; the gateway is on this machine.
_LOCAL = {"REMOTE_ADDR": "127.0.0.1"}
_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)
applications = _load("/applications/openapi.json")
streaming = _load("/streaming/openapi.json")


@applications.parametrize()
@_SETTINGS
def test_application_service_answers_as_documented(case, target):
    app, headers = target
    case.call_and_validate(checks=CHECKS, app=app, headers=headers, environ_base=_LOCAL)


@streaming.parametrize()
@_SETTINGS
def test_streaming_service_answers_as_documented(case, target):
    app, headers = target
    case.call_and_validate(checks=CHECKS, app=app, headers=headers, environ_base=_LOCAL)
