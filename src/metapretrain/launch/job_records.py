"""Job records: which job runs (or ran) a stage of a run.

The record lives next to the stage's log (`RUN/logs/<stage key>.job.json`), so a
rerun of the same stage finds a still-live SLURM job and waits on it instead
of submitting a duplicate, and `metapretrain cancel` finds every live job of
a grid from the run directories alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from metapretrain import paths, stages
from metapretrain.io import InputError, read_json, write_json
from metapretrain.run_record import run_identity


@dataclass
class JobRecord:
    stage: str
    run_id: str
    experiment: str | None
    job_name: str
    launcher: str  # debug | local | slurm
    job_id: str
    folder: str  # submitit's folder (pickles, its own logs)
    submitted_at: str
    state: str = "SUBMITTED"  # the last state the submitting process saw
    finished_at: str | None = None
    previous: list[str] = field(default_factory=list)  # job ids of earlier submissions of this stage

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def record_path(run_dir: str | Path, stage: str) -> Path:
    """Where the record of stage `stage` (its key, metapretrain.stages) of `run_dir` lives."""
    return stages.launched(stage, run_dir).job_record


def job_name(run_dir: str | Path, stage: str) -> str:
    """One identity per run: the SLURM job name is `<experiment>/<run id>:<stage key>`."""
    experiment, run_id = run_identity(run_dir)
    return f"{experiment}/{run_id}:{stage}" if experiment else f"{run_id}:{stage}"


def split_job_name(name: str, experiment: str) -> tuple[str, str]:
    """(run id, stage key) of the job name `<experiment>/<run id>:<stage key>` of a job of `experiment`."""
    run_id, _, stage = name.removeprefix(f"{experiment}/").rpartition(":")
    return run_id, stage


def read_record(run_dir: str | Path, stage: str) -> JobRecord | None:
    return _load(record_path(run_dir, stage))


def write_record(run_dir: str | Path, record: JobRecord) -> None:
    write_json(record_path(run_dir, record.stage), record.to_dict())


def find_records(run_dir: str | Path) -> list[JobRecord]:
    """Every stage's record under a run directory, sorted by stage."""
    logs = paths.logs_dir(run_dir)
    found = [_load(p) for p in sorted(logs.rglob(f"*{paths.JOB_RECORD_SUFFIX}"))] if logs.is_dir() else []
    return [r for r in found if r is not None]


def _load(path: Path) -> JobRecord | None:
    if not path.exists():
        return None
    try:
        data = read_json(path)
        names = {f.name for f in dataclasses.fields(JobRecord)}
        return JobRecord(**{k: v for k, v in data.items() if k in names})
    except (ValueError, TypeError, AttributeError) as exc:
        # A record is only a hint: a damaged one must not block a rerun, but the user should know.
        import sys

        where = str(exc) if isinstance(exc, InputError) else f"{path}: {type(exc).__name__}: {exc}"
        print(f"[launch] ignoring unreadable job record: {where}", file=sys.stderr)
        return None
