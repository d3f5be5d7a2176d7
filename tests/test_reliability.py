"""Reliability at the workflow level: two drivers on one results directory."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import REPO, seed_grid

BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_second_snakemake_driver_is_refused(tmp_path, data_root):
    """While one driver runs, a second on the same directory is refused by Snakemake's lock; the first finishes."""
    cfg = tmp_path / "e.yaml"
    cfg.write_text("experiment: lock\ndefaults:\n  finetune: {enabled: false}\n  dynamics: {enabled: false}\n")
    target = "results/lock/tokenize"
    env = dict(os.environ, PATH=f"{BIN}:{os.environ['PATH']}")
    cmd = [str(BIN / "snakemake"), "--cores", "1", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(cfg), "--until", "tokenize"]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while not list((tmp_path / target).glob("*.yaml")) and time.monotonic() < deadline:
            time.sleep(0.2)  # the first driver holds the lock once it has started its jobs
        assert first.poll() is None, "the first driver finished too early to test the lock"
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
        assert second.returncode != 0
        assert "cannot be locked" in second.stdout + second.stderr
        out, _ = first.communicate(timeout=300)
        assert first.returncode == 0, out[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    assert list((tmp_path / target).glob("*/done.json"))


DOCTOR_EXP = seed_grid("doc", steps=10, seeds=4)


def _doctor(cfg: Path, cwd: Path) -> tuple[int, dict]:
    import json

    env = dict(os.environ, METAPRETRAIN_RESULTS=str(cwd / "results"))
    proc = subprocess.run([sys.executable, "-m", "metapretrain.cli", "doctor", str(cfg), "--json"], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_doctor_finds_damaged_killed_changed_and_orphaned_runs(tmp_path, monkeypatch):
    """Real done.json markers (with checksums) on disk; doctor names what a researcher must look at."""
    from metapretrain import paths
    from metapretrain.grid import load_experiment
    from metapretrain.grid_cli import write_run_files
    from metapretrain.io import write_done

    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "doc.yaml"
    cfg.write_text(DOCTOR_EXP)
    exp = load_experiment(cfg)
    for run in exp.runs:
        rd = write_run_files("doc", run)
        tok = paths.tokenize_dir("doc", run.tok_id)
        (tok / "train.bin").parent.mkdir(parents=True, exist_ok=True)
        (tok / "train.bin").write_bytes(b"\x01\x02")
        write_done(tok, "tokenize", None, [(tok / "train.bin").resolve()])
        pre = paths.pretrain_dir(rd)
        pre.mkdir(parents=True)
        paths.metrics_file(rd).write_text('{"kind": "train", "step": 10}\n')
        if run.run_id != "seed~4":  # seed 4 was killed: metrics, no done.json
            write_done(pre, "pretrain", run.run_id, [paths.metrics_file(rd).resolve()])
    code, report = _doctor(cfg, tmp_path)
    assert code == 1 and report["changed"] == [] and report["orphaned"] == []
    assert [(i["run_id"], i["stage"], i["state"]) for i in report["incomplete"]] == [("seed~4", "pretrain", "stale")]

    # An output edited after its done.json was written: the stage is no longer done.
    with open(paths.metrics_file(paths.run_dir("doc", "seed~2")), "a") as fh:
        fh.write('{"kind": "train", "step": 11}\n')
    _, report = _doctor(cfg, tmp_path)
    damaged = [i for i in report["incomplete"] if i["state"] == "damaged"]
    assert [(i["run_id"], i["stage"]) for i in damaged] == [("seed~2", "pretrain")]
    assert "seed~2/pretrain/metrics.jsonl: changed since" in damaged[0]["detail"]

    # The YAML changes: seed 3 leaves the grid (orphaned), lr changes (every remaining run is stale).
    cfg.write_text(DOCTOR_EXP.replace("[1, 2, 3, 4]", "[1, 2, 4]").replace("value: 10}}", "value: 10}, lr: 0.002}"))
    _, report = _doctor(cfg, tmp_path)
    assert [o["run_id"] for o in report["orphaned"]] == ["seed~3"]
    assert sorted(c["run_id"] for c in report["changed"]) == ["seed~1", "seed~2", "seed~4"]
    assert all(c["recorded_hash"] != c["current_hash"] for c in report["changed"])
