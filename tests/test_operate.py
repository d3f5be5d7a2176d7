"""Operating a grid: one W&B identity per run across kills, log-friendly progress, status of a live run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpers import TRAIN_CHILD, child_env, make_run, records
from metapretrain import checkpoint as ckpt
from metapretrain.wandb_run import stable_run_id


def _start_paused(run: Path, tok: Path, pause_at: int, env: dict) -> subprocess.Popen:
    """A real `train_run` subprocess that stops (alive) right after update `pause_at`."""
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, str(run), str(tok)], env=dict(env, PAUSE_AT=str(pause_at)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:  # READY once paused, EOF if the child died first
        if line.strip() == "READY":
            return proc
    proc.wait(timeout=60)
    raise AssertionError(f"training child exited with {proc.returncode} before step {pause_at}")


@pytest.mark.slow
def test_killed_and_resumed_run_is_one_wandb_run(tmp_path, tok_dir):
    pytest.importorskip("wandb")
    wandb_dir = tmp_path / "wandb"
    env = child_env(WANDB_MODE="offline", WANDB_DIR=str(wandb_dir))
    run = make_run(tmp_path, "killed", wandb={"mode": "offline"}, train={"budget": {"value": 12}})
    proc = _start_paused(run, tok_dir, 6, env)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert ckpt.latest_checkpoint(run).step == 4 and not (run / "pretrain" / "done.json").exists()
    subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(run), str(tok_dir)], env=env, check=True, timeout=300,
                   capture_output=True)
    assert (run / "pretrain" / "done.json").exists()

    wid = (run / "pretrain" / "wandb_id").read_text().strip()
    assert wid == stable_run_id("test", "killed")
    run_dirs = [p for p in wandb_dir.rglob("offline-run-*") if p.is_dir()]
    assert len(run_dirs) >= 2, run_dirs  # one directory per attempt ...
    assert all(p.name.endswith(f"-{wid}") for p in run_dirs), run_dirs  # ... all carrying the run's one id


@pytest.mark.slow
def test_progress_in_a_log_file_is_bounded_plain_lines(tmp_path, tok_dir):
    """200 updates with stdout redirected to a file: periodic plain lines, never carriage returns."""
    run = make_run(tmp_path, "long", train={"budget": {"value": 200}, "eval_every": 100, "log_every": 50,
                                            "progress_every_s": 2, "checkpoint": {"every": 100, "log_spaced": 0,
                                                                                  "export_hf": "none"}})
    log = tmp_path / "pretrain.log"
    t0 = time.monotonic()
    with open(log, "w") as fh:
        subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(run), str(tok_dir)], env=child_env(), check=True,
                       timeout=600, stdout=fh, stderr=subprocess.STDOUT)
    wall = time.monotonic() - t0
    text = log.read_text()
    assert "\r" not in text
    lines = text.splitlines()
    progress = [ln for ln in lines if ln.startswith("[pretrain")]
    # one line per progress_every_s at most, plus the final one; never one per step
    assert 1 <= len(progress) <= wall / 2 + 2, (len(progress), wall)
    assert len(lines) < 100, len(lines)
    assert [r["step"] for r in records(run, "train")][-1] == 200


@pytest.mark.slow
def test_status_shows_a_live_local_run(tmp_path, tok_dir):
    """`metapretrain status` on an experiment whose pretrain job is alive: running, with step and loss."""
    exp_file = tmp_path / "e.yaml"
    exp_file.write_text("experiment: live\ndefaults:\n  finetune: {enabled: false}\n  dynamics: {enabled: false}\n")
    from metapretrain.grid import load_experiment
    from metapretrain.grid_cli import write_run_files

    results = tmp_path / "results"
    env = child_env(METAPRETRAIN_RESULTS=str(results))
    os.environ["METAPRETRAIN_RESULTS"] = str(results)
    try:
        exp = load_experiment(exp_file)
        (r,) = exp.runs
        write_run_files(exp.name, r)
    finally:
        del os.environ["METAPRETRAIN_RESULTS"]
    run = results / "live" / "runs" / r.run_id
    # The tiny model of the training tests, in this experiment's run directory.
    tiny = make_run(tmp_path, "template", train={"budget": {"value": 12}})
    (run / "config.resolved.yaml").write_text((tiny / "config.resolved.yaml").read_text())
    (run / "logs").mkdir(exist_ok=True)
    # What the launcher records for a job running in this machine's process table.
    proc = _start_paused(run, tok_dir, 6, env)
    try:
        (run / "logs" / "pretrain.job.json").write_text(json.dumps(
            {"launcher": "local", "job_id": str(proc.pid), "pid": proc.pid, "state": "RUNNING",
             "host": os.uname().nodename, "stage": "pretrain"}))
        out = subprocess.run([str(Path(sys.executable).parent / "metapretrain"), "status", str(exp_file), "--json"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        rows = {(x["run_id"], x["stage"]): x for x in json.loads(out.stdout)["rows"]}
        row = rows[(r.run_id, "pretrain")]
        assert row["state"] == "running", row
        # How far it got, read from its metrics.jsonl: paused after update 6, whose record the loop
        # writes after `update` returns, so the last record on disk is step 5.
        step = row["progress"]["step"]
        assert step == 5, row
        assert f"step {step}" in row["detail"] and str(proc.pid) in row["detail"], row
    finally:
        proc.kill()
        proc.wait(timeout=60)


def test_resume_refuses_checkpoints_of_another_config(tmp_path, tok_dir):
    """Editing a training key of a grid keeps the run id: resuming must refuse, not splice two configs."""
    import yaml

    from metapretrain.config.errors import ConfigError
    from metapretrain.train.stage import train_run

    run = make_run(tmp_path, "edited", train={"budget": {"value": 4}})
    train_run(str(run), str(tok_dir))
    cfg_file = run / "config.resolved.yaml"
    cfg = yaml.safe_load(cfg_file.read_text())
    before = cfg_file.read_text()

    (run / "pretrain" / "done.json").unlink()  # what Snakemake does before rerunning a changed rule
    cfg["train"]["lr"] = 1.0e-2
    cfg_file.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError) as info:
        train_run(str(run), str(tok_dir))
    assert info.value.key == "train.lr" and "0.003 -> 0.01" in str(info.value) and str(run) in str(info.value)
    assert not (run / "pretrain" / "done.json").exists()

    # Extending the budget (or changing how it runs) is a legitimate continuation.
    cfg_file.write_text(before)
    cfg = yaml.safe_load(before)
    cfg["train"]["budget"]["value"] = 6
    cfg["train"]["log_every"] = 2
    cfg_file.write_text(yaml.safe_dump(cfg))
    train_run(str(run), str(tok_dir))
    assert [r["step"] for r in records(run, "train")][-1] == 6
