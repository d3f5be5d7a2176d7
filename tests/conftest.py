"""Shared fixtures: the data mirror, small tokenized corpora, isolated results and W&B (plain helpers: helpers.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import small_tokenize_config


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


@pytest.fixture(scope="session")
def tok_dir(synthetic_tokenized) -> Path:
    """`synthetic_tokenized` under the short name the training tests use."""
    return synthetic_tokenized


@pytest.fixture
def single_thread():
    """torch on one thread: tiny matrices on a shared 2-core machine only contend with more."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
