"""Writes the settings part of the chart's values.schema.json from ovas/config.py's SETTINGS,
the one list of settings, so the chart takes exactly the settings ovas reads, typed as ovas
reads them: a yes/no setting a boolean, a bounded one an integer in its range, any other
text.

    PYTHONPATH=. python config/tools/chart_schema.py          # rewrite the schema
    PYTHONPATH=. python config/tools/chart_schema.py --check  # exit 1 if it is stale

tests/kubernetes_backend/test_helm.py runs the check.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from ovas import config

SCHEMA = Path(__file__).resolve().parents[1] / "helm" / "ovas" / "values.schema.json"


def chart_name(setting: config.Setting) -> str:
    """The setting's name in the chart's values: without the OVAS_ prefix."""
    return setting.name.removeprefix("OVAS_")


def setting_schema(setting: config.Setting) -> dict[str, Any]:
    """The JSON schema of one setting's value."""
    name = chart_name(setting)
    described = {"description": f"{setting.name}: {config.describe(setting)}"}
    if name in config.BOOLEANS:
        return {"type": "boolean", **described}
    if setting.bounds is not None:
        low, high = setting.bounds.low, setting.bounds.high
        return {"type": "integer", "minimum": low, "maximum": high, **described}
    return {"type": "string", **described}


def definitions() -> dict[str, Any]:
    """The schema's `definitions` that come from SETTINGS: `settings` (name: value) and
    `settingsFromSecrets` (name: the Secret key holding its value)."""
    names = [chart_name(s) for s in config.SETTINGS]
    reference = {"$ref": "#/definitions/secretKeyRef"}
    return {
        "settings": {
            "type": "object",
            "additionalProperties": False,
            "properties": {chart_name(s): setting_schema(s) for s in config.SETTINGS},
        },
        "settingsFromSecrets": {
            "type": "object",
            "additionalProperties": False,
            "properties": {name: reference for name in names},
        },
    }


def updated(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "definitions": {**schema["definitions"], **definitions()}}


def main(argv: list[str]) -> int:
    current = json.loads(SCHEMA.read_text())
    text = json.dumps(updated(current), indent=2) + "\n"
    if "--check" in argv:
        if SCHEMA.read_text() != text:
            print(f"{SCHEMA} differs from ovas/config.py's SETTINGS; run {__file__}")
            return 1
        return 0
    SCHEMA.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
