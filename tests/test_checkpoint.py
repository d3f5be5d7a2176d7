"""The checkpoint reader's lookups on real tiny checkpoints: final, at a step, nearest to tokens or FLOPs,
and one verification per load."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from helpers import tiny_model
from metapretrain import checkpoint as ckpt
from metapretrain import paths
from metapretrain.checkpoint import format as ckpt_format

STEPS = (0, 4, 8, 16)  # tokens = 100 * step, flops = 1e6 * step


def _run(tmp_path, steps=STEPS):
    from metapretrain.config.load import run_config_from_dict, write_run_config
    from metapretrain.model import Decoder

    cfg = run_config_from_dict({"model": tiny_model(d_model=16, n_layers=1, ffn_hidden=32, max_seq_len=32),
                                "train": {"seq_len": 16}, "dynamics": {"probe_batch_size": 2},
                                "launch": {"launcher": "debug"}})
    run = tmp_path / "run"
    run.mkdir()
    write_run_config(paths.resolved_config(run), cfg)
    torch.manual_seed(0)
    model = Decoder(cfg.model.resolved(tokenizer_vocab=64))
    for step in steps:
        with torch.no_grad():
            next(model.parameters()).add_(1.0)  # every checkpoint holds other weights
        ckpt.save_checkpoint(run, step, model=model, state={}, config=cfg.to_dict(), tokens=100 * step,
                             flops=1e6 * step)
    return run


def _finish(run, final_step):
    paths.done_file(paths.pretrain_dir(run)).write_text(json.dumps({"stage": "pretrain", "final_step": final_step}))


def _damage(info):
    f = info.path / ckpt.MODEL_FILE
    data = bytearray(f.read_bytes())
    data[-1] ^= 1
    f.write_bytes(bytes(data))


def test_at_step_is_that_checkpoint_verified(tmp_path):
    run = _run(tmp_path)
    c = ckpt.at_step(run, 8)
    assert (c.step, c.tokens, c.flops, c.path) == (8, 800, 8e6, paths.checkpoints_dir(run) / "step_00000008")
    assert c.verified
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint at step 5 \(checkpoints at steps 0, 4, 8, 16\)"):
        ckpt.at_step(run, 5)
    _damage(c)
    with pytest.raises(ckpt.CheckpointError, match="checksum mismatch"):
        ckpt.at_step(run, 8)


def test_nearest_by_tokens_and_flops(tmp_path):
    run = _run(tmp_path)
    assert ckpt.nearest(run, tokens=0).step == 0
    assert ckpt.nearest(run, tokens=700).step == 8
    assert ckpt.nearest(run, tokens=10**9).step == 16
    assert ckpt.nearest(run, flops=5.1e6).step == 4
    assert ckpt.nearest(run, tokens=600).step == 4  # halfway between 400 and 800: the earlier one
    assert ckpt.nearest(run, flops=1.3e7).verified
    for bad in ({}, {"tokens": 1, "flops": 1.0}):
        with pytest.raises(ValueError, match="exactly one of tokens= or flops="):
            ckpt.nearest(run, **bad)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.nearest(tmp_path / "empty", tokens=1)


def test_nearest_damaged_checkpoint_is_not_replaced_by_its_neighbour(tmp_path):
    run = _run(tmp_path)
    _damage(ckpt.at_step(run, 8))
    with pytest.raises(ckpt.CheckpointError, match="step_00000008.*checksum mismatch"):
        ckpt.nearest(run, tokens=800)


def test_a_manifest_without_counters_is_refused_by_name(tmp_path):
    run = _run(tmp_path, steps=(0,))
    f = paths.checkpoints_dir(run) / "step_00000000" / ckpt.MANIFEST
    manifest = json.loads(f.read_text())
    del manifest["tokens"], manifest["sha256"]
    f.write_text(json.dumps(manifest))
    with pytest.raises(ckpt.CheckpointError, match="missing key 'tokens'"):
        ckpt.at_step(run, 0)


def test_final_is_what_done_json_names_else_the_newest_that_verifies(tmp_path):
    run = _run(tmp_path)
    assert ckpt.final_checkpoint(run).step == 16  # pretrain unfinished: the newest
    _damage(ckpt.at_step(run, 16))
    assert ckpt.final_checkpoint(run).step == 8  # ... that verifies
    _finish(run, 4)
    assert ckpt.final_checkpoint(run).step == 4  # a finished run: exactly the step done.json names
    _finish(run, 16)
    with pytest.raises(ckpt.CheckpointError, match="final checkpoint of a finished run"):
        ckpt.final_checkpoint(run)
    with pytest.raises(ckpt.CheckpointError, match="no complete checkpoint"):
        ckpt.final_checkpoint(tmp_path / "empty")


def test_dynamics_and_finetune_read_the_same_final_checkpoint(tmp_path):
    """dynamics' reference (CKA's final) is `final_checkpoint`, the checkpoint finetune loads."""
    from metapretrain.config import load_run_config
    from metapretrain.dynamics.stage import read_inputs

    run = _run(tmp_path)
    tok = tmp_path / "tok"
    tok.mkdir()
    np.random.default_rng(0).integers(0, 64, 200, dtype=np.uint16).tofile(tok / "val.bin")
    (tok / "manifest.json").write_text(json.dumps({"dtype": "uint16", "vocab_size": 64,
                                                   "splits": {"val": {"file": "val.bin", "tokens": 200}}}))
    _finish(run, 8)
    job = read_inputs(run, str(tok), load_run_config(paths.resolved_config(run)))
    assert job.final == ckpt.final_checkpoint(run) and job.final.step == 8
    assert job.identity["reference_step"] == 8 and [c.step for c in job.ckpts] == list(STEPS)


def test_each_load_hashes_the_files_once(tmp_path, monkeypatch):
    run = _run(tmp_path)
    hashed = []
    real = ckpt_format.sha256_file
    monkeypatch.setattr(ckpt_format, "sha256_file", lambda p: hashed.append(p.name) or real(p))
    model = ckpt.load_model(ckpt.final_checkpoint(run))  # looked up (verified), then loaded
    files = sorted(ckpt.read_manifest(paths.checkpoints_dir(run) / "step_00000016")["files"])
    assert sorted(hashed) == files
    hashed.clear()
    entry = ckpt.list_checkpoints(run)[-1]  # a listing reads manifests only: loading it verifies it
    assert not entry.verified and hashed == []
    again = ckpt.load_model(entry)
    assert sorted(hashed) == files
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
