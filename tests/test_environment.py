"""The conda environment and the pip install pin the same versions."""

import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pins(items):
    out = {}
    for item in items:
        name, _, version = item.partition("==")
        out[name.strip().lower()] = version.strip()
    return out


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    py = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    assert _pins(pip_section) == py
    assert all(v for v in py.values()), "every dependency is pinned with =="
    assert py["torch"] == "2.13.0"


def test_lock_agrees_with_pyproject():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    py = _pins(project["dependencies"] + project["optional-dependencies"]["test"])
    lock = _pins(line for line in (REPO / "requirements.lock").read_text().splitlines()
                 if line and not line.startswith("#"))
    for name, version in py.items():
        assert lock.get(name) == version, f"{name}: pyproject {version}, lock {lock.get(name)}"
