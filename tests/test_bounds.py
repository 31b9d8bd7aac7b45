"""Every duration and count ovas reads has a range, stated once (`ovas/bounds.py`) and
enforced where the value is read: settings at startup, profile annotations and probe timings
in `ovas catalog check` and at catalog load. No value can reach date arithmetic unbounded."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ovas import config, create_app
from ovas.bounds import YEAR
from ovas.catalog_files import FileCatalog
from ovas.errors import ConfigurationError
from ovas.kitspec import _TIMINGS
from ovas.lifecycle import DURATION_ANNOTATIONS
from ovas.models import Clocks
from ovas.resources import profile_from_resource
from ovas.testing import FakeBackend, FakeClock

SAMPLE = Path(__file__).resolve().parents[1] / "config" / "catalog"
OVAS = Path(sys.executable).parent / "ovas"
HUGE = "999999999999"  # nines for "never"


def standin_profile() -> dict:
    documents = yaml.safe_load_all((SAMPLE / "standin.yaml").read_text())
    return next(d for d in documents if d["kind"] == "ApplicationProfile")


def numeric(setting: config.Setting) -> bool:
    """A setting holding a duration or a count, by its default or its words."""
    default = setting.default
    is_number = isinstance(default, int) and not isinstance(default, bool)
    return is_number or "seconds" in setting.meaning or setting.meaning.startswith("most ")


def test_every_duration_and_count_setting_has_a_range_that_stops_startup():
    assert sum(numeric(s) for s in config.SETTINGS) >= 14  # the scan finds them
    for setting in config.SETTINGS:
        if numeric(setting):
            assert setting.bounds is not None, f"{setting.name} has no range"
    for setting in config.SETTINGS:
        if setting.bounds is None:
            continue
        largest = setting.bounds.high
        if setting.key:
            assert config.number(setting, str(largest)) == largest
            with pytest.raises(ConfigurationError) as refused:
                create_app({"TESTING": True, setting.key: largest + 1}, backend=FakeBackend())
        else:  # gunicorn's: read by config/gunicorn.conf.py
            env = {setting.name: str(largest)}
            assert config.gunicorn_number(setting.name, 1, env) == largest
            with pytest.raises(ConfigurationError) as refused:
                config.gunicorn_number(setting.name, 1, {setting.name: str(largest + 1)})
        assert refused.value.message.startswith(f"{setting.name}: ")
        assert f"the largest allowed, {largest}" in refused.value.message
        assert f"(range {setting.bounds.low} to {largest})" in config.settings_table()


def test_gunicorn_stops_at_a_count_out_of_range_naming_it():
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "config/gunicorn.conf.py", "--check-config"],
        cwd=root,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(root), "OVAS_THREADS": "100000"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "OVAS_THREADS: '100000' is more than the largest allowed, 1024 threads" in done.stderr


@pytest.mark.parametrize("annotation", DURATION_ANNOTATIONS)
def test_every_duration_annotation_is_refused_beyond_a_year(annotation):
    document = standin_profile()
    document["metadata"]["annotations"] = {annotation: str(YEAR)}
    assert profile_from_resource(document).annotations[annotation] == str(YEAR)
    for bad in (HUGE, str(YEAR + 1), "-1", "1e400", "nan", "1.5"):
        document["metadata"]["annotations"] = {annotation: bad}
        with pytest.raises(ValueError, match=f"metadata.annotations.{annotation}: '{bad}'"):
            profile_from_resource(document)
    document["metadata"]["annotations"] = {annotation: HUGE}
    with pytest.raises(ValueError, match="the largest allowed, 31536000 seconds"):
        profile_from_resource(document)


@pytest.mark.parametrize(("key", "bounds"), [(key, bounds) for _, key, _, bounds in _TIMINGS])
def test_every_probe_timing_has_a_range(key, bounds):
    document = standin_profile()
    probe = document["spec"]["chartValues"]["streamingKit"]["startupProbe"]
    probe[key] = bounds.high
    profile_from_resource(document)
    for bad in (bounds.high + 1, float("inf"), True, "soon", {"a": 1}):
        probe[key] = bad
        with pytest.raises(ValueError, match=f"streamingKit.startupProbe.{key}: "):
            profile_from_resource(copy.deepcopy(document))


def test_a_huge_max_lifetime_is_refused_by_catalog_check_and_at_load(tmp_path):
    document = standin_profile()
    document["metadata"]["annotations"] = {"ovas/max-lifetime": HUGE}
    others = [d for d in yaml.safe_load_all((SAMPLE / "standin.yaml").read_text())]
    others = [d for d in others if d["kind"] != "ApplicationProfile"]
    (tmp_path / "standin.yaml").write_text(yaml.safe_dump_all([*others, document]))

    checked = subprocess.run(
        [str(OVAS), "catalog", "check", str(tmp_path)], capture_output=True, text=True
    )
    assert checked.returncode == 1
    assert (
        "error: standin.yaml (document 3): metadata.annotations.ovas/max-lifetime: "
        f"'{HUGE}' is more than the largest allowed, 31536000 seconds"
    ) in checked.stderr
    assert "Traceback" not in checked.stderr

    client = create_app(
        {"TESTING": True, "REAP_INTERVAL": 0}, backend=FakeBackend(FileCatalog(tmp_path))
    ).test_client()
    ready = client.get("/ready")
    assert ready.status_code == 200
    assert any("ovas/max-lifetime" in p for p in ready.json["catalog_problems"])
    start = client.post("/streaming/stream", json={"id": "standin", "profile": "standin"})
    assert start.status_code == 404  # the profile is not served; nothing was started
    assert client.get("/streaming/stream").json["items"] == []


def test_a_session_recorded_with_clocks_past_year_9999_never_fails_a_request():
    # As a record written by a version of ovas that did not bound the clocks would be: the
    # session starts, is listed and ready, the reaper passes, and such a clock never ends it.
    clock = FakeClock()
    app = create_app({"TESTING": True, "REAP_INTERVAL": 0}, backend=FakeBackend(now=clock))
    state = app.extensions["ovas"]
    state.sessions.clocks = Clocks(connect_timeout=1e12, idle_timeout=1e12, max_lifetime=1e12)
    client = app.test_client()
    started = client.post("/streaming/stream", json={"id": "usd-viewer", "profile": "default"})
    assert started.status_code in (200, 202), started.json
    assert started.json["expires_time"] is None
    clock.advance(3600)
    state.sessions.reap()
    (listed,) = client.get("/streaming/stream").json["items"]
    assert listed["status"]["condition"] == "ready"
    shown = client.get(f"/streaming/stream/{listed['id']}")
    assert shown.status_code == 200 and shown.json["expires_time"] is None


def test_a_start_timeout_of_zero_stops_startup_rather_than_fail_every_session():
    with pytest.raises(ConfigurationError, match="OVAS_START_TIMEOUT"):
        create_app({"TESTING": True, "START_TIMEOUT": "0"}, backend=FakeBackend())
