"""Shared fixtures and helpers: the data mirror, small tokenized corpora, run directories, isolated results and W&B."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _isolate_env(monkeypatch, tmp_path):
    # No test talks to W&B or writes into the repository's results/.
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE_TESTS", "disabled"))
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def data_root() -> Path:
    from metapretrain.data.location import resolve_data_root

    root = resolve_data_root()
    if not (root / "corpus").is_dir():
        pytest.skip(f"no data mirror at {root} (set METAPRETRAIN_DATA)")
    return root


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory, data_root) -> Path:
    """A few thousand real lines (English, Danish, Shakespeare) as one small corpus directory."""
    d = tmp_path_factory.mktemp("corpus")
    (d / "corpus").mkdir()
    for name, n in (("tinyshakespeare.txt", 3000), ("ud-train_Danish-DDT.txt", 1500), ("ud-train_English-EWT.txt", 1500)):
        lines = (data_root / "corpus" / name).read_text(encoding="utf-8").splitlines()[:n]
        (d / "corpus" / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return d


def small_tokenize_config(root: Path, vocab_size: int = 512) -> dict:
    from metapretrain.config.load import run_config_from_dict

    cfg = run_config_from_dict({
        "data": {"root": str(root)},
        "corpus": {"name": "small", "sources": [{"type": "files", "paths": ["corpus/*.txt"]}], "validation_fraction": 0.1},
        "tokenizer": {"vocab_size": vocab_size},
        "model": {"preset": "micro"},
    }).to_dict()
    return {k: cfg[k] for k in ("data", "corpus", "tokenizer", "seed")}


@pytest.fixture(scope="session")
def tokenized_dir(tmp_path_factory, small_corpus) -> Path:
    """The tokenize stage's real output on the small corpus (vocab 512)."""
    from metapretrain.data.tokenize_stage import tokenize

    out = tmp_path_factory.mktemp("tok") / "small"
    tokenize(small_tokenize_config(small_corpus), out)
    return out


@pytest.fixture(scope="session")
def synthetic_tokenized(tmp_path_factory) -> Path:
    """A real tokenize output (vocab 128) over a small synthetic corpus: no data mirror needed."""
    import numpy as np

    from metapretrain.data.tokenize_stage import tokenize

    root = tmp_path_factory.mktemp("synth")
    (root / "corpus").mkdir()
    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "house", "big", "red", "and", "saw", "it"]
    lines = [" ".join(rng.choice(words, size=rng.integers(5, 15))) for _ in range(1500)]
    (root / "corpus" / "synth.txt").write_text("\n".join(lines) + "\n")
    tokenize(small_tokenize_config(root, vocab_size=128), root / "tok")
    return root / "tok"


def write_run_dir(root: Path, name: str, config: dict, experiment: str) -> Path:
    """A materialised run directory (validated config.resolved.yaml + run.json), as the grid writes one."""
    import yaml

    from metapretrain.config.load import run_config_from_dict

    run = root / name
    run.mkdir(parents=True)
    cfg = run_config_from_dict(config)
    (run / "config.resolved.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=True))
    (run / "run.json").write_text(json.dumps({"run_id": name, "experiment": experiment, "hash": "0", "axes": {}}))
    return run


@pytest.fixture
def single_thread():
    """torch on one thread: tiny matrices on a shared 2-core machine only contend with more."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
