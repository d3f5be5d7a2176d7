"""The launcher on a real SLURM cluster (scripts/local-slurm.sh): no mocks of SLURM or submitit.

Skipped when no cluster answers, unless METAPRETRAIN_REQUIRE_SLURM=1 (CI),
where a missing cluster is a failure. Jobs run `metapretrain.launch.probe_job:count`
(a resumable counter) or the real pretrain stage, and always ask for a GPU
(the local cluster has two fake ones), so `sacct` shows gres/gpu allocated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from helpers import REPO, require_slurm_cluster, shakespeare_experiment, wait_until
from metapretrain import paths
from metapretrain.config.load import run_config_from_dict
from metapretrain.launch import job_records, probe_job, run, slurm

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

BIN = Path(sys.executable).parent
PROBE = "metapretrain.launch.probe_job:count"


@pytest.fixture(scope="module", autouse=True)
def cluster():
    """A usable cluster: the controller answers, accounting works, a GPU node is up."""
    require_slurm_cluster(gpu=True)


@pytest.fixture(autouse=True)
def fast_polling(monkeypatch):
    monkeypatch.setattr(run, "POLL_S", 1.0)


def launch_cfg(max_requeues: int = 3, time_min: int = 5, signal_delay_s: int = 50, extra: dict | None = None,
               **more):
    return run_config_from_dict({
        "model": {"preset": "micro"},
        "launch": {"launcher": "slurm", "max_requeues": max_requeues,
                   "slurm": {"time_min": time_min, "signal_delay_s": signal_delay_s, "gpus_per_node": 1,
                             "extra": extra or {}}},
        **more,
    })


def count(run_dir: Path, cfg, steps: int, step_s: float = 1.0) -> int:
    return run.run_stage("pretrain", run_dir, cfg, PROBE,
                         {"state_file": str(run_dir / "state.json"), "steps": steps, "step_s": step_s})


def in_thread(func, *args) -> tuple[threading.Thread, dict]:
    out: dict = {}

    def body():
        out["rc"] = func(*args)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def state(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / "state.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


def since_now() -> tuple[str, str]:
    """sacct's `-S` option for jobs from now on (job names repeat across test sessions on one cluster)."""
    time.sleep(1)  # sacct's resolution is a second: keep a previous test's last job out
    return "-S", time.strftime("%Y-%m-%dT%H:%M:%S")


def sacct(*args: str) -> list[dict]:
    """Accounting rows of the selected jobs, once accounting has caught up with their end (it lags the controller)."""
    fields = ["JobID", "JobName", "State", "AllocTRES"]
    cmd = ["sacct", "-X", "-n", "-P", "-o", ",".join(f + ("%200" if f != "JobID" else "") for f in fields), *args]
    deadline = time.monotonic() + 30
    while True:
        out = slurm._run(cmd)
        rows = [dict(zip(fields, line.split("|"), strict=True)) for line in out.splitlines() if line.strip()]
        settled = all(r["State"].split()[0] in slurm.TERMINAL_STATES and r["JobName"] != "allocation" for r in rows)
        if settled or time.monotonic() > deadline:
            return rows
        time.sleep(0.5)


def test_gpu_job_completes_with_gpu_allocated(tmp_path, capfd):
    assert count(tmp_path, launch_cfg(), steps=3, step_s=0.2) == 0
    rec = job_records.read_record(tmp_path, "pretrain")
    assert rec.launcher == "slurm" and rec.state == "COMPLETED"
    [row] = sacct("-j", rec.job_id)
    assert row["State"] == "COMPLETED" and "gres/gpu=1" in row["AllocTRES"], row
    # the job is named after the run and stage (asked of the controller: accounting may still say "allocation")
    name = slurm._run(["squeue", "-h", "-t", "all", "-j", rec.job_id, "-o", "%j"]).strip()
    assert name == f"{tmp_path.name}:pretrain"
    done = state(tmp_path)
    assert done["step"] == 3 and done["digest"] == probe_job.expected_digest(3)
    assert done["attempts"][0]["cuda_visible_devices"] not in (None, "")  # SLURM bound one (fake) GPU
    log = paths.log_file(tmp_path, "pretrain").read_text()
    assert log.splitlines()[0].startswith(f"===== pretrain attempt 1 | SLURM job {rec.job_id} (restart count 0)")
    assert f"submitted SLURM job {rec.job_id}" in capfd.readouterr().err


def test_time_limit_requeues_resumes_and_max_requeues_fails_clearly(tmp_path, capfd):
    """Two jobs at once with a 1-minute limit: one requeues and finishes, one may not requeue (max_requeues=0)."""
    ok, capped = tmp_path / "ok", tmp_path / "capped"
    steps = 45  # longer than the time before SLURM's signal, so the first attempt is always cut short
    t_ok, out_ok = in_thread(count, ok, launch_cfg(max_requeues=5, time_min=1, signal_delay_s=50), steps)
    t_cap, out_cap = in_thread(count, capped, launch_cfg(max_requeues=0, time_min=1, signal_delay_s=50), steps)
    t_cap.join(timeout=150)
    t_ok.join(timeout=240)
    assert not t_ok.is_alive() and not t_cap.is_alive()
    err = capfd.readouterr().err

    assert out_ok["rc"] == 0, err
    final = state(ok)
    assert final["step"] == steps and final["digest"] == probe_job.expected_digest(steps)
    attempts = final["attempts"]
    assert len(attempts) >= 2 and attempts[1]["start_step"] > 0  # resumed, did not restart from zero
    assert [a["restart_count"] for a in attempts] == list(range(len(attempts)))
    job_id = job_records.read_record(ok, "pretrain").job_id
    assert {a["slurm_job_id"] for a in attempts} == {job_id}  # requeued under the same id
    assert [r["State"] for r in sacct("-j", job_id)] == ["COMPLETED"]
    log = paths.log_file(ok, "pretrain").read_text()
    assert "caught SIGUSR2" in log and "requeueing (requeue 1 of at most 5)" in log
    assert f"===== pretrain attempt 2 | SLURM job {job_id} (restart count 1)" in log

    assert out_cap["rc"] == 1
    assert "launch.max_requeues=0" in err and "not requeued again" in err
    assert 0 < state(capped)["step"] < steps  # it saved before failing, so a rerun continues


def test_reattach_after_driver_killed_then_scancel_fails_clearly_and_rerun_resumes(tmp_path, capfd):
    steps = 60  # 30 s: the job must outlive the driver's kill and the reattach; the rerun counts faster
    script = (
        "import sys\n"
        "from metapretrain.config.load import run_config_from_dict\n"
        "from metapretrain.launch import run\n"
        f"cfg = run_config_from_dict({launch_cfg().to_dict()!r})\n"
        f"sys.exit(run.run_stage('pretrain', {str(tmp_path)!r}, cfg, {PROBE!r}, "
        f"{{'state_file': {str(tmp_path / 'state.json')!r}, 'steps': {steps}, 'step_s': 0.5}}))\n"
    )
    driver = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: state(tmp_path).get("step", 0) >= 2, 60, "the job to run")
    finally:
        driver.kill()
        driver.wait()
    job_id = job_records.read_record(tmp_path, "pretrain").job_id
    assert slurm.job_state(job_id) in slurm.LIVE_STATES  # killing the driver left the job alone

    # A second driver reattaches to the live job instead of submitting a duplicate ...
    thread, out = in_thread(count, tmp_path, launch_cfg(), steps, 0.5)
    wait_until(lambda: f"reattaching to SLURM job {job_id}" in capfd.readouterr().err, 30, "the reattach message")
    queued = slurm._run(["squeue", "-h", "--name", f"{tmp_path.name}:pretrain", "-o", "%i"]).split()
    assert queued == [job_id]

    # ... and when the job is cancelled under it, it fails with a message saying so, without hanging.
    slurm.cancel([job_id])
    thread.join(timeout=60)
    assert not thread.is_alive() and out["rc"] == 1
    err = capfd.readouterr().err
    assert f"SLURM job {job_id}" in err and "was cancelled" in err and "rerun to resume" in err
    stopped_at = state(tmp_path)["step"]
    assert 0 < stopped_at < steps

    # Rerunning submits a new job that resumes from the saved state.
    assert count(tmp_path, launch_cfg(), steps, 0.05) == 0
    final = state(tmp_path)
    assert final["digest"] == probe_job.expected_digest(steps)
    assert final["attempts"][-1]["start_step"] >= stopped_at and final["attempts"][-1]["slurm_job_id"] != job_id
    rec = job_records.read_record(tmp_path, "pretrain")
    assert rec.previous == [job_id] and rec.state == "COMPLETED"


def test_status_shows_queued_job_and_cancel_cli_cancels_live_jobs(tmp_path, monkeypatch, capfd):
    from metapretrain.grid import load_experiment
    from metapretrain.grid_cli import write_run_files
    from metapretrain.launch.cancel import main as cancel_main
    from metapretrain.status import collect

    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path / "results"))
    exp_file = tmp_path / "exp.yaml"
    exp_file.write_text(yaml.safe_dump({
        "experiment": f"slurmtest-{tmp_path.name[-8:]}",
        "defaults": {"model": {"preset": "micro"}, "launch": {"launcher": "slurm"}},
        "grid": {"seed": [1, 2]},
    }))
    exp = load_experiment(exp_file)
    rds = {r.run_id: write_run_files(exp.name, r) for r in exp.runs}
    held, running = rds["seed~1"], rds["seed~2"]
    # A held job stays PENDING (queued) until cancelled; the other one really runs.
    t_held, out_held = in_thread(count, held, launch_cfg(extra={"hold": True}), 5)
    t_run, out_run = in_thread(count, running, launch_cfg(), 120)
    wait_until(lambda: state(running).get("step", 0) >= 1, 60, "the second job to run")
    held_id = wait_until(lambda: (job_records.read_record(held, "pretrain") or None) and
                         job_records.read_record(held, "pretrain").job_id, 30, "the held job's record")

    rows = {r.run_id: r for r in collect(exp) if r.stage == "pretrain"}
    assert rows["seed~1"].state == "queued" and rows["seed~1"].job_id == held_id, rows["seed~1"]
    assert held_id in rows["seed~1"].detail
    assert rows["seed~2"].state == "running", rows["seed~2"]

    assert cancel_main([str(exp_file), "--dry-run"]) == 0
    assert "would cancel" in capfd.readouterr().out
    assert cancel_main([str(exp_file), "--runs", "seed~1"]) == 0
    out = capfd.readouterr().out
    assert f"cancelling SLURM job {held_id}" in out and "seed~2" not in out
    t_held.join(timeout=60)
    assert out_held["rc"] == 1 and t_run.is_alive()
    assert cancel_main([str(exp_file)]) == 0
    assert "cancelled 1 SLURM job(s)" in capfd.readouterr().out
    t_run.join(timeout=60)
    assert out_run["rc"] == 1
    assert "was cancelled" in capfd.readouterr().err

    rows = {r.run_id: r for r in collect(exp) if r.stage == "pretrain"}
    assert {k: r.state for k, r in rows.items()} == {"seed~1": "failed", "seed~2": "failed"}
    assert "CANCELLED" in rows["seed~1"].detail
    assert cancel_main([str(exp_file)]) == 0
    assert "no live SLURM jobs" in capfd.readouterr().out


def pretrain_run(tmp_path: Path, name: str, launcher: str, steps: int, **train) -> Path:
    """A tiny hybrid FOMAML pretraining run directory (micro model, 64-token sequences); `train` overrides keys."""
    from metapretrain.grid import load_experiment
    from metapretrain.grid_cli import write_run_files

    defaults = {
        "model": {"preset": "micro"},
        "train": {"budget": {"unit": "steps", "value": steps}, "batch_size": 8, "seq_len": 64, "warmup_steps": 2,
                  "eval_every": 10, "eval_batches": 2, "log_every": 1,
                  "checkpoint": {"every": 10, "log_spaced": 0, "export_hf": "none"}} | train,
        "meta": {"learner": "fomaml", "hybrid_ratio": 0.5, "episode": {"n_way": 4, "k_shot": 2, "q_query": 2,
                 "window": 16}, "head": {"layers": 1, "width": 32}, "inner": {"steps": 2}},
        "launch": {"launcher": launcher, "max_requeues": 2, "slurm": {"time_min": 10}},
        "wandb": {"mode": "disabled"},
    }
    exp = load_experiment(data={"experiment": "slurm-pretrain", "defaults": defaults})
    return write_run_files(exp.name, exp.runs[0], tmp_path / name)


def train_records(run_dir: Path) -> list[dict]:
    lines = paths.metrics_file(run_dir).read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] in ("train", "eval")]


def test_pretrain_preempted_on_slurm_matches_local_run(tmp_path, tokenized_dir, capfd):
    """A real pretraining run signalled mid-run (as SLURM does before a time limit or a preemption) saves,
    is requeued under the same job id, resumes, and ends exactly like the same run done locally.

    Nothing here depends on how fast the machine trains. The first attempt's budget is unreachable
    (10^9 updates), so it can only end by handling the signal, at whatever step N that happens. Before
    the signal is sent, the run's config on disk is given its real budget (40; `train.budget` may change
    between attempts, and the running attempt has already read its config), so the requeued attempt
    trains on to max(N, 40). The local reference run then trains to exactly that step. The schedule's
    length (`decay_steps`) and `compile` are fixed, so neither depends on the budget, and every update is
    evaluated, so both runs log the same records wherever N falls. `scancel --signal=USR2` stands in for
    SLURM's own warning, so the test does not depend on when SLURM's periodic time-limit check fires (the
    probe test above covers a real time limit).
    """
    from metapretrain.config import load_run_config
    from metapretrain.io import atomic_write_text

    steps = 40
    fixed = {"decay_steps": steps, "compile": "off", "eval_every": 1}
    slurm_run = pretrain_run(tmp_path, "slurm", "slurm", 10**9, **fixed)

    def pretrain(run_dir: Path) -> int:
        cfg = load_run_config(paths.resolved_config(run_dir))
        return run.run_stage("pretrain", run_dir, cfg, "metapretrain.train.stage:train_run",
                             {"run_dir": str(run_dir), "data_dir": str(tokenized_dir)})

    def trained_steps(run_dir: Path) -> int:
        try:
            return max((r["step"] for r in train_records(run_dir)), default=0)
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            return 0

    thread, out = in_thread(pretrain, slurm_run)
    wait_until(lambda: trained_steps(slurm_run) >= 12, 120, "pretraining on SLURM to reach step 12")
    resolved = paths.resolved_config(slurm_run)
    cfg = yaml.safe_load(resolved.read_text())
    cfg["train"]["budget"]["value"] = steps
    atomic_write_text(resolved, yaml.safe_dump(cfg, sort_keys=True))
    job_id = job_records.read_record(slurm_run, "pretrain").job_id
    slurm._run(["scancel", "--signal=USR2", job_id])
    thread.join(timeout=240)
    assert not thread.is_alive() and out["rc"] == 0, capfd.readouterr().err

    log = paths.log_file(slurm_run, "pretrain").read_text()
    assert "caught SIGUSR2" in log and "requeueing (requeue 1 of at most 2)" in log, log[-3000:]
    assert "pretrain: resuming from step_" in log and f"SLURM job {job_id} (restart count 1)" in log
    [row] = sacct("-j", job_id)
    assert row["State"] == "COMPLETED" and "gres/gpu=1" in row["AllocTRES"], row
    slurm_records = train_records(slurm_run)
    final = slurm_records[-1]["step"]
    assert final >= steps and final >= 12
    local_run = pretrain_run(tmp_path, "local", "local", final, **fixed)
    assert pretrain(local_run) == 0
    local_records = train_records(local_run)
    losses = [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in slurm_records]
    assert losses == [(r["kind"], r["step"], r.get("loss", r.get("val_loss"))) for r in local_records]
    done = [json.loads((paths.pretrain_dir(d) / "done.json").read_text()) for d in (slurm_run, local_run)]
    assert done[0]["final_val_loss"] == done[1]["final_val_loss"]


def tiny_grid(tmp_path: Path, data_root: Path) -> Path:
    """The default experiment shrunk to seconds per stage: 2 runs, one small corpus file, 30 steps."""
    cfg = shakespeare_experiment("slurm-e2e", data_root, max_documents=4000)
    d = cfg["defaults"]
    d["train"].update({"budget": {"unit": "steps", "value": 30}, "seq_len": 64, "eval_every": 10, "eval_batches": 2,
                       "warmup_steps": 2, "checkpoint": {"every": 10, "log_spaced": 0}})
    d["meta"]["episode"] = {"n_way": 4, "k_shot": 2, "q_query": 2, "window": 16}
    d["finetune"].update({"regimes": ["head"], "max_train_sentences": 100, "max_eval_sentences": 40, "epochs": 1})
    d["launch"] = {"launcher": "local", "slurm": {"time_min": 10}}  # the profile switches the launcher to slurm
    d["wandb"] = {"mode": "offline"}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def test_snakemake_profile_slurm_runs_grid_and_reattaches_after_ctrl_c(tmp_path, data_root):
    """`snakemake --profile slurm`: compute stages go through sbatch with a GPU each; Ctrl-C on the driver
    leaves the jobs running, and the next driver reattaches to them instead of submitting duplicates."""
    import signal

    exp_file = tiny_grid(tmp_path, data_root)
    env = dict(os.environ, WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb"),
               PATH=f"{BIN}:{os.environ['PATH']}")
    env.pop(paths.RESULTS_ENV, None)
    cmd = [str(BIN / "snakemake"), "--profile", "slurm", "-s", str(REPO / "Snakefile"), "-d", str(tmp_path),
           "--configfile", str(exp_file)]
    exp_dir = tmp_path / "results" / "slurm-e2e"
    runs = [exp_dir / "runs" / f"method~{m}" for m in ("vanilla", "fomaml")]

    since = since_now()
    # A shell's background job (`make test &`, nohup) starts with SIGINT ignored, which the driver would inherit
    # and so never see the Ctrl-C: give it the default disposition a terminal's foreground job has.
    first = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        def pretrain_jobs_running():
            recs = [job_records.read_record(r, "pretrain") for r in runs]
            return all(recs) and all(slurm.job_state(r.job_id) == "RUNNING" for r in recs) and recs

        recs = wait_until(pretrain_jobs_running, 180, "both pretrain jobs to run on SLURM")
    finally:
        os.killpg(first.pid, signal.SIGINT)  # Ctrl-C at a terminal signals the whole foreground group
        out, _ = first.communicate(timeout=120)
    first_ids = [r.job_id for r in recs]
    assert all(slurm.job_state(j) in slurm.LIVE_STATES for j in first_ids), out  # Ctrl-C left the jobs alone
    log = paths.log_file(runs[0], "pretrain").read_text()
    assert f"SLURM job {first_ids[0]} ('slurm-e2e/method~vanilla:pretrain') is still live" in log, log[-2000:]

    second = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    if second.returncode != 0:
        logs = "\n".join(f"--- {p}\n{p.read_text()[-2000:]}" for p in exp_dir.rglob("*.log"))
        pytest.fail(f"snakemake --profile slurm failed:\n{second.stdout[-3000:]}\n{second.stderr[-3000:]}\n{logs}")
    for run_dir, job_id in zip(runs, first_ids, strict=True):
        assert f"reattaching to SLURM job {job_id}" in paths.log_file(run_dir, "pretrain").read_text()

    # Every compute stage ran as exactly one SLURM job with a GPU, and none was submitted twice.
    rows = sacct("--name", ",".join(f"slurm-e2e/method~{m}:{stage}" for m in ("vanilla", "fomaml")
                                    for stage in ("pretrain", "finetune/Danish-DDT~head", "dynamics")), *since)
    names = sorted(r["JobName"] for r in rows)
    assert len(names) == 6 and len(set(names)) == 6, rows
    assert all(r["State"] == "COMPLETED" and "gres/gpu=1" in r["AllocTRES"] for r in rows), rows
    assert sorted(r["JobID"] for r in rows if r["JobName"].endswith(":pretrain")) == sorted(first_ids)

    status = subprocess.run([str(BIN / "metapretrain"), "status", str(exp_file), "--json"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    states = {(r["run_id"], r["stage"]): r["state"] for r in json.loads(status.stdout)["rows"]}
    assert set(states.values()) == {"done"}, states
    assert (exp_dir / "figures" / "index.json").exists()
