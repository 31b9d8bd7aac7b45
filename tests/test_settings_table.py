"""One list of settings (ovas/config.py), one table of them in the README, and the code
reading no setting that list lacks; `make run`'s environment holds no test distribution."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from ovas import config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
NAMES = {s.name for s in config.SETTINGS}
# Reads of a setting: `config.get("KEY"`, `settings["KEY"]`, `os.environ.get("OVAS_KEY"`...
READS = re.compile(
    r"""(?:config|settings)(?:\.get\(|\[)\s*"([A-Z][A-Z0-9_]+)"|"""
    r"""(?:environ\.get\(|environ\[|_int\()\s*"(OVAS_[A-Z0-9_]+|[A-Z]+_HOST|KUBECONFIG)\""""
)
# Flask's and the test harness's own keys, and variables ovas sets for itself.
# Read by name but no settings: a test flag, a marker between processes, WSGI and CLI keys.
NOT_SETTINGS = {"TESTING", "OVAS_METRICS_DIR_CREATED", "FLASK_RUN_HOST", "HTTP_HOST"}


def test_the_readme_table_is_the_list_of_settings():
    assert config.settings_table() in README, (
        "README.md's Settings table differs from ovas/config.py's SETTINGS; paste in "
        "the output of: python -c 'from ovas import config; print(config.settings_table())'"
    )
    assert README.count("| Variable | Meaning | Default |") == 1


def test_the_readme_names_no_setting_the_code_lacks():
    named = set(re.findall(r"\bOVAS_[A-Z][A-Z0-9_]*[A-Z0-9]\b", README))
    assert named - NAMES == set()


def test_the_code_reads_no_setting_missing_from_the_list():
    sources = [*REPO.glob("ovas/**/*.py"), *REPO.glob("blueprints/**/*.py")]
    sources += [*REPO.glob("backends/**/*.py"), REPO / "config/gunicorn.conf.py"]
    read = set()
    for path in sources:
        for key, variable in READS.findall(path.read_text()):
            read.add(variable or f"OVAS_{key}")
    assert "OVAS_KUBERNETES_CONTEXT" in read and "OVAS_KEEPALIVE" in read  # the scan works
    assert read - NAMES - NOT_SETTINGS == set()


def test_defaults_come_from_the_list():
    for setting in config.SETTINGS:
        if setting.key and setting.default is not None and setting.key != "SESSION_RETENTION":
            assert config.DEFAULTS[setting.key] == setting.default, setting.name
    assert config.DEFAULTS["CATALOG_PATH"] == str(REPO / "config" / "catalog")


def test_make_run_uses_an_environment_without_test_distributions():
    planned = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "run"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    installs = [line for line in planned.splitlines() if "pip install" in line and " -e " in line]
    assert installs == [
        ".venv-run/bin/python -m pip install -q -e '.[docker,kubernetes,serve,gateway]'"
    ]
    assert planned.splitlines()[-1] == ".venv-run/bin/ovas serve --host 127.0.0.1 --port 8080"
    tested = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "test"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "-e tests/plugin_example" in tested and ".venv-run" not in tested
