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


def lints(workdir: Path, *args: str) -> list[tuple[str, str]]:
    """(linted item, lint title) pairs of `snakemake --lint` (its JSON mode prints nothing in 9.x: parse the text)."""
    proc = subprocess.run([SNAKEMAKE, "--lint", "-s", str(REPO / "Snakefile"), "-d", str(workdir), *args],
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout + proc.stderr
    found, item = [], None
    for line in out.splitlines():
        if line.startswith("Lints for "):
            item = line.removeprefix("Lints for ").split(" (line")[0].rstrip(":")
        elif line.startswith("    * ") and item:
            found.append((item, line.removeprefix("    * ").rstrip(":")))
    assert (proc.returncode == 1) == bool(found), out  # --lint exits 1 exactly when it found something
    return found


CONDA_LINT = "Specify a conda environment or container for each rule."


def test_lint_finds_only_the_documented_lint(tmp_path):
    """The only lint left is the per-rule conda environment, documented as not applying in the Snakefile."""
    found = lints(tmp_path, "--configfile", str(REPO / "config" / "config.yaml"))
    assert found, "no lint at all: drop the conda-lint note from the Snakefile header and make this test strict"
    assert [x for x in found if x[1] != CONDA_LINT] == []
    linted = {item for item, _ in found}
    assert {"rule pretrain", "rule finetune", "rule dynamics", "rule ner_table", "rule figures"} <= linted
    assert CONDA_LINT.split(" for")[0] in (REPO / "Snakefile").read_text()
    # The paper's grid (SLURM launcher, several sizes) lints the same.
    assert [x for x in lints(tmp_path, "--configfile", str(REPO / "config" / "paper.yaml")) if x[1] != CONDA_LINT] == []


def shell_threads(output: str, rule: str) -> list[int]:
    """The `--threads N` each planned job of `rule` is given, from a dry run's printed shell commands."""
    return [int(n) for n in re.findall(rf"metapretrain {rule} .*?--threads (\d+)", output)]


def plan(workdir: Path, *args: str) -> str:
    """A dry run's full plan (every job with its threads and shell command) of the default grid."""
    proc = subprocess.run([SNAKEMAKE, "-n", "-p", "-s", str(REPO / "Snakefile"), "-d", str(workdir), "--configfile",
                           str(REPO / "config" / "config.yaml"), *args], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr


def test_compute_rules_declare_threads(tmp_path):
    """By default a local compute job takes every core, so `--cores 2` runs two pretrains one at a time."""
    out = plan(tmp_path, "--cores", "2")
    assert shell_threads(out, "pretrain") == [2, 2]
    # 4 final-checkpoint fine-tunes, and vanilla's 2 read at FOMAML's final FLOPs (compare.match)
    assert shell_threads(out, "finetune") == [2] * 6 and shell_threads(out, "dynamics") == [2, 2]
    assert len(re.findall(r"--match-unit flops", out)) == 2
    assert len(re.findall(r"^\s+threads: 2$", out, re.M)) == 10  # Snakemake reserves them: no two run at once
    out = plan(tmp_path, "--cores", "4", "--config", "set=launch.threads.pretrain=3 launch.threads.finetune=1")
    assert shell_threads(out, "pretrain") == [3, 3] and shell_threads(out, "finetune") == [1] * 6
    assert shell_threads(out, "dynamics") == [4, 4]
    # Under SLURM the rule only waits for its job (which computes with launch.slurm.cpus_per_task).
    out = plan(tmp_path, "--cores", "16", "--config", "set=launch.launcher=slurm")
    assert shell_threads(out, "pretrain") == [1, 1] and shell_threads(out, "dynamics") == [1, 1]
