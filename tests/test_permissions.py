"""Outputs written through temporary names (checkpoints, HF exports, tokenize output, atomic files) get the
modes the umask gives any file: shared under 0022, private under 0077."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from helpers import tiny_model

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def outputs_by_umask(tmp_path_factory):
    """{umask: [every directory and file of a checkpoint, an HF export, a tokenize output, an atomic file]}."""
    import numpy as np
    import torch

    from metapretrain import checkpoint as ckpt
    from metapretrain.checkpoint.export import export_checkpoint
    from metapretrain.config.load import run_config_from_dict
    from metapretrain.data.tokenize_stage import tokenize
    from metapretrain.io import write_json
    from metapretrain.model.decoder import Decoder

    cfg = run_config_from_dict({"model": tiny_model(n_layers=1, max_seq_len=128),
                                "tokenizer": {"vocab_size": 128}})
    out = {}
    for mask in (0o022, 0o077):
        root = tmp_path_factory.mktemp(f"umask{mask:03o}")
        old = os.umask(mask)
        try:
            (root / "corpus").mkdir()
            rng = np.random.default_rng(0)
            words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran"]
            (root / "corpus" / "c.txt").write_text("\n".join(" ".join(rng.choice(words, 8)) for _ in range(300)) + "\n")
            conf = cfg.to_dict() | {"data": {**cfg.to_dict()["data"], "root": str(root)},
                                    "corpus": {**cfg.to_dict()["corpus"], "name": "c",
                                               "sources": [{"type": "files", "paths": ["corpus/*.txt"]}]}}
            tokenize(conf, root / "tok")
            run = root / "run"
            model = Decoder(cfg.model.to_model_config(vocab_size=260) if hasattr(cfg.model, "to_model_config")
                            else _model_config(cfg))
            info = ckpt.save_checkpoint(run, 1, model=model, state={"step": torch.tensor(1)}, config=cfg.to_dict(),
                                        tokens=0, flops=0.0)
            export_checkpoint(info.path, root / "hf", root / "tok" / "tokenizer.json")
            write_json(root / "atomic" / "x.json", {"a": 1})
        finally:
            os.umask(old)
        out[mask] = [p for d in (root / "tok", info.path, root / "hf", root / "atomic") for p in [d, *d.rglob("*")]]
    return out


def _model_config(cfg):
    from metapretrain.model import ModelConfig

    m = cfg.model
    return ModelConfig(d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads, n_kv_heads=m.n_kv_heads,
                       ffn_hidden=m.ffn_hidden, vocab_size=130, max_seq_len=m.max_seq_len)


@pytest.mark.parametrize(("mask", "dir_mode", "file_mode"), [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)],
                         ids=["umask-0022", "umask-0077"])
def test_outputs_follow_the_umask(outputs_by_umask, mask, dir_mode, file_mode):
    paths = outputs_by_umask[mask]
    kinds = {p.name for p in paths}
    assert {"tok", "train.bin", "manifest.json", "model.safetensors", "state.pt", "config.json", "x.json"} <= kinds
    assert any(p.name.startswith("step_") for p in paths) and "hf" in kinds
    wrong = [f"{p}: {stat.S_IMODE(p.stat().st_mode):o}" for p in paths
             if stat.S_IMODE(p.stat().st_mode) != (dir_mode if p.is_dir() else file_mode)]
    assert wrong == []


def test_umask_is_read_without_setting_it(monkeypatch):
    """os.umask would set the mask process-wide for a moment: a file another thread creates then gets mode 0."""
    from metapretrain.io import umask

    if "Umask:" not in Path("/proc/self/status").read_text():
        pytest.skip("no Umask line in /proc/self/status (kernel < 4.7 or not Linux)")
    old = os.umask(0o027)
    try:
        monkeypatch.setattr(os, "umask", lambda *_: pytest.fail("os.umask was called"))
        assert umask() == 0o027
    finally:
        monkeypatch.undo()
        os.umask(old)
