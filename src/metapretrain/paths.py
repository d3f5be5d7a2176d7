"""The results layout (docs/architecture.md), as functions. Nothing else builds these paths."""

from __future__ import annotations

import os
from pathlib import Path

RESULTS_ENV = "METAPRETRAIN_RESULTS"


def results_root(root: str | Path | None = None) -> Path:
    return Path(root or os.environ.get(RESULTS_ENV, "results"))


def experiment_dir(experiment: str, root: str | Path | None = None) -> Path:
    return results_root(root) / experiment


def tokenize_dir(experiment: str, tok_id: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "tokenize" / tok_id


def runs_dir(experiment: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "runs"


def run_dir(experiment: str, run_id: str, root=None) -> Path:
    return runs_dir(experiment, root) / run_id


def run_record(run: str | Path) -> Path:
    """`RUN/run.json`: the run's identity (metapretrain.run_record)."""
    return Path(run) / "run.json"


def find_run_records(directory: str | Path) -> list[Path]:
    """Every `run.json` under `directory` (a run id may span several directory levels), sorted."""
    return sorted(Path(directory).rglob(run_record(".").name))


def grid_file(experiment: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "grid.yaml"


def tokenize_config(experiment: str, tok_id: str, root=None) -> Path:
    """The config one tokenize id is computed from, written by the DAG next to the output directories."""
    return experiment_dir(experiment, root) / "tokenize" / f"{tok_id}.yaml"


def data_marker(experiment: str, part: str, name: str, root=None) -> Path:
    """What the data rule leaves once the data of a tokenize id or UNER train set is in place."""
    return experiment_dir(experiment, root) / "data" / part / f"{name}.json"


def pretrain_dir(run: str | Path) -> Path:
    return Path(run) / "pretrain"


def checkpoints_dir(run: str | Path) -> Path:
    return pretrain_dir(run) / "checkpoints"


def checkpoint_name(step: int) -> str:
    return f"step_{step:08d}"


def checkpoint_run(checkpoint: str | Path) -> Path:
    """RUN for a checkpoint directory `RUN/pretrain/checkpoints/step_*`."""
    return Path(checkpoint).resolve().parents[2]


def metrics_file(run: str | Path) -> Path:
    return pretrain_dir(run) / "metrics.jsonl"


def hf_dir(run: str | Path) -> Path:
    return pretrain_dir(run) / "hf"


def finetune_dir(run: str | Path, train_set: str, regime: str, reading: str | None = None) -> Path:
    """`finetune/<train set>~<regime>` (the final checkpoint), or `...~<reading>` for a compute-matched
    reading (`matched-flops-<tag>`, metapretrain.matching)."""
    return Path(run) / "finetune" / (f"{train_set}~{regime}" + (f"~{reading}" if reading else ""))


def dynamics_dir(run: str | Path) -> Path:
    return Path(run) / "dynamics"


def done_file(stage_dir: str | Path) -> Path:
    """A stage's completion marker, written last (metapretrain.io.write_done)."""
    return Path(stage_dir) / "done.json"


def tokenizer_file(stage_dir: str | Path) -> Path:
    """`tokenize/<id>/tokenizer.json`, and the run's copy `RUN/pretrain/tokenizer.json`."""
    return Path(stage_dir) / "tokenizer.json"


# A job's files are named by its stage's key (metapretrain.stages) under a home directory: the run's,
# or the experiment's for the jobs of no single run.
JOB_RECORD_SUFFIX = ".job.json"


def logs_dir(home: str | Path) -> Path:
    return Path(home) / "logs"


def log_file(home: str | Path, key: str) -> Path:
    return logs_dir(home) / f"{key}.log"


def job_record_file(home: str | Path, key: str) -> Path:
    return logs_dir(home) / f"{key}{JOB_RECORD_SUFFIX}"


def submitit_dir(home: str | Path, key: str) -> Path:
    return logs_dir(home) / "submitit" / key


def benchmark_file(home: str | Path, key: str) -> Path:
    return Path(home) / "benchmarks" / f"{key}.tsv"


def ner_dir(experiment: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "ner"


def figures_dir(experiment: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "figures"


def resolved_config(run: str | Path) -> Path:
    return Path(run) / "config.resolved.yaml"
