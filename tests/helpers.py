"""Plain helpers the tests share (fixtures live in conftest.py): the tiny model and run, run directories,
a run's metrics and weights, crashes and child processes, waiting, small experiments, the SLURM check.

Importable as `helpers` from every test module: pytest puts tests/ on sys.path, as it does for conftest.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the tiny model and run
def tiny_model(**over) -> dict:
    """The `model` section of the tests' tiny decoder (d 32, 2 layers, 4 heads, 2 KV heads, FFN 64),
    `over` replacing keys; a fresh dict each call."""
    return {"preset": "micro", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
            "max_seq_len": 64, **over}


def tiny_model_config(vocab_size: int, **over):
    """`tiny_model(**over)` as a ModelConfig, to build a Decoder without a run config."""
    from metapretrain.model import ModelConfig

    spec = tiny_model(**over)
    del spec["preset"]
    return ModelConfig(vocab_size=vocab_size, **spec)


def tiny_decoder(vocab_size: int, seed: int = 0, **over):
    """A freshly initialised Decoder of `tiny_model_config(vocab_size, **over)`, seeded through torch's global RNG."""
    import torch

    from metapretrain.model import Decoder

    torch.manual_seed(seed)
    return Decoder(tiny_model_config(vocab_size, **over))


def tiny_run(**over) -> dict:
    """A run config for a seconds-long pretraining of the tiny model on CPU (12 steps, checkpoints at 0, 1, 2, 4,
    8, 12, launcher `debug`, W&B off), each section deep-merged with `over`."""
    from metapretrain.config.overrides import deep_merge

    return deep_merge({
        "model": tiny_model(),
        "train": {"budget": {"unit": "steps", "value": 12}, "batch_size": 2, "seq_len": 16, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 4, "eval_batches": 2, "log_every": 1,
                  "checkpoint": {"every": 4, "log_spaced": 2, "export_hf": "none"}},
        "launch": {"launcher": "debug"},
        "wandb": {"mode": "disabled"},
    }, over)


# ------------------------------------------------------------------ run directories
def write_run_dir(root: Path, name: str, config: dict, experiment: str | None = "test", *, run_id: str | None = None,
                  axes: dict | None = None) -> Path:
    """`root/name` as the grid materialises a run: the validated config.resolved.yaml and run.json
    (run id `run_id`, default `name`). Rewrites both when the directory exists."""
    import yaml

    from metapretrain import paths
    from metapretrain.config.load import run_config_from_dict

    run = Path(root) / name
    run.mkdir(parents=True, exist_ok=True)
    cfg = run_config_from_dict(config)
    paths.resolved_config(run).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
    paths.run_record(run).write_text(json.dumps({"run_id": name if run_id is None else run_id,
                                                 "experiment": experiment, "hash": "0", "axes": axes or {}}))
    return run


def make_run(root: Path, name: str = "run", experiment: str = "test", **over) -> Path:
    """A run directory of `tiny_run(**over)`."""
    return write_run_dir(root, name, tiny_run(**over), experiment)


# ------------------------------------------------------------------ what a run left
def records(run: Path, kind: str | None = None) -> list[dict]:
    """The run's metrics.jsonl records, only those of `kind` when given."""
    from metapretrain import paths
    from metapretrain.metrics_log import read_records

    return [r for r in read_records(paths.metrics_file(run)) if kind is None or r["kind"] == kind]


def comparable(recs: list[dict]) -> list[dict]:
    """Records without the timing fields, which legitimately differ between attempts."""
    return [{k: v for k, v in r.items() if k not in ("wall", "tokens_per_s")} for r in recs]


def final_weights(run: Path) -> dict:
    """The final checkpoint's tensors by name."""
    from metapretrain import checkpoint as ckpt

    # Cloned: safetensors may memory-map the file, and some tests overwrite it in place.
    return {k: v.clone() for k, v in ckpt.load_tensors(ckpt.final_checkpoint(run).path).items()}


# ------------------------------------------------------------------ interrupting runs: crashes, child processes
def crash_at(monkeypatch, step: int):
    """Make `Trainer.update` raise RuntimeError("simulated crash") at update `step`; returns the real
    update, to set back before resuming."""
    from metapretrain.train import loop

    original = loop.Trainer.update

    def update(self):
        if self.counters.step == step:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(loop.Trainer, "update", update)
    return original


def child_env(**extra) -> dict:
    """The environment of a child Python process: this checkout's src/ to import, one thread (the CPU cores
    are shared), `extra` added as strings."""
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


# `python -c TRAIN_CHILD RUN DATA`: train_run in a child; with PAUSE_AT=n it prints READY after update n and
# sleeps there, alive, until killed.
TRAIN_CHILD = """
import sys, os
from metapretrain.train import loop
original = loop.Trainer.update
def update(self):
    out = original(self)
    if self.counters.step == int(os.environ["PAUSE_AT"]):
        print("READY", flush=True)
        import time; time.sleep(600)
    return out
if os.environ.get("PAUSE_AT"):
    loop.Trainer.update = update
from metapretrain.train.stage import train_run
train_run(sys.argv[1], sys.argv[2])
"""


def wait_until(predicate, timeout: float, what: str, poll_s: float = 0.5):
    """`predicate()`'s first truthy value, polled every `poll_s`; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


# ------------------------------------------------------------------ experiments and corpora
def small_tokenize_config(root: Path, vocab_size: int = 512) -> dict:
    """The tokenize stage's config for every `corpus/*.txt` under `root` (10% validation)."""
    from metapretrain.config.load import run_config_from_dict

    cfg = run_config_from_dict({
        "data": {"root": str(root)},
        "corpus": {"name": "small", "sources": [{"type": "files", "paths": ["corpus/*.txt"]}], "validation_fraction": 0.1},
        "tokenizer": {"vocab_size": vocab_size},
        "model": {"preset": "micro"},
    }).to_dict()
    return {k: cfg[k] for k in ("data", "corpus", "tokenizer", "seed")}


def shakespeare_experiment(name: str, data_root: Path, max_documents: int) -> dict:
    """The default experiment (config/config.yaml) renamed, on the first `max_documents` lines of
    tinyshakespeare with a 512-token vocabulary: the base of the small end-to-end grids."""
    import yaml

    cfg = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    cfg["experiment"] = name
    d = cfg["defaults"]
    d["data"] = {"root": str(data_root)}
    d["corpus"] = {"name": "shakespeare", "sources": [{"type": "files", "paths": ["corpus/tinyshakespeare.txt"]}],
                   "max_documents": max_documents}
    d["tokenizer"]["vocab_size"] = 512
    return cfg


def seed_grid(name: str, steps: int, seeds: int) -> str:
    """An experiment file's text: pretraining only (no fine-tuning, no dynamics) for `steps` steps,
    one run per seed 1..`seeds`."""
    return (f"experiment: {name}\ndefaults:\n  train: {{budget: {{unit: steps, value: {steps}}}}}\n"
            "  finetune: {enabled: false}\n  dynamics: {enabled: false}\n"
            f"grid:\n  seed: [{', '.join(str(s) for s in range(1, seeds + 1))}]\n")


# ------------------------------------------------------------------ SLURM
def require_slurm_cluster(gpu: bool = False) -> None:
    """Skip unless a local SLURM cluster answers: controller, accounting, and an up node (with GPUs
    when `gpu`). With METAPRETRAIN_REQUIRE_SLURM=1 (CI) a missing cluster fails instead."""
    from metapretrain.launch import slurm

    problem = None
    try:
        slurm._run(["sacct", "-n", "-X", "-S", "now", "-o", "JobID"], timeout=10)
        nodes = slurm._run(["sinfo", "-h", "-o", "%T %G" if gpu else "%T"], timeout=10)
        if not any(line.split()[0].startswith(("idle", "mixed", "allocated", "completing")) and (not gpu or "gpu" in line)
                   for line in nodes.splitlines() if line.split()):
            problem = f"no usable node{' with GPUs' if gpu else ''} (sinfo: {nodes.strip()!r})"
    except slurm.SlurmError as exc:
        problem = str(exc)
    if problem:
        message = f"no local SLURM cluster ({problem}); start one with `scripts/local-slurm.sh start` (root)"
        if os.environ.get("METAPRETRAIN_REQUIRE_SLURM") == "1":
            pytest.fail(message)
        pytest.skip(message)
