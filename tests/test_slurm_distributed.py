"""A 2-task SLURM job trains with DDP: through `snakemake --profile slurm` on the local cluster
(scripts/local-slurm.sh), no mocks.

Skipped when no cluster answers, unless METAPRETRAIN_REQUIRE_SLURM=1 (CI), where a missing cluster fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, require_slurm_cluster, shakespeare_experiment
from metapretrain import paths
from metapretrain.launch import job_records, slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BIN = Path(sys.executable).parent


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A usable cluster: the controller answers, accounting works, a node is up."""
    require_slurm_cluster(gpu=False)


def ddp_experiment(tmp_path: Path, data_root: Path) -> Path:
    """One DDP run of the micro model on a small corpus, 2 tasks x 1 CPU, pretrain only."""
    cfg = shakespeare_experiment("slurm-ddp", data_root, max_documents=2000)
    d = cfg["defaults"]
    d["train"].update({"budget": {"unit": "steps", "value": 12}, "batch_size": 8, "seq_len": 64, "eval_every": 6,
                       "eval_batches": 2, "warmup_steps": 2, "log_every": 1, "device": "cpu",
                       "checkpoint": {"every": 6, "log_spaced": 0, "export_hf": "none"},
                       "distributed": {"strategy": "ddp"}})
    d["finetune"]["enabled"] = False
    d["dynamics"] = {"enabled": False}
    d["launch"] = {"launcher": "local", "slurm": {"time_min": 10, "tasks_per_node": 2, "gpus_per_node": 0,
                                                  "cpus_per_task": 1}}
    d["wandb"] = {"mode": "disabled"}
    cfg["grid"] = {"method": {"ddp": {"meta.learner": "none"}}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def job_rows(job_id: str) -> list[dict]:
    """sacct rows of the job and its steps, once the job has ended in accounting (it lags the controller)."""
    fields = ["JobID", "State", "NTasks", "AllocCPUS"]
    deadline = time.monotonic() + 30
    while True:
        out = slurm._run(["sacct", "-n", "-P", "-j", job_id, "-o", ",".join(fields)])
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]
        main = [r for r in rows if r["JobID"] == job_id]
        if (main and main[0]["State"].split()[0] in slurm.TERMINAL_STATES) or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def losses(run_dir: Path) -> list[tuple]:
    records = [json.loads(line) for line in paths.metrics_file(run_dir).read_text().splitlines()]
    return [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in records if r["kind"] in ("train", "eval")]


def test_two_task_ddp_job_through_the_profile_trains_like_one_process(tmp_path, data_root, monkeypatch):
    """`snakemake --profile slurm` submits the pretrain stage as one job of 2 tasks; the tasks form a DDP group
    (ranks from submitit), rank 0 alone writes metrics, and the run equals one local process with the same
    global batch."""
    exp_file = ddp_experiment(tmp_path, data_root)
    env = dict(os.environ, WANDB_MODE="disabled", PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop(paths.RESULTS_ENV, None)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    cmd = [str(BIN / "snakemake"), "--profile", "slurm", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(exp_file)]
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    exp_dir = tmp_path / "results" / "slurm-ddp"
    if done.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-3000:]}" for p in exp_dir.rglob("*.log"))
        pytest.fail(f"snakemake --profile slurm failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}\n{logs}")
    run_dir = exp_dir / "runs" / "method~ddp"
    assert json.loads((paths.pretrain_dir(run_dir) / "done.json").read_text())["final_step"] == 12

    rec = job_records.read_record(run_dir, "pretrain")
    assert rec.launcher == "slurm" and rec.state == "COMPLETED"
    rows = job_rows(rec.job_id)
    main = [r for r in rows if r["JobID"] == rec.job_id]
    assert main and main[0]["State"] == "COMPLETED" and main[0]["AllocCPUS"] == "2", rows
    assert any(r["NTasks"] == "2" and r["State"] == "COMPLETED" for r in rows if r["JobID"] != rec.job_id), rows
    log = paths.log_file(run_dir, "pretrain").read_text()
    assert "rank 0 of 2 (ddp, submitit)" in log and "rank 1 of 2 (ddp, submitit)" in log, log[-3000:]

    # rank 0 alone wrote metrics: each train step once
    got = losses(run_dir)
    assert [s for k, s, _ in got if k == "train"] == list(range(1, 13))

    # The same config in one local process (same global batch 8) gives the same losses.
    from metapretrain.train.stage import train_run

    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    data_dir = next(p.parent for p in exp_dir.rglob("done.json") if "runs" not in p.relative_to(exp_dir).parts)
    ref = tmp_path / "ref"
    ref.mkdir()
    for name in ("config.resolved.yaml", "run.json"):
        shutil.copy(run_dir / name, ref / name)
    train_run(str(ref), str(data_dir))
    want = losses(ref)
    assert [(k, s) for k, s, _ in got] == [(k, s) for k, s, _ in want]
    assert [v for _, _, v in got] == pytest.approx([v for _, _, v in want], rel=1e-5)
