"""Shared fixtures: the data mirror, a small real tokenized corpus, isolated results and W&B."""

from __future__ import annotations

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
    from metapretrain.data.paths import resolve_data_root

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
