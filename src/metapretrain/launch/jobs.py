"""Job records: which job runs (or ran) a stage of a run.

The record lives next to the stage's log (`RUN/logs/<stage>.job.json`), so a
rerun of the same stage finds a still-live SLURM job and waits on it instead
of submitting a duplicate, and `metapretrain cancel` finds every live job of
a grid from the run directories alone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from metapretrain import paths
from metapretrain.io import InputError, read_json, write_json

RECORD_SUFFIX = ".job.json"


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
    log = paths.log_file(run_dir, stage)
    return log.with_name(log.name.removesuffix(".log") + RECORD_SUFFIX)


def read_run_info(run_dir: str | Path) -> dict | None:
    """The run's `run.json` (written by `grid materialize`), None when there is none.

    One that does not decode or parse is an InputError naming file:line: a run's identity
    (job names, W&B ids, done.json) must not silently fall back to the directory name.
    """
    path = Path(run_dir) / "run.json"
    try:
        info = read_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(info, dict):
        raise InputError(path, f"expected a JSON object, got {type(info).__name__}", 1)
    return info


def run_identity(run_dir: str | Path) -> tuple[str | None, str]:
    """(experiment, run id) from the run's `run.json`, else (None, the directory name)."""
    info = read_run_info(run_dir)
    if info is None or "run_id" not in info:
        return None, Path(run_dir).resolve().name
    return info.get("experiment"), str(info["run_id"])


def job_name(run_dir: str | Path, stage: str) -> str:
    """One identity per run: the SLURM job name is `<experiment>/<run id>:<stage>`."""
    experiment, run_id = run_identity(run_dir)
    return f"{experiment}/{run_id}:{stage}" if experiment else f"{run_id}:{stage}"


def read_record(run_dir: str | Path, stage: str) -> JobRecord | None:
    return _load(record_path(run_dir, stage))


def write_record(run_dir: str | Path, record: JobRecord) -> None:
    write_json(record_path(run_dir, record.stage), record.to_dict())


def find_records(run_dir: str | Path) -> list[JobRecord]:
    """Every stage's record under a run directory, sorted by stage."""
    logs = paths.log_file(run_dir, "x").parent
    found = [_load(p) for p in sorted(logs.rglob(f"*{RECORD_SUFFIX}"))] if logs.is_dir() else []
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
