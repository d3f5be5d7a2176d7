"""`metapretrain status` on fixture run directories in every state."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from metapretrain import paths
from metapretrain.grid import load_experiment
from metapretrain.status import collect
from metapretrain.status import main as status_main

EXP = """experiment: st
defaults:
  train: {budget: {unit: steps, value: 100}}
  finetune: {enabled: false}
  dynamics: {enabled: false}
grid:
  seed: [1, 2, 3, 4, 5]
"""


@pytest.fixture
def exp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "e.yaml").write_text(EXP)
    return load_experiment(tmp_path / "e.yaml")


def _write_metrics(run_dir, step, loss=3.5, val=3.7):
    m = paths.metrics_file(run_dir)
    m.parent.mkdir(parents=True, exist_ok=True)
    recs = [{"kind": "train", "step": s, "tokens": s * 1000, "flops": s * 1e9, "wall": s * 0.5, "loss": loss,
             "tokens_per_s": 2000.0} for s in range(10, step + 1, 10)]
    recs.append({"kind": "eval", "step": step, "tokens": step * 1000, "flops": step * 1e9, "wall": step * 0.5,
                 "val_loss": val, "val_ppl": 40.0})
    m.write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_every_local_state(exp, tmp_path):
    rd = {s: paths.run_dir("st", f"seed~{s}") for s in range(1, 6)}
    # seed 1: done
    (rd[1] / "pretrain").mkdir(parents=True)
    (rd[1] / "pretrain" / "done.json").write_text("{}")
    # seed 2: running locally (a live pid on this host), 40 of 100 steps
    _write_metrics(rd[2], 40)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (rd[2] / "logs").mkdir(parents=True)
        (rd[2] / "logs" / "pretrain.job.json").write_text(json.dumps({"launcher": "local", "pid": sleeper.pid,
                                                                        "host": socket.gethostname()}))
        # seed 3: failed, with a log
        (rd[3] / "logs").mkdir(parents=True)
        (rd[3] / "logs" / "pretrain.log").write_text("== attempt 1 ==\nstep 1\nTraceback (most recent call last):\n"
                                                     "RuntimeError: CUDA out of memory\n")
        (rd[3] / "logs" / "pretrain.job.json").write_text(json.dumps({"launcher": "local", "pid": 999999999,
                                                                        "state": "failed", "exit_code": 1,
                                                                        "error": "RuntimeError: CUDA out of memory"}))
        # seed 4: stale (metrics but the job is gone, no done marker)
        _write_metrics(rd[4], 20)
        # seed 5: planned
        rows = {r.run_id: r for r in collect(exp) if r.stage == "pretrain"}
        assert rows["seed~1"].state == "done"
        assert rows["seed~2"].state == "running"
        assert rows["seed~2"].progress["step"] == 40 and rows["seed~2"].progress["fraction"] == 0.4
        assert rows["seed~2"].progress["val_loss"] == 3.7 and rows["seed~2"].progress["eta_s"] == 30
        assert rows["seed~3"].state == "failed" and "CUDA out of memory" in rows["seed~3"].detail
        assert rows["seed~3"].log_tail[-1] == "RuntimeError: CUDA out of memory"
        assert rows["seed~3"].log.endswith("seed~3/logs/pretrain.log")
        assert rows["seed~4"].state == "stale"
        assert rows["seed~5"].state == "planned"
    finally:
        sleeper.kill()
        sleeper.wait()
    # once the process is gone, the "running" run is stale
    assert {r.run_id: r.state for r in collect(exp) if r.stage == "pretrain"}["seed~2"] == "stale"


def test_json_output_and_glob(exp, tmp_path, capsys):
    assert status_main([str(tmp_path / "e.yaml"), "--json", "--runs", "seed~[12]"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {r["run_id"] for r in out["rows"]} == {"seed~1", "seed~2"}
    assert {r["stage"] for r in out["rows"]} == {"tokenize", "pretrain"}
    assert status_main([str(tmp_path / "e.yaml")]) == 0
    assert "10 planned" in capsys.readouterr().out


def test_dead_slurm_does_not_hang(exp, monkeypatch, tmp_path):
    """A SLURM record with no reachable controller: the command returns promptly (no squeue here, or a timeout)."""
    rd = paths.run_dir("st", "seed~1")
    (rd / "logs").mkdir(parents=True)
    (rd / "logs" / "pretrain.job.json").write_text(json.dumps({"launcher": "slurm", "job_id": "424242"}))
    fake = tmp_path / "bin"
    fake.mkdir()
    for tool in ("squeue", "sacct"):
        (fake / tool).write_text("#!/bin/sh\nsleep 30\n")
        os.chmod(fake / tool, 0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    monkeypatch.setattr("metapretrain.status.SLURM_TIMEOUT_S", 0.5)
    rows = {r.run_id: r for r in collect(exp) if r.stage == "pretrain"}
    assert rows["seed~1"].state == "stale"


def test_doctor_lists_incomplete_changed_orphaned(exp, tmp_path, capsys):
    from metapretrain.doctor import diagnose
    from metapretrain.doctor import main as doctor_main
    from metapretrain.grid_cli import write_run_files

    for run in exp.runs:
        write_run_files("st", run)
        d = paths.pretrain_dir(paths.run_dir("st", run.run_id))
        d.mkdir(parents=True, exist_ok=True)
        (d / "done.json").write_text("{}")
        tok = paths.tokenize_dir("st", run.tok_id)
        tok.mkdir(parents=True, exist_ok=True)
        (tok / "done.json").write_text("{}")
    assert diagnose(exp) == {"incomplete": [], "changed": [], "orphaned": []}
    assert doctor_main([str(tmp_path / "e.yaml")]) == 0
    # edit the YAML: seed 5 disappears (orphaned), every run's lr changes (changed), seed 6 is new (incomplete)
    (tmp_path / "e.yaml").write_text(EXP.replace("seed: [1, 2, 3, 4, 5]", "seed: [1, 2, 3, 4, 6]")
                                     .replace("value: 100}}", "value: 100}, lr: 0.002}"))
    new = load_experiment(tmp_path / "e.yaml")
    report = diagnose(new)
    assert [o["run_id"] for o in report["orphaned"]] == ["seed~5"]
    assert sorted(c["run_id"] for c in report["changed"]) == ["seed~1", "seed~2", "seed~3", "seed~4"]
    assert {(i["run_id"], i["stage"]) for i in report["incomplete"]} == {("seed~6", "pretrain")}
    capsys.readouterr()
    assert doctor_main([str(tmp_path / "e.yaml"), "--json"]) == 1
    assert json.loads(capsys.readouterr().out)["orphaned"][0]["run_id"] == "seed~5"
