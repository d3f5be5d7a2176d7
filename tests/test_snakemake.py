"""The Snakemake DAG: dry runs of the default grid, a new axis, --configfile and --config overrides."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"


def dry_run(workdir: Path, *args: str) -> str:
    proc = subprocess.run(
        [SNAKEMAKE, "-n", "--quiet", "rules", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def job_counts(output: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", output, re.M)}


def test_default_config_dry_run_from_repo_root(tmp_path):
    """`snakemake -n` in the repository finds config/config.yaml and plans the whole default grid.

    The results go to a temporary directory ($METAPRETRAIN_RESULTS): after a user's `make demo` the
    repository's own results/ has nothing left to plan, and a test must not depend on what was run.
    """
    env = dict(os.environ, METAPRETRAIN_RESULTS=str(tmp_path / "results"))
    proc = subprocess.run([SNAKEMAKE, "-n", "--quiet", "rules"], cwd=REPO, capture_output=True, text=True, timeout=300,
                          env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    counts = job_counts(proc.stdout + proc.stderr)
    assert counts["pretrain"] == 2 and counts["tokenize"] == 1 and counts["finetune"] == 4 and counts["dynamics"] == 2


def test_new_axis_needs_only_one_yaml_line(tmp_path):
    base = (REPO / "config" / "config.yaml").read_text()
    (tmp_path / "base.yaml").write_text(base)
    assert "\ngrid:\n" in base
    (tmp_path / "more.yaml").write_text(base.replace("\ngrid:\n", "\ngrid:\n  train.lr: [3.0e-4, 1.0e-3]\n"))
    before = job_counts(dry_run(tmp_path, "--configfile", str(tmp_path / "base.yaml")))
    out = dry_run(tmp_path, "--configfile", str(tmp_path / "more.yaml"))
    after = job_counts(out)
    assert after["pretrain"] == 2 * before["pretrain"]
    assert after["finetune"] == 2 * before["finetune"]
    assert after["tokenize"] == before["tokenize"] == 1  # the new axis does not touch tokenization
    full = subprocess.run([SNAKEMAKE, "-n", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", str(tmp_path / "more.yaml")], capture_output=True, text=True, timeout=300)
    for run_id in ("method~fomaml/train.lr~0.0003", "method~vanilla/train.lr~0.001"):
        assert f"runs/{run_id}/pretrain/done.json" in full.stdout


def test_configfile_replaces_default_grid(tmp_path):
    """--configfile must not merge with config/config.yaml's axes (Snakemake's default behaviour)."""
    (tmp_path / "solo.yaml").write_text("experiment: solo\ndefaults: {finetune: {enabled: false}, dynamics: {enabled: false}}\n")
    counts = job_counts(dry_run(tmp_path, "--configfile", str(tmp_path / "solo.yaml")))
    assert counts["pretrain"] == 1 and "finetune" not in counts and "dynamics" not in counts


def test_config_override_on_command_line(tmp_path):
    (tmp_path / "e.yaml").write_text("experiment: ov\ndefaults: {finetune: {enabled: false}}\n")
    out = dry_run(tmp_path, "--configfile", str(tmp_path / "e.yaml"), "--config", "dynamics={enabled: false}")
    assert "dynamics" not in job_counts(out)
    out = dry_run(tmp_path, "--configfile", str(tmp_path / "e.yaml"), "--config", "set=dynamics.enabled=false seed=3")
    assert "dynamics" not in job_counts(out)
    proc = subprocess.run([SNAKEMAKE, "-n", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile",
                           str(tmp_path / "e.yaml"), "--config", "set=train.lrr=1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "unknown key 'lrr' in train (did you mean 'lr'?)" in proc.stdout + proc.stderr


@pytest.mark.parametrize("name", ["paper.yaml", "examples"])
def test_shipped_configs_dry_run(tmp_path, name):
    files = sorted((REPO / "config" / name).glob("*.yaml")) if name == "examples" else [REPO / "config" / name]
    files = [f for f in files if f.exists()]
    if not files:
        pytest.skip(f"config/{name} not present")
    for f in files:
        counts = job_counts(dry_run(tmp_path, "--configfile", str(f)))
        assert counts.get("pretrain", 0) >= 2, f


def test_rules_find_the_cli_without_an_activated_environment(tmp_path, data_root):
    """`.venv/bin/snakemake` run with a PATH that lacks the venv (as `make demo` does) still runs the rules."""
    (tmp_path / "e.yaml").write_text(
        "experiment: path\ndefaults:\n  corpus: {max_documents: 2000}\n  tokenizer: {vocab_size: 512}\n"
        "  finetune: {enabled: false}\n  dynamics: {enabled: false}\n")
    bin_dir = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p.rstrip("/") != bin_dir.rstrip("/"))
    proc = subprocess.run([SNAKEMAKE, "--cores", "1", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
                           "--configfile", str(tmp_path / "e.yaml"), "--until", "tokenize"],
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PATH=path))
    logs = "".join(p.read_text() for p in (tmp_path / "results").rglob("*.log"))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:] + logs
    assert list((tmp_path / "results" / "path" / "tokenize").glob("*/done.json"))
