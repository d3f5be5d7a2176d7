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


def run_dir(experiment: str, run_id: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "runs" / run_id


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


def finetune_dir(run: str | Path, train_set: str, regime: str) -> Path:
    return Path(run) / "finetune" / f"{train_set}~{regime}"


def dynamics_dir(run: str | Path) -> Path:
    return Path(run) / "dynamics"


def done_file(stage_dir: str | Path) -> Path:
    """A stage's completion marker, written last (metapretrain.io.write_done)."""
    return Path(stage_dir) / "done.json"


def tokenizer_file(stage_dir: str | Path) -> Path:
    """`tokenize/<id>/tokenizer.json`, and the run's copy `RUN/pretrain/tokenizer.json`."""
    return Path(stage_dir) / "tokenizer.json"


def log_file(run: str | Path, stage: str) -> Path:
    return Path(run) / "logs" / f"{stage}.log"


def ner_dir(experiment: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "ner"


def figures_dir(experiment: str, root=None) -> Path:
    return experiment_dir(experiment, root) / "figures"


def resolved_config(run: str | Path) -> Path:
    return Path(run) / "config.resolved.yaml"
