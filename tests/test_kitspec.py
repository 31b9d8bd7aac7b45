"""Chart values and the Kit container spec that both built-in backends read."""

from __future__ import annotations

import pytest

from ovas.kitspec import cpu_to_nano, memory_to_bytes, parse_kit, render_values
from ovas.models import Application, Profile, SupportedApplication, Version

APP = Application("usd-viewer", "USD Viewer")
VERSION = Version("usd-viewer", "107.3.2", "nvcr.io/nvidia/omniverse/usd-viewer", "107.3.2")
MAPPINGS = {
    "container": "streamingKit.image.repository",
    "container_version": "streamingKit.image.tag",
    "name": "streamingKit.name",
}


def profile(values, mappings=MAPPINGS):
    return Profile("p", "P", "", (SupportedApplication("*"),), mappings, values)


def test_mappings_fill_the_image_and_usd_path_overrides_the_profile():
    values = {
        "streamingKit": {
            "image": {"repository": "", "tag": "", "pullPolicy": "Always"},
            "env": [{"name": "USD_PATH", "value": "/a.usd"}, {"name": "KEEP", "value": "1"}],
            "resources": {"limits": {"cpu": "500m", "memory": "32Gi", "nvidia.com/gpu": "2"}},
            "startupProbe": {"httpGet": {"path": "/ready", "port": 8011}, "periodSeconds": 5},
        }
    }
    source = profile(values)
    rendered = render_values(source, APP, VERSION, "sid", "omniverse://host/stage.usd")
    kit = parse_kit(rendered)
    assert kit.image == "nvcr.io/nvidia/omniverse/usd-viewer:107.3.2"
    assert kit.pull_policy == "Always"
    assert kit.env_dict == {"KEEP": "1", "USD_PATH": "omniverse://host/stage.usd"}
    assert (kit.cpu_limit, kit.memory_limit, kit.gpus) == ("500m", "32Gi", 2)
    assert (kit.signaling_port, kit.media_port) == (49100, 47998)
    assert kit.probe.kind == "http" and kit.probe.port == 8011 and kit.probe.path == "/ready"
    assert rendered["streamingKit"]["name"] == "sid"
    # The profile itself is never changed.
    assert source.chart_values["streamingKit"]["image"]["repository"] == ""
    assert source.chart_values["streamingKit"]["env"][0]["value"] == "/a.usd"


def test_empty_stage_uri_keeps_the_profiles():
    values = {"streamingKit": {"env": [{"name": "USD_PATH", "value": "/a.usd"}]}}
    kit = parse_kit(render_values(profile(values), APP, VERSION, "sid", ""))
    assert kit.env_dict["USD_PATH"] == "/a.usd"


@pytest.mark.parametrize(
    ("kit", "field"),
    [
        ({"image": {"repository": ""}}, "streamingKit.image.repository"),
        ({"image": {"repository": "r", "pullPolicy": "Sometimes"}}, "pullPolicy"),
        ({"image": {"repository": "r"}, "ports": {"media": 0}}, "streamingKit.ports.media"),
        ({"image": {"repository": "r"}, "resources": {"limits": {"cpu": "lots"}}}, "cpu"),
        ({"image": {"repository": "r"}, "resources": {"limits": {"nvidia.com/gpu": "x"}}}, "gpu"),
        ({"image": {"repository": "r"}, "env": {"A": "1"}}, "streamingKit.env"),
        ({"image": {"repository": "r"}, "startupProbe": {"exec": {}}}, "startupProbe"),
        ({"image": {"repository": "Kit/Viewer", "tag": "1"}}, "streamingKit.image.repository"),
        ({"image": {"repository": "kit:1", "tag": "2"}}, "streamingKit.image.repository"),
        ({"image": {"repository": "kit", "tag": "1\nforged"}}, "streamingKit.image.tag"),
    ],
)
def test_invalid_values_name_the_field(kit, field):
    with pytest.raises(ValueError, match=field.replace(".", r"\.")):
        parse_kit({"streamingKit": kit})


def test_tcp_probe_and_zero_gpus():
    kit = parse_kit(
        {
            "streamingKit": {
                "image": {"repository": "r", "tag": "1"},
                "readinessProbe": {"tcpSocket": {"port": 49100}},
                "resources": {"limits": {"nvidia.com/gpu": 0}},
            }
        }
    )
    assert kit.probe.kind == "tcp" and kit.probe.port == 49100
    assert kit.gpus == 0


def test_quantities():
    assert cpu_to_nano("8") == 8_000_000_000
    assert cpu_to_nano("500m") == 500_000_000
    assert memory_to_bytes("32Gi") == 32 * 2**30
    assert memory_to_bytes("500M") == 500_000_000
