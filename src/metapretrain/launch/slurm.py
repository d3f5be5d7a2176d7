"""SLURM: job settings from config, and bounded queries of the queue and accounting.

Every command runs with a timeout: a `sacct` or `squeue` against a dead
controller blocks, and a waiting driver must never hang on one.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess

from metapretrain.config.errors import ConfigError
from metapretrain.config.types import SlurmSection
from metapretrain.stages import kind_of

# States in which a job may still run (a requeued job passes through REQUEUED and PENDING again).
LIVE_STATES = frozenset({
    "PENDING", "RUNNING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SUSPENDED", "CONFIGURING",
    "COMPLETING", "STAGE_OUT", "SIGNALING", "RESV_DEL_HOLD", "STOPPED",
})
TERMINAL_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "BOOT_FAIL", "DEADLINE",
    "PREEMPTED", "REVOKED", "SPECIAL_EXIT",
})
UNKNOWN = "UNKNOWN"
COMMAND_TIMEOUT_S = float(os.environ.get("METAPRETRAIN_SLURM_CMD_TIMEOUT_S", "30"))


class SlurmError(RuntimeError):
    """A SLURM command failed or did not answer in time."""


def _run(args: list[str], timeout: float = COMMAND_TIMEOUT_S) -> str:
    if shutil.which(args[0]) is None:
        raise SlurmError(f"'{args[0]}' is not on PATH: is this a SLURM login node?")
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise SlurmError(f"'{' '.join(args)}' did not answer within {timeout:.0f}s (is slurmctld/slurmdbd up?)") from exc
    if proc.returncode != 0:
        raise SlurmError(f"'{' '.join(args)}' failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def available(timeout: float = 10) -> bool:
    """True iff `sinfo` answers within `timeout` seconds."""
    try:
        _run(["sinfo", "-h", "-o", "%P"], timeout=timeout)
        return True
    except SlurmError:
        return False


def _sacct_state(job_id: str) -> str | None:
    # -X: the allocation only (not its steps); accounting lags submission by a moment, hence None.
    out = _run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "JobID,State"])
    for line in out.splitlines():
        jid, _, state = line.partition("|")
        if jid.strip() == job_id and state.strip():
            return state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return None


def _squeue_state(job_id: str) -> str | None:
    try:
        out = _run(["squeue", "-h", "-j", job_id, "-o", "%T"])
    except SlurmError as exc:
        if "Invalid job id" in str(exc):
            return None
        raise
    return out.split()[0] if out.split() else None


def job_state(job_id: str) -> str:
    """The job's state (PENDING, RUNNING, COMPLETED, CANCELLED, ...) or UNKNOWN.

    The controller (squeue) is the authority while it knows the job: accounting
    lags behind it (sacct may still say PENDING for a running job). sacct covers
    finished jobs the controller has forgotten, and a job squeue shows as
    COMPLETING (ending, e.g. after scancel) whose outcome sacct already knows.
    """
    state = _squeue_state(job_id)
    if state is not None and state != "COMPLETING":
        return state
    try:
        recorded = _sacct_state(job_id)
    except SlurmError:
        if state is None and shutil.which("sacct") is None:
            raise
        recorded = None
    if recorded is not None and (state is None or recorded in TERMINAL_STATES):
        return recorded
    return state or UNKNOWN


def job_reason(job_id: str) -> str:
    """sacct's exit code and reason text for a finished job, for error messages ('' when unavailable)."""
    try:
        out = _run(["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "State,ExitCode,Reason,Elapsed,TimelimitRaw"])
    except SlurmError:
        return ""
    line = out.strip().splitlines()[0] if out.strip() else ""
    fields = line.split("|")
    if len(fields) < 5:
        return line
    state, code, reason, elapsed, limit = fields
    return f"state {state}, exit code {code}, reason {reason or 'None'}, ran {elapsed} of a {limit} min limit"


def cancel(job_ids: list[str]) -> None:
    if job_ids:
        _run(["scancel", *job_ids])


def live_jobs_by_name(prefix: str) -> dict[str, tuple[str, str]]:
    """{job id: (job name, state)} of this user's queued jobs whose name starts with `prefix`."""
    user = os.environ.get("USER") or os.environ.get("LOGNAME")
    args = ["squeue", "-h", "-o", "%i|%j|%T"] + (["-u", user] if user else [])
    out = _run(args)
    jobs = {}
    for line in out.splitlines():
        parts = line.split("|", 2)
        if len(parts) == 3 and parts[1].startswith(prefix):
            jobs[parts[0].strip()] = (parts[1], parts[2].strip())
    return jobs


_SETTINGS = [f.name for f in dataclasses.fields(SlurmSection) if f.name not in ("stages",)]


def settings_for(slurm: SlurmSection, stage: str) -> SlurmSection:
    """`slurm` with the overrides of `launch.slurm.stages.<kind>` applied and checked, for the stage with key
    `stage` (`finetune/Danish-DDT~head` takes `launch.slurm.stages.finetune`)."""
    kind = kind_of(stage)
    overrides = slurm.stages.get(kind) or {}
    where = f"launch.slurm.stages.{kind}"
    for key in overrides:
        if key not in _SETTINGS:
            from metapretrain.config.errors import suggest

            raise ConfigError(f"unknown key '{key}'{suggest(key, _SETTINGS)}; allowed keys: {', '.join(_SETTINGS)}",
                              key=f"{where}.{key}")
    from metapretrain.config.schema import subschema, validate

    schema = subschema(("launch", "slurm"))
    props = {k: v for k, v in schema["properties"].items() if k in _SETTINGS}
    validate(overrides, {"type": "object", "properties": props, "additionalProperties": False}, prefix=tuple(where.split(".")))
    return slurm.for_stage(kind)


def executor_parameters(s: SlurmSection, name: str) -> dict:
    """submitit AutoExecutor parameters for one job with settings `s` (already stage-resolved)."""
    params: dict = {
        "name": name,
        "timeout_min": s.time_min,
        "nodes": s.nodes,
        "tasks_per_node": s.tasks_per_node,
        "cpus_per_task": s.cpus_per_task,
        "slurm_signal_delay_s": s.signal_delay_s,
    }
    if s.gpus_per_node:
        params["gpus_per_node"] = s.gpus_per_node
    if s.mem_gb is not None:
        params["mem_gb"] = s.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        value = getattr(s, key)
        if value:
            params[f"slurm_{key}"] = value
    if s.extra:
        # submitit writes `#SBATCH --<key with - for _>=<value>`; accept either spelling in YAML.
        params["slurm_additional_parameters"] = {str(k).replace("-", "_"): v for k, v in s.extra.items()}
    return params


def describe(s: SlurmSection) -> str:
    parts = [f"{k}={getattr(s, k)}" for k in ("partition", "account", "qos", "constraint") if getattr(s, k)]
    parts += [f"time={s.time_min}min", f"nodes={s.nodes}", f"gpus/node={s.gpus_per_node}", f"cpus/task={s.cpus_per_task}"]
    if s.mem_gb is not None:
        parts.append(f"mem={s.mem_gb}GB")
    return " ".join(parts)
