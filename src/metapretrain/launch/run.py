"""Run a stage's work through submitit: in-process (debug), a subprocess (local) or a SLURM job.

    run_stage("pretrain", RUN, cfg, target="metapretrain.train.stage:train_run", kwargs={...}) -> exit code

The job side (`StageJob`, `guard`) lives in launch/stage_job.py; this module is the
submitting process: it reattaches to a live SLURM job recorded for the same
run and stage instead of submitting a duplicate, waits with bounded SLURM
queries (a cancelled job is noticed, never waited on forever), turns every
way a job can end into one clear line, and on Ctrl-C says which job is still
live and how to cancel it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import sys
import time
import traceback
from pathlib import Path

from metapretrain import paths, stages
from metapretrain.launch import job_records, slurm
from metapretrain.progress import LogFollower, terminal_stream
from metapretrain.run_record import run_identity

# How often the submitting process asks SLURM about its job; a few sacct calls a minute are harmless.
POLL_S = float(os.environ.get("METAPRETRAIN_SLURM_POLL_S", "5"))
# A job that neither sacct nor squeue knows for this long is reported, not waited on.
UNKNOWN_GRACE_S = float(os.environ.get("METAPRETRAIN_SLURM_UNKNOWN_S", "300"))
# The local launcher has no time limit worth the name; submitit's default (2 min) would requeue every run.
LOCAL_TIMEOUT_MIN = 60 * 24 * 365


class LaunchError(RuntimeError):
    """A stage's job did not complete; the message says how it ended and what to do."""


def run_stage(stage: str, run_dir: str | Path, cfg, target: str, kwargs: dict | None = None,
              threads: int | None = None) -> int:
    """Run `target(**kwargs)` for one stage of one run with `cfg.launch.launcher`; 0 on success.

    `stage` is the stage's key (metapretrain.stages): it names the log (`RUN/logs/<stage>.log`) and the
    job record, and its kind picks the `launch.slurm.stages` overrides (`finetune/Danish-DDT~head`
    uses `stages.finetune`). `target` must be resumable: a requeued or rerun job
    calls it again and it continues from its last checkpoint. The job computes with `threads` CPU
    threads (the Snakemake rule's `{threads}`), else `launch.threads.<stage>`, else torch's default;
    a SLURM job with `launch.slurm.cpus_per_task`.
    """
    from metapretrain.launch.stage_job import StageJob  # submitit: imported only when a stage really launches

    run_dir = Path(run_dir).resolve()
    instance = stages.launched(stage, run_dir)
    _check_target(target)
    log = instance.log
    log.parent.mkdir(parents=True, exist_ok=True)
    launcher = cfg.launch.launcher
    # How long the job waits for the stage to checkpoint after the stop signal: half the warning SLURM gives.
    settings = slurm.settings_for(cfg.launch.slurm, stage) if launcher == "slurm" else cfg.launch.slurm
    grace = max(5.0, settings.signal_delay_s / 2)
    if launcher == "slurm":
        threads = settings.cpus_per_task
    elif threads is None:
        threads = getattr(cfg.launch.threads, instance.kind, None)
    job = StageJob(stage=stage, run_dir=str(run_dir), log=str(log), target=target, kwargs=dict(kwargs or {}),
                   launcher=launcher, max_requeues=cfg.launch.max_requeues, grace_s=grace, cwd=os.getcwd(),
                   cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), threads=threads)
    _, run_id = run_identity(run_dir)
    try:
        if launcher == "debug":
            _run_debug(job, run_dir, instance)
        elif launcher == "local":
            _run_local(job, run_dir, instance, cfg)
        elif launcher == "slurm":
            _run_slurm(job, run_dir, instance, cfg)
        else:
            raise LaunchError(f"unknown launch.launcher '{launcher}' (expected debug, local or slurm)")
    except (LaunchError, slurm.SlurmError) as exc:
        _say(f"{stage} of run {run_id} failed: {exc}")
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def run_dir_data_main(stage: str, target: str, description: str, argv: list[str] | None) -> int:
    """The CLI of a compute stage that reads a run directory and its tokenize output (`--run-dir`, `--data`).

    Checks both inputs with a clear message, then hands `target(run_dir=..., data_dir=...)` to `run_stage`.
    """
    import argparse

    parser = argparse.ArgumentParser(prog=f"metapretrain {stage}", description=description)
    parser.add_argument("--run-dir", required=True, type=Path, help="the run directory (holds config.resolved.yaml)")
    parser.add_argument("--data", required=True, type=Path, help="the tokenize output directory of this run")
    add_threads_option(parser, stage)
    args = parser.parse_args(argv)
    from metapretrain.config import load_run_config

    cfg_path = paths.resolved_config(args.run_dir)
    if not cfg_path.is_file():
        print(f"metapretrain {stage}: {cfg_path}: no resolved config; materialize the grid first", file=sys.stderr)
        return 2
    if not (args.data / "manifest.json").is_file():
        print(f"metapretrain {stage}: {args.data / 'manifest.json'}: missing; run the tokenize stage first",
              file=sys.stderr)
        return 2
    cfg = load_run_config(cfg_path)
    return run_stage(stage=stage, run_dir=args.run_dir, cfg=cfg, target=target,
                     kwargs={"run_dir": str(args.run_dir.resolve()), "data_dir": str(args.data.resolve())},
                     threads=args.threads)


def add_threads_option(parser, stage: str) -> None:
    def positive(text: str) -> int:
        import argparse

        if not text.isdigit() or int(text) < 1:
            raise argparse.ArgumentTypeError(f"expected a whole number of threads >= 1, got {text!r}")
        return int(text)

    parser.add_argument("--threads", type=positive, metavar="N",
                        help=f"CPU threads for torch (default: launch.threads.{stage}, else torch's default; "
                             "the slurm launcher uses launch.slurm.cpus_per_task)")


def _check_target(target: str) -> None:
    module, sep, func = target.partition(":")
    if not sep or not module or not func.isidentifier():
        raise ValueError(f"target must be 'package.module:function', got {target!r}")
    if importlib.util.find_spec(module) is None:
        raise ValueError(f"target module '{module}' of {target!r} is not importable")


def _say(message: str) -> None:
    print(f"[launch] {message}", file=sys.stderr, flush=True)


def _record(run_dir: Path, stage: stages.Stage, launcher: str, job_id: str, previous=()) -> job_records.JobRecord:
    experiment, run_id = run_identity(run_dir)
    rec = job_records.JobRecord(stage=stage.key, run_id=run_id, experiment=experiment,
                                job_name=job_records.job_name(run_dir, stage.key), launcher=launcher,
                                job_id=str(job_id), folder=str(stage.submitit_dir), submitted_at=job_records.now(),
                                previous=list(previous))
    job_records.write_record(run_dir, rec)
    return rec


def _finish(run_dir: Path, rec: job_records.JobRecord, state: str) -> None:
    rec.state, rec.finished_at = state, job_records.now()
    job_records.write_record(run_dir, rec)


def _failure_text(exc: BaseException) -> str:
    """The exception line of a job's traceback ("module.Error: message"), for a one-line summary.

    submitit wraps the job's traceback in prose ending with log paths, so take
    the last line shaped like an exception (or a tool's "sbatch: error: ...").
    """
    lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
    for line in reversed(lines):
        if _EXCEPTION_LINE.match(line):
            return line.strip()
    return lines[-1].strip() if lines else type(exc).__name__


_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*: \S")


def _run_debug(job, run_dir: Path, stage: stages.Stage) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=stage.submitit_dir, cluster="debug")
    sjob = executor.submit(job)
    rec = _record(run_dir, stage, "debug", sjob.job_id)
    # exception() runs the job in this process; result() would open pdb on an error.
    exc = sjob.exception()
    if exc is not None:
        _finish(run_dir, rec, "FAILED")
        from metapretrain.config.errors import ConfigError
        from metapretrain.io import InputError

        if not isinstance(exc, (ConfigError, InputError)):  # a bad input file: the one line below says it all
            traceback.print_exception(exc)
        raise LaunchError(f"{job.target} raised {type(exc).__name__}: {exc}")
    sjob.result()
    _finish(run_dir, rec, "COMPLETED")


def _run_local(job, run_dir: Path, stage: stages.Stage, cfg) -> None:
    import submitit

    executor = submitit.AutoExecutor(folder=stage.submitit_dir, cluster="local",
                                     local_max_num_timeout=cfg.launch.max_requeues)
    executor.update_parameters(timeout_min=LOCAL_TIMEOUT_MIN, name=job_records.job_name(run_dir, stage.key))
    # A person at a terminal sees the job's output as it comes (it also goes to the log, as under Snakemake).
    terminal = terminal_stream()
    follower = LogFollower(job.log, terminal) if terminal is not None else None
    sjob = executor.submit(job)
    rec = _record(run_dir, stage, "local", sjob.job_id)
    _say(f"started local job {sjob.job_id} for {stage.key}; output: {job.log}"
         + (" (shown below as it comes)" if follower else ""))
    try:
        while not sjob.done():
            if follower is not None:
                follower.poll()
            time.sleep(0.5)
        if follower is not None:
            follower.poll(final=True)
    except KeyboardInterrupt:
        sjob.cancel(check=False)
        _finish(run_dir, rec, "CANCELLED")
        _say(f"interrupted: stopped local job {sjob.job_id} of {stage.key}; rerun to resume from its last checkpoint")
        raise
    try:
        sjob.result()
    except Exception as exc:  # submitit wraps the job's traceback in FailedJobError / UncompletedJobError
        _finish(run_dir, rec, "FAILED")
        raise LaunchError(f"local job {sjob.job_id}: {_failure_text(exc)} (full traceback in {job.log})") from None
    _finish(run_dir, rec, "COMPLETED")


def _run_slurm(job, run_dir: Path, stage: stages.Stage, cfg) -> None:
    import submitit

    settings = slurm.settings_for(cfg.launch.slurm, stage.key)
    name = job_records.job_name(run_dir, stage.key)
    rec = job_records.read_record(run_dir, stage.key)
    previous: list[str] = []
    if rec is not None and rec.launcher == "slurm":
        state = slurm.job_state(rec.job_id)
        if state in slurm.LIVE_STATES:
            _say(f"reattaching to SLURM job {rec.job_id} ('{rec.job_name}', {state}) instead of submitting a "
                 f"duplicate; output: {job.log}")
            _wait_and_check(run_dir, rec, job, settings)
            return
        previous = rec.previous + [rec.job_id]
    missing = [tool for tool in ("sbatch", "srun") if shutil.which(tool) is None]
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise LaunchError(f"launch.launcher is slurm, but {' and '.join(missing)} {verb} not on PATH: run on a "
                          f"SLURM login node, or set launch.launcher to local")
    executor = submitit.AutoExecutor(folder=stage.submitit_dir, cluster="slurm",
                                     slurm_max_num_timeout=cfg.launch.max_requeues)
    executor.update_parameters(**slurm.executor_parameters(settings, name))
    try:
        sjob = executor.submit(job)
    except Exception as exc:  # sbatch refused (bad partition, GRES, account, ...): say what it said
        raise LaunchError(f"sbatch refused the job ({slurm.describe(settings)}): {_failure_text(exc)}") from None
    rec = _record(run_dir, stage, "slurm", sjob.job_id, previous)
    _say(f"submitted SLURM job {sjob.job_id} '{name}' ({slurm.describe(settings)}); output: {job.log}")
    _wait_and_check(run_dir, rec, job, settings)


def _wait_and_check(run_dir: Path, rec: job_records.JobRecord, job, settings) -> None:
    import submitit

    state = _wait_slurm(run_dir, rec)
    _finish(run_dir, rec, state)
    sjob = submitit.SlurmJob(folder=rec.folder, job_id=rec.job_id)
    if state == "COMPLETED":
        deadline = time.monotonic() + 30  # the result file may trail the state on a network filesystem
        while not sjob.paths.result_pickle.exists() and time.monotonic() < deadline:
            time.sleep(1)
    if sjob.paths.result_pickle.exists():
        try:
            sjob.result()
        except Exception as exc:
            raise LaunchError(f"SLURM job {rec.job_id} ended {state}: {_failure_text(exc)} "
                              f"(full traceback in {job.log})") from None
        if state == "COMPLETED":
            _say(f"SLURM job {rec.job_id} COMPLETED")
            return
    detail = slurm.job_reason(rec.job_id)
    hint = "its checkpoints are kept: rerun to resume"
    if state == "CANCELLED":
        raise LaunchError(f"SLURM job {rec.job_id} ('{rec.job_name}') was cancelled (scancel or an administrator; "
                          f"{detail}); {hint}")
    if state == "TIMEOUT":
        raise LaunchError(f"SLURM job {rec.job_id} hit its time limit of {settings.time_min} min without being "
                          f"requeued ({detail}); raise launch.slurm.time_min or launch.slurm.signal_delay_s; {hint}")
    raise LaunchError(f"SLURM job {rec.job_id} ended {state} ({detail}) without a result; see {job.log}; {hint}")


class _Terminated(KeyboardInterrupt):
    """SIGTERM while waiting (snakemake stopping its jobs) is handled like Ctrl-C."""


def _wait_slurm(run_dir: Path, rec: job_records.JobRecord) -> str:
    """Poll until the job reaches a terminal state; returns it."""
    last, unknown_since = None, None
    previous_term = None
    import threading

    if threading.current_thread() is threading.main_thread():
        def on_term(signum, frame):
            raise _Terminated()

        previous_term = signal.signal(signal.SIGTERM, on_term)
    try:
        while True:
            try:
                state = slurm.job_state(rec.job_id)
            except slurm.SlurmError as exc:
                _say(f"could not query SLURM job {rec.job_id} ({exc}); retrying")
                state = slurm.UNKNOWN
            if state != last:
                _say(f"SLURM job {rec.job_id}: {state}")
                last = state
                if state != slurm.UNKNOWN:
                    rec.state = state
                    job_records.write_record(run_dir, rec)
            if state in slurm.TERMINAL_STATES:
                return state
            if state == slurm.UNKNOWN:
                unknown_since = unknown_since or time.monotonic()
                if time.monotonic() - unknown_since > UNKNOWN_GRACE_S:
                    raise LaunchError(f"neither sacct nor squeue knows SLURM job {rec.job_id} after "
                                      f"{UNKNOWN_GRACE_S:.0f}s; is accounting (slurmdbd) running?")
            else:
                unknown_since = None
            time.sleep(POLL_S)
    except KeyboardInterrupt:
        _live_job_message(rec)
        raise
    finally:
        if previous_term is not None:
            signal.signal(signal.SIGTERM, previous_term)


def _live_job_message(rec: job_records.JobRecord) -> None:
    try:
        state = slurm.job_state(rec.job_id)
    except slurm.SlurmError:
        state = slurm.UNKNOWN
    if state in slurm.TERMINAL_STATES:
        text = f"interrupted; SLURM job {rec.job_id} ('{rec.job_name}') already ended ({state})."
    else:
        text = (f"interrupted; SLURM job {rec.job_id} ('{rec.job_name}') is still live ({state}) and keeps running.\n"
                f"  rerun the same command (or snakemake) to reattach to it without a duplicate;\n"
                f"  cancel it with: scancel {rec.job_id}\n"
                f"  or every live job of the experiment: metapretrain cancel <experiment.yaml>")
    _say(text)
    # Under snakemake stderr is the rule's log: also tell the person at the terminal, if there is one.
    if not sys.stderr.isatty():
        try:
            with open("/dev/tty", "w") as tty:
                tty.write(f"[launch] {text}\n")
        except OSError:
            pass
