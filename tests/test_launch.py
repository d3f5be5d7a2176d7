"""The launcher without a cluster: SLURM settings from config, debug and local launches, job records, cancel.

The same code paths on a real SLURM cluster are in test_slurm.py.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from metapretrain import paths
from metapretrain.config.errors import ConfigError
from metapretrain.config.load import run_config_from_dict
from metapretrain.launch import job_records, probe_job, run, slurm
from metapretrain.launch.run import _failure_text

PROBE = "metapretrain.launch.probe_job:count"


def cfg(launcher="debug", **slurm_settings):
    return run_config_from_dict({"model": {"preset": "micro"},
                                 "launch": {"launcher": launcher, "slurm": slurm_settings}})


def test_stage_overrides_apply_to_their_stage_only():
    s = cfg(time_min=60, gpus_per_node=4, partition="gpu",
            stages={"finetune": {"time_min": 30, "gpus_per_node": 1}}).launch.slurm
    ft = slurm.settings_for(s, "finetune/Danish-DDT~head")
    assert (ft.time_min, ft.gpus_per_node, ft.partition) == (30, 1, "gpu")
    pre = slurm.settings_for(s, "pretrain")
    assert (pre.time_min, pre.gpus_per_node) == (60, 4)


def test_bad_stage_override_names_the_key():
    s = cfg(stages={"pretrain": {"time_min": 0}}).launch.slurm
    with pytest.raises(ConfigError, match=r"launch\.slurm\.stages\.pretrain\.time_min"):
        slurm.settings_for(s, "pretrain")


def test_executor_parameters_carry_every_setting():
    s = cfg(partition="gpu", account="proj", qos="high", constraint="a100", time_min=90, nodes=2, tasks_per_node=4,
            gpus_per_node=4, cpus_per_task=8, mem_gb=256, signal_delay_s=120,
            extra={"mail-type": "END", "exclusive": True}).launch.slurm
    p = slurm.executor_parameters(s, "exp/run:pretrain")
    assert p == {"name": "exp/run:pretrain", "timeout_min": 90, "nodes": 2, "tasks_per_node": 4, "cpus_per_task": 8,
                 "slurm_signal_delay_s": 120, "gpus_per_node": 4, "mem_gb": 256, "slurm_partition": "gpu",
                 "slurm_account": "proj", "slurm_qos": "high", "slurm_constraint": "a100",
                 "slurm_additional_parameters": {"mail_type": "END", "exclusive": True}}
    # no GPUs: no GPU request at all (a cluster without GRES refuses any gres spec)
    assert "gpus_per_node" not in slurm.executor_parameters(cfg(gpus_per_node=0).launch.slurm, "x")


def test_sbatch_script_asks_for_what_config_says(tmp_path, monkeypatch):
    """submitit's own rendering of our parameters: the #SBATCH lines a cluster will see.

    Rendering needs no cluster, but submitit refuses to build a SLURM executor unless `srun` is on
    PATH; on a machine without SLURM an inert `srun` stands in (nothing is submitted or run).
    """
    import shutil

    import submitit

    if shutil.which("srun") is None:
        stub = tmp_path / "bin" / "srun"
        stub.parent.mkdir()
        stub.write_text("#!/bin/sh\nexit 1\n")
        stub.chmod(0o755)
        monkeypatch.setenv("PATH", f"{stub.parent}{os.pathsep}{os.environ['PATH']}")
    s = cfg(partition="gpu", account="proj", gpus_per_node=2, time_min=90, signal_delay_s=120,
            extra={"mail-type": "END"}).launch.slurm
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**slurm.executor_parameters(s, "exp/run:pretrain"))
    script = executor._executor._make_submission_file_text("true", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --account=proj", "#SBATCH --gpus-per-node=2",
                 "#SBATCH --time=90", "#SBATCH --signal=USR2@120", "#SBATCH --mail-type=END",
                 "#SBATCH --job-name=exp/run:pretrain"):
        assert line in script, line


def test_model_size_gets_its_own_resources_through_a_zip_group():
    """Per-size SLURM settings are grid values: a large run asks for more than a tiny one."""
    from metapretrain.grid import load_experiment

    exp = load_experiment(data={"experiment": "z", "defaults": {"launch": {"launcher": "slurm"}}, "zip": {"size": {
        "model.preset": ["tiny", "large"], "launch.slurm.time_min": [60, 1800],
        "launch.slurm.stages.pretrain.gpus_per_node": [1, 4]}}})
    got = {r.config["model"]["preset"]: slurm.settings_for(r.typed.launch.slurm, "pretrain") for r in exp.runs}
    assert (got["tiny"].time_min, got["tiny"].gpus_per_node) == (60, 1)
    assert (got["large"].time_min, got["large"].gpus_per_node) == (1800, 4)
    ft = slurm.settings_for(exp.runs[1].typed.launch.slurm, "finetune/Danish-DDT~head")
    assert ft.gpus_per_node == 1  # the pretrain-only override stays with pretrain


def test_debug_launch_runs_in_process_and_records_the_job(tmp_path):
    assert run.run_stage("pretrain", tmp_path, cfg("debug"), PROBE,
                         {"state_file": str(tmp_path / "s.json"), "steps": 3, "step_s": 0}) == 0
    assert json.loads((tmp_path / "s.json").read_text())["digest"] == probe_job.expected_digest(3)
    rec = job_records.read_record(tmp_path, "pretrain")
    assert rec.launcher == "debug" and rec.state == "COMPLETED" and rec.job_name == f"{tmp_path.name}:pretrain"
    assert paths.log_file(tmp_path, "pretrain").read_text().startswith("===== pretrain attempt 1 | in-process")


def test_local_launch_resumes_and_reports_failures_in_one_line(tmp_path, capfd):
    state = tmp_path / "s.json"
    state.write_text(json.dumps({"step": 2, "digest": probe_job.expected_digest(2), "attempts": []}))
    assert run.run_stage("finetune/X~head", tmp_path, cfg("local"), PROBE,
                         {"state_file": str(state), "steps": 4, "step_s": 0}) == 0
    final = json.loads(state.read_text())
    assert final["digest"] == probe_job.expected_digest(4) and final["attempts"][0]["start_step"] == 2
    log = paths.log_file(tmp_path, "finetune/X~head")
    assert log.parent.name == "finetune" and "local job" in log.read_text().splitlines()[0]

    state.write_text("{not json")
    assert run.run_stage("finetune/X~head", tmp_path, cfg("local"), PROBE,
                         {"state_file": str(state), "steps": 4, "step_s": 0}) == 1
    err = capfd.readouterr().err
    assert "failed: local job" in err and f"InputError: {state}:1:2: not valid JSON" in err and str(log) in err
    assert job_records.read_record(tmp_path, "finetune/X~head").state == "FAILED"


def test_bad_target_is_refused_before_launch(tmp_path):
    with pytest.raises(ValueError, match="package.module:function"):
        run.run_stage("pretrain", tmp_path, cfg(), "metapretrain.launch.probe_job.count")
    with pytest.raises(ValueError, match="not importable"):
        run.run_stage("pretrain", tmp_path, cfg(), "metapretrain.nope:count")


def test_failure_text_picks_the_exception_line():
    wrapped = RuntimeError("Job (task=0) failed during processing with trace:\n----\nTraceback (most recent call "
                           "last):\n  File \"x.py\", line 1, in f\nmod.SomeError: it broke: badly\n----\n"
                           "You can check full logs with 'job.stderr(0)' or at paths:\n  - /x.err\n")
    assert _failure_text(wrapped) == "mod.SomeError: it broke: badly"
    assert _failure_text(RuntimeError("sbatch: error: Invalid partition name specified")) == \
        "sbatch: error: Invalid partition name specified"


def test_unreadable_job_record_is_ignored_with_a_warning(tmp_path, capsys):
    path = job_records.record_path(tmp_path, "pretrain")
    path.parent.mkdir(parents=True)
    path.write_text("{broken")
    assert job_records.read_record(tmp_path, "pretrain") is None
    assert "ignoring unreadable job record" in capsys.readouterr().err


def test_job_name_is_experiment_run_and_stage(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"run_id": "method~fomaml", "experiment": "demo"}))
    assert job_records.job_name(tmp_path, "pretrain") == "demo/method~fomaml:pretrain"


def test_cancel_without_slurm_says_so(tmp_path, monkeypatch, capsys):
    from metapretrain.launch.cancel import main

    monkeypatch.setenv("PATH", str(tmp_path))  # no squeue/sacct/scancel
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path / "results"))
    (tmp_path / "e.yaml").write_text("experiment: c\ngrid: {seed: [1, 2]}\n")
    assert main([str(tmp_path / "e.yaml")]) == 1
    err = capsys.readouterr().err
    assert "cannot query SLURM" in err and "'squeue' is not on PATH" in err


def test_slurm_profile_is_where_snakemake_looks_and_selects_slurm():
    """`snakemake --profile slurm` from the repo root reads ./slurm/config.yaml; it must switch the launcher."""
    import yaml

    from metapretrain.config.overrides import overrides_from_snakemake

    repo = Path(__file__).resolve().parents[1]
    profile = yaml.safe_load((repo / "slurm" / "config.yaml").read_text())
    entries = dict(item.split("=", 1) for item in profile["config"])
    overrides, _ = overrides_from_snakemake(entries)
    assert overrides["launch.launcher"] == "slurm"
    assert profile["rerun-incomplete"] is True and profile["latency-wait"] >= 30 and profile["cores"] >= 4
    # Stages submit from the driver's node: no executor plugin that would run rules themselves as SLURM jobs.
    assert "executor" not in profile


def test_slurm_launch_without_slurm_fails_in_one_line(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sbatch, squeue, sacct
    kwargs = {"state_file": str(tmp_path / "s.json"), "steps": 1, "step_s": 0}
    assert run.run_stage("pretrain", tmp_path, cfg("slurm"), PROBE, kwargs) == 1
    assert "launch.launcher is slurm, but sbatch and srun are not on PATH" in capfd.readouterr().err
    # with a job recorded by an earlier driver, the state query fails just as clearly
    job_records.write_record(tmp_path, job_records.JobRecord(stage="pretrain", run_id="r", experiment=None, job_name="r:pretrain",
                                               launcher="slurm", job_id="7", folder=str(tmp_path), submitted_at=""))
    assert run.run_stage("pretrain", tmp_path, cfg("slurm"), PROBE, kwargs) == 1
    assert "pretrain of run" in (err := capfd.readouterr().err) and "'squeue' is not on PATH" in err


def test_local_job_computes_with_the_threads_it_was_given(tmp_path):
    """`--threads` (the rule's `{threads}`) beats launch.threads.<stage>; the job sets torch's pools to it."""
    state = tmp_path / "s.json"
    two = run_config_from_dict({"model": {"preset": "micro"}, "launch": {"launcher": "local", "threads": {"pretrain": 2}}})
    assert run.run_stage("pretrain", tmp_path, two, PROBE, {"state_file": str(state), "steps": 1, "step_s": 0},
                         threads=1) == 0
    assert json.loads(state.read_text())["attempts"][-1]["threads"] == [1, 1]
    assert run.run_stage("pretrain", tmp_path, two, PROBE, {"state_file": str(state), "steps": 2, "step_s": 0}) == 0
    assert json.loads(state.read_text())["attempts"][-1]["threads"] == [2, 2]
    headers = [x for x in paths.log_file(tmp_path, "pretrain").read_text().splitlines() if x.startswith("=====")]
    assert "| threads 1 intra-op / 1 inter-op |" in headers[0] and "| threads 2 intra-op / 2 inter-op |" in headers[1]


def test_done_json_records_the_threads(tmp_path):
    import torch

    from metapretrain.io import write_done

    (tmp_path / "out.txt").write_text("x")
    record = json.loads(write_done(tmp_path, "probe", None, ["out.txt"]).read_text())
    assert record["threads"] == {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}


def test_log_follower_copies_new_complete_lines(tmp_path):
    import io

    from metapretrain.progress import LogFollower

    log = tmp_path / "x.log"
    log.write_text("an earlier attempt\n")
    out = io.StringIO()
    f = LogFollower(log, out)
    assert f.poll() == 0 and out.getvalue() == ""  # nothing new: the earlier attempt is not replayed
    with open(log, "a") as fh:
        fh.write("[pretrain] 1/4 steps\n[pretrain] 2/4")
    assert f.poll() == 1 and out.getvalue() == "[pretrain] 1/4 steps\n"  # the torn line waits
    with open(log, "a") as fh:
        fh.write(" steps\ndone, no newline")
    assert f.poll() == 1 and out.getvalue().endswith("[pretrain] 2/4 steps\n")
    assert f.poll(final=True) == 1 and out.getvalue().endswith("done, no newline\n")
    later, out = LogFollower(tmp_path / "later.log", io.StringIO()), None
    assert later.poll() == 0  # not there yet
    (tmp_path / "later.log").write_text("first line\n")
    assert later.poll() == 1 and later.stream.getvalue() == "first line\n"


def _on_a_terminal(monkeypatch, func):
    """Run `func()` with sys.stderr on a pseudo-terminal; returns (its result, what the terminal showed)."""
    import os
    import pty
    import threading

    master, slave = pty.openpty()
    shown = bytearray()

    def read():
        while True:
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the slave side is closed
                return
            if not chunk:
                return
            shown.extend(chunk)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    tty = os.fdopen(slave, "w", buffering=1)
    monkeypatch.setattr(sys, "stderr", tty)
    try:
        result = func()
    finally:
        monkeypatch.undo()
        tty.close()
        reader.join(timeout=60)
        os.close(master)
    return result, shown.decode().replace("\r\n", "\n")


def test_local_job_output_streams_to_a_terminal_and_still_goes_to_the_log(tmp_path, monkeypatch, capfd):
    state = tmp_path / "s.json"
    kwargs = {"state_file": str(state), "steps": 3, "step_s": 0}
    code, shown = _on_a_terminal(monkeypatch, lambda: run.run_stage("pretrain", tmp_path, cfg("local"), PROBE, kwargs))
    assert code == 0
    log = paths.log_file(tmp_path, "pretrain").read_text()
    for line in ("===== pretrain attempt 1", "[probe] attempt 1 starts at step 0 of 3", "[probe] done at step 3"):
        assert line in shown and line in log, (line, shown)
    assert "(shown below as it comes)" in shown
    # Not a terminal (Snakemake sends stderr to the rule's log): the job's lines only go to the stage log.
    state.unlink()
    capfd.readouterr()
    assert run.run_stage("pretrain", tmp_path, cfg("local"), PROBE, kwargs) == 0
    err = capfd.readouterr().err
    assert "started local job" in err and "[probe]" not in err


def test_slurm_job_computes_with_its_cpus_per_task(tmp_path, monkeypatch):
    """Under SLURM the rule's one thread only waits; the job gets the stage's cpus_per_task."""
    given = []
    monkeypatch.setattr(run, "_run_slurm", lambda job, *args: given.append(job.threads))
    c = cfg("slurm", cpus_per_task=8, stages={"finetune": {"cpus_per_task": 3}})
    kwargs = {"state_file": str(tmp_path / "s.json"), "steps": 1}
    assert run.run_stage("pretrain", tmp_path, c, PROBE, kwargs, threads=1) == 0
    assert run.run_stage("finetune/X~head", tmp_path, c, PROBE, kwargs, threads=1) == 0
    assert given == [8, 3]
