"""`RUN/run.json`: who a run is (its id, experiment, axis values and config hash).

Written when the grid is materialized, next to `config.resolved.yaml`; read wherever a stage
needs the run's identity (job names, W&B ids, done.json, result rows) or its recorded hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from metapretrain import paths
from metapretrain.io import InputError, read_json, write_json

if TYPE_CHECKING:
    from metapretrain.grid import Run


@dataclass(frozen=True)
class RunRecord:
    run_id: str | None  # None when the file names none
    experiment: Any = None
    hash: Any = None
    axes: dict[str, str] = field(default_factory=dict)


def write_run_record(run_dir: str | Path, run: Run, experiment: str) -> Path:
    path = paths.run_record(run_dir)
    write_json(path, {"run_id": run.run_id, "hash": run.hash, "axes": run.axes, "experiment": experiment,
                      "source": run.source, "tok_id": run.tok_id})
    return path


def read_run_record(run_dir: str | Path) -> RunRecord | None:
    """The run's record, None when it has no `run.json`.

    One that does not decode or parse is an InputError naming file:line: a run's identity
    (job names, W&B ids, done.json) must not silently fall back to the directory name.
    """
    path = paths.run_record(run_dir)
    try:
        info = read_json(path)
    except FileNotFoundError:
        return None
    if not isinstance(info, dict):
        raise InputError(path, f"expected a JSON object, got {type(info).__name__}", 1)
    axes = info.get("axes") or {}
    if not isinstance(axes, dict):
        raise InputError(path, f"axes: expected a mapping of axis values, got {type(axes).__name__}")
    return RunRecord(run_id=str(info["run_id"]) if "run_id" in info else None, experiment=info.get("experiment"),
                     hash=info.get("hash"), axes={str(k): str(v) for k, v in axes.items()})


def run_identity(run_dir: str | Path) -> tuple[str | None, str]:
    """(experiment, run id) from the run's `run.json`, else (None, the directory name)."""
    rec = read_run_record(run_dir)
    if rec is None or rec.run_id is None:
        return None, Path(run_dir).resolve().name
    return rec.experiment, rec.run_id
