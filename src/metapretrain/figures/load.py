"""Read an experiment's run files (never wandb) into tables the figure modules share.

Every input is optional except the runs themselves: a missing NER table,
dynamics CSV or peaks file is recorded as a skip reason, never an error.
Only runs whose pretrain stage is done (`pretrain/done.json`) are used unless
`include_unfinished` is set: an unfinished vanilla run has no final loss yet.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from metapretrain import paths
from metapretrain.config.values import load_yaml
from metapretrain.grid import compare_settings
from metapretrain.io import InputError, read_text
from metapretrain.metrics_log import read_records
from metapretrain.run_record import read_run_record

log = logging.getLogger("metapretrain.figures")


def _read_yaml(path: Path):
    return load_yaml(read_text(path))


# Coordinates every metrics.jsonl record carries (docs/architecture.md, metrics.jsonl).
COORDS = ("step", "tokens", "flops", "wall")


@dataclass
class RunData:
    run_id: str
    axes: dict[str, str]
    config: dict
    run_dir: Path
    train: object = None  # pandas.DataFrame of kind=train records, or None
    evals: object = None  # pandas.DataFrame of kind=eval records, or None
    done: bool = False

    @property
    def learner(self) -> str:
        return str(self.config.get("meta", {}).get("learner", "none"))

    @property
    def preset(self) -> str:
        return str(self.config.get("model", {}).get("preset", "?"))

    @property
    def is_vanilla(self) -> bool:
        return self.learner == "none"

    def rel(self, exp_dir: Path, *parts: str) -> str:
        """A path inside this run, relative to the experiment directory (for `inputs` and `source`)."""
        return str((self.run_dir / Path(*parts)).relative_to(exp_dir))


@dataclass
class ExperimentData:
    exp_dir: Path
    name: str
    axes: list[str]
    runs: list[RunData]
    replicates: list[str] = field(default_factory=lambda: ["seed"])  # axes aggregated over, not faceted
    compare: dict = field(default_factory=dict)  # the experiment's compare: section, defaults filled
    ner: object = None  # pandas.DataFrame (ner/results.csv) or None
    dynamics: object = None  # pandas.DataFrame (all runs' dynamics.csv) or None
    peaks: object = None  # pandas.DataFrame (all runs' dynamics/peaks.csv) or None
    description: str = ""
    skipped: list[str] = field(default_factory=list)

    def run(self, run_id: str) -> RunData | None:
        return next((r for r in self.runs if r.run_id == run_id), None)

    def skip(self, reason: str) -> None:
        log.warning("skipped: %s", reason)
        self.skipped.append(reason)


def read_metrics(path: Path):
    """metrics.jsonl -> (train DataFrame, eval DataFrame), each sorted by step.

    A torn last line (a killed run) is dropped; a damaged line elsewhere is skipped with a warning
    naming file:line (metrics_log); non-finite numbers are kept as NaN.
    """
    import pandas as pd

    rows: dict[str, list[dict]] = {"train": [], "eval": []}
    for rec in read_records(path, on_damaged=lambda exc: log.warning("%s; skipping the record", exc)):
        kind = rec.get("kind")
        if kind in rows:
            rows[kind].append(rec)
    out = []
    for kind in ("train", "eval"):
        df = pd.DataFrame(rows[kind])
        if len(df):
            for c in COORDS:
                if c not in df:
                    df[c] = math.nan
            df = df.sort_values("step", kind="stable").drop_duplicates("step", keep="last").reset_index(drop=True)
        out.append(df if len(df) else None)
    return out[0], out[1]


def _grid_runs(exp_dir: Path, config: str | Path | None, data: ExperimentData) -> list[dict]:
    """[{run_id, axes}] from grid.yaml, else the experiment file, else each run's run.json (and, from the
    first two, the replicate axes)."""
    grid = exp_dir / "grid.yaml"
    if grid.exists():
        doc = _read_yaml(grid) or {}
        data.name = str(doc.get("experiment", data.name))
        data.axes = [str(a) for a in doc.get("axes") or []]
        if "replicates" in doc:  # a grid.yaml written before replicate axes existed keeps the default
            data.replicates = [str(a) for a in doc["replicates"] or []]
        data.compare = compare_settings(doc.get("compare") or {})
        return [{"run_id": str(r["run_id"]), "axes": {str(k): str(v) for k, v in (r.get("axes") or {}).items()}}
                for r in doc.get("runs") or []]
    if config is not None and Path(config).exists():
        from metapretrain.grid import load_experiment

        exp = load_experiment(config)
        data.axes = list(exp.axes)
        data.replicates = list(exp.replicates)
        data.compare = dict(exp.compare)
        log.warning("no %s: runs taken from the experiment file %s", grid, config)
        return [{"run_id": r.run_id, "axes": dict(r.axes)} for r in exp.runs]
    runs = []
    for rj in paths.find_run_records(exp_dir / "runs"):
        try:
            rec = read_run_record(rj.parent)
        except InputError as exc:
            data.skip(f"{exc}; run left out")
            continue
        if rec.run_id is None:
            data.skip(f"{rj}: no run_id; run left out")
            continue
        runs.append({"run_id": rec.run_id, "axes": rec.axes})
    data.axes = sorted({a for r in runs for a in r["axes"]})
    log.warning("no %s: runs discovered from %d run.json files", grid, len(runs))
    return runs


def _read_csv_optional(path: Path, what: str, data: ExperimentData, required: tuple[str, ...]):
    import pandas as pd

    if not path.exists():
        return None
    try:
        df = pd.read_csv(io.StringIO(read_text(path)), keep_default_na=True)
    except InputError as exc:
        data.skip(f"{what}: cannot read {exc}")
        return None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        data.skip(f"{what}: cannot read {path}: {exc}")
        return None
    missing = [c for c in required if c not in df.columns]
    if missing:
        data.skip(f"{what}: {path} lacks columns {missing} (has {list(df.columns)})")
        return None
    return df


def load_experiment_data(exp_dir: str | Path, config: str | Path | None = None,
                         include_unfinished: bool = False) -> ExperimentData:
    import pandas as pd

    exp_dir = Path(exp_dir)
    data = ExperimentData(exp_dir=exp_dir, name=exp_dir.name, axes=[], runs=[], compare=compare_settings({}))
    if config is not None and Path(config).exists():
        try:
            doc = _read_yaml(Path(config)) or {}
        except (yaml.YAMLError, OSError, InputError) as exc:
            log.warning("cannot read the experiment file %s: %s", config, exc)
            doc = {}
        data.description = str(doc.get("description", "")) if isinstance(doc, dict) else ""
    for entry in _grid_runs(exp_dir, config, data):
        rdir = exp_dir / "runs" / entry["run_id"]
        cfg_path = paths.resolved_config(rdir)
        if not cfg_path.exists():
            data.skip(f"run {entry['run_id']}: no {cfg_path.relative_to(exp_dir)} (never materialised)")
            continue
        try:
            cfg = _read_yaml(cfg_path) or {}
        except (yaml.YAMLError, OSError) as exc:
            data.skip(f"run {entry['run_id']}: cannot read {cfg_path}: {exc}")
            continue
        except InputError as exc:
            data.skip(f"run {entry['run_id']}: cannot read {exc}")
            continue
        run = RunData(entry["run_id"], entry["axes"], cfg if isinstance(cfg, dict) else {}, rdir)
        run.done = paths.done_file(paths.pretrain_dir(rdir)).exists()
        metrics = paths.metrics_file(rdir)
        if not run.done and not include_unfinished:
            data.skip(f"run {run.run_id}: pretraining not done (no pretrain/done.json)")
            continue
        if metrics.exists():
            try:
                run.train, run.evals = read_metrics(metrics)
            except OSError as exc:
                data.skip(f"run {run.run_id}: cannot read {metrics}: {exc}")
        else:
            data.skip(f"run {run.run_id}: no {metrics.relative_to(exp_dir)}")
        data.runs.append(run)

    ner = exp_dir / "ner" / "results.csv"
    data.ner = _read_csv_optional(ner, "NER", data, ("pretrain_run", "train_set", "regime", "eval_set", "metric", "value"))
    if data.ner is None and not ner.exists():
        data.skip("NER figures and tables: no ner/results.csv (fine-tuning disabled or not run)")
    elif data.ner is not None:
        known = {r.run_id for r in data.runs}
        unknown = sorted(set(data.ner["pretrain_run"].astype(str)) - known)
        if unknown:
            data.skip(f"NER rows of runs not in the finished grid ignored: {unknown}")
        data.ner = data.ner[data.ner["pretrain_run"].astype(str).isin(known)].copy()
        data.ner["pretrain_run"] = data.ner["pretrain_run"].astype(str)
        data.ner["value"] = pd.to_numeric(data.ner["value"], errors="coerce")

    dyn, peaks = [], []
    for run in data.runs:
        ddir = paths.dynamics_dir(run.run_dir)
        source = "dynamics.csv"
        df = _read_csv_optional(ddir / source, f"dynamics of {run.run_id}", data, ("step", "layer", "metric", "value"))
        if df is None and (ddir / "dynamics.parquet").exists():
            source = "dynamics.parquet"
            try:
                df = pd.read_parquet(ddir / source)
            except (ImportError, ValueError, OSError) as exc:
                data.skip(f"dynamics of {run.run_id}: cannot read dynamics.parquet: {exc}")
        if df is not None:
            df["run_id"] = run.run_id  # the directory, not the CSV column, names the run
            df["source"] = run.rel(exp_dir, "dynamics", source)
            dyn.append(df)
        pk = _read_csv_optional(ddir / "peaks.csv", f"peaks of {run.run_id}", data, ("layer", "metric", "peak_step"))
        if pk is not None:
            pk["run_id"] = run.run_id
            peaks.append(pk)
    if dyn:
        data.dynamics = pd.concat(dyn, ignore_index=True)
        for col in ("component", "head", "tokens", "flops"):
            if col not in data.dynamics:
                data.dynamics[col] = math.nan
        data.dynamics["value"] = pd.to_numeric(data.dynamics["value"], errors="coerce")
        data.dynamics["step"] = pd.to_numeric(data.dynamics["step"], errors="coerce")
    else:
        data.skip("dynamics figures: no run has dynamics/dynamics.csv (dynamics disabled or not run)")
    if peaks:
        data.peaks = pd.concat(peaks, ignore_index=True)
        if "component" not in data.peaks:
            data.peaks["component"] = math.nan
    return data
