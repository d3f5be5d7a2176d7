"""`metapretrain status` on fixture run directories in every state."""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import seed_grid, wait_until
from metapretrain import paths
from metapretrain.grid import load_experiment
from metapretrain.status import collect
from metapretrain.status import main as status_main

EXP = seed_grid("st", steps=100, seeds=5)


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


def test_an_edit_of_the_experiment_file_shows_changed_with_the_key(exp, tmp_path, capsys):
    """status, not only doctor, says a done stage ran under another config, and which key differs."""
    from metapretrain.grid_cli import write_run_files

    for run in exp.runs:
        write_run_files("st", run)
        for d in (paths.pretrain_dir(paths.run_dir("st", run.run_id)), paths.tokenize_dir("st", run.tok_id)):
            d.mkdir(parents=True, exist_ok=True)
            (d / "done.json").write_text("{}")
    _write_metrics(paths.run_dir("st", "seed~2"), 40)
    (paths.pretrain_dir(paths.run_dir("st", "seed~2")) / "done.json").unlink()  # seed 2 died mid-run
    assert {r.state for r in collect(exp)} == {"done", "stale"}
    (tmp_path / "e.yaml").write_text(EXP.replace("value: 100}}", "value: 100}, lr: 0.002}"))
    assert status_main([str(tmp_path / "e.yaml"), "--json"]) == 0
    rows = {(r["run_id"], r["stage"]): r for r in json.loads(capsys.readouterr().out)["rows"]}
    pre = rows[("seed~1", "pretrain")]
    assert pre["state"] == "changed" and pre["changes"] == [{"key": "train.lr", "old": 0.001, "new": 0.002}]
    assert "train.lr 0.001 -> 0.002" in pre["detail"] and "refuses to resume its checkpoints" in pre["detail"]
    assert rows[("seed~1", "tokenize")]["state"] == "done"  # tokenization reads none of the changed keys
    stale = rows[("seed~2", "pretrain")]
    assert stale["state"] == "stale" and "started under another config" in stale["detail"]
    assert status_main([str(tmp_path / "e.yaml")]) == 0
    text = capsys.readouterr().out
    assert "4 changed" in text and "train.lr 0.001 -> 0.002" in text
    # A key a run may change between attempts (how often it evaluates): the rerun continues the run.
    (tmp_path / "e.yaml").write_text(EXP.replace("value: 100}}", "value: 100}, eval_every: 7}"))
    pre = next(r for r in collect(load_experiment(tmp_path / "e.yaml")) if r.stage == "pretrain")
    assert pre.state == "changed" and pre.detail.endswith("; a rerun redoes it"), pre.detail
    # Keys outside a run's identity (launch, wandb) change nothing.
    (tmp_path / "e.yaml").write_text(EXP.replace("defaults:\n", "defaults:\n  launch: {max_requeues: 7}\n"))
    assert {r.state for r in collect(load_experiment(tmp_path / "e.yaml"))} == {"done", "stale"}


SLOW_SNAKEFILE = """rule all:
    input: "out"

rule wait:
    output: "out"
    shell: "while [ ! -e release ]; do sleep 0.1; done; touch {output}"
"""


def test_a_killed_drivers_lock_is_reported_stale_with_what_to_do(exp, tmp_path, capsys):
    """A real Snakemake driver holds its lock; after kill -9 the lock stays, and status says to unlock."""
    import shutil
    import signal
    from pathlib import Path

    from metapretrain.workflow_lock import inspect

    snakemake = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"
    wf = tmp_path / "wf"
    wf.mkdir()
    (wf / "Snakefile").write_text(SLOW_SNAKEFILE)
    assert inspect(wf) is None
    driver = subprocess.Popen([snakemake, "--cores", "1", "-d", str(wf), "-s", str(wf / "Snakefile")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        lock = wait_until(lambda: (x := inspect(wf)) and x.drivers and x, 120, "the driver to lock its directory",
                          poll_s=0.1)
        assert not lock.stale and [d.pid for d in lock.drivers] == [driver.pid]
        assert status_main([str(tmp_path / "e.yaml"), "--json", "-d", str(wf)]) == 0
        live = json.loads(capsys.readouterr().out)["snakemake_lock"]
        assert live["stale"] is False and f"pid {driver.pid}" in live["advice"]

        os.kill(driver.pid, signal.SIGKILL)
        driver.wait()
        lock = inspect(wf)
        assert lock is not None and lock.stale and lock.drivers == []
        assert status_main([str(tmp_path / "e.yaml"), "-d", str(wf)]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "stale Snakemake lock" in text and "snakemake --unlock" in text and "reattached" in text
        # A new driver on other targets runs beside the stale lock, which stays stale.
        (wf / "Other").write_text('rule other:\n    output: "other"\n    shell: "while [ ! -e release ]; do sleep 0.1; done; touch {output}"\n')
        second = subprocess.Popen([snakemake, "--cores", "1", "-d", str(wf), "-s", str(wf / "Other")],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            both = wait_until(lambda: (x := inspect(wf)) and len(x.sets) == 2 and x.drivers and x, 120,
                              "the second lock", poll_s=0.1)
            assert [s.stale for s in both.sets] == [True, False] and [d.pid for d in both.drivers] == [second.pid]
        finally:
            (wf / "release").touch()
            assert second.wait(timeout=120) == 0
        subprocess.run([snakemake, "--unlock", "-d", str(wf), "-s", str(wf / "Snakefile")], check=True,
                       capture_output=True, timeout=120)
        assert inspect(wf) is None
    finally:
        (wf / "release").touch()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(driver.pid, signal.SIGKILL)  # the killed driver's orphaned job
        driver.wait()
