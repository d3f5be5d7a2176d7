"""The pretraining loop end to end, on real tiny runs: outputs and checkpoints, token and FLOP budgets, hybrid
draws, exact resume after a crash, preemption or SIGKILL, damaged checkpoints, exports, non-finite losses, W&B."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys

import pytest
import torch

from helpers import TRAIN_CHILD, child_env, comparable, crash_at, final_weights, make_run, records
from metapretrain import checkpoint as ckpt
from metapretrain import paths
from metapretrain.launch import preemption
from metapretrain.train import loop as loop_mod
from metapretrain.train import steps as steps_mod
from metapretrain.train.runtime import micro_seeds
from metapretrain.train.stage import train_run
from metapretrain.wandb_run import stable_run_id


# ------------------------------------------------------------ the loop
def test_run_outputs_records_and_checkpoints(tmp_path, tok_dir):
    run = make_run(tmp_path, train={"log_every": 5})
    done = train_run(str(run), str(tok_dir))
    assert done["final_step"] == 12 and done["stage"] == "pretrain"
    steps = [c.step for c in ckpt.list_checkpoints(run)]
    assert steps == [0, 1, 2, 4, 8, 12]
    train = records(run, "train")
    assert [r["step"] for r in train] == [1, 5, 10, 12]
    for r, updates in zip(train, (1, 4, 5, 2), strict=True):  # micro-batches since the previous record
        assert {"lr", "loss", "grad_norm", "tokens_per_s", "n_next_token", "n_meta", "tokens", "flops", "wall"} <= set(r)
        assert r["n_next_token"] == updates and r["n_meta"] == 0
        assert r["tokens"] == r["step"] * 2 * 16
    evals = records(run, "eval")
    assert [r["step"] for r in evals] == [0, 4, 8, 12]
    assert evals[-1]["val_ppl"] == pytest.approx(math.exp(evals[-1]["val_loss"]))
    assert done["final_val_loss"] == evals[-1]["val_loss"]
    assert (run / "pretrain" / "tokenizer.json").read_bytes() == (tok_dir / "tokenizer.json").read_bytes()
    # A second call finds a valid done.json and does nothing.
    mtime = paths.metrics_file(run).stat().st_mtime_ns
    assert train_run(str(run), str(tok_dir))["final_step"] == 12
    assert paths.metrics_file(run).stat().st_mtime_ns == mtime


def test_token_and_flop_accounting_by_hand(tmp_path, tok_dir):
    # micro-derived model: d=32, L=2, H=4, K=2 (head dim 8), F=64, V from the tokenizer; T=16.
    d, L, F, T = 32, 2, 64, 16
    V = json.loads((tok_dir / "manifest.json").read_text())["vocab_size"]
    matmul = L * (d * d + 2 * d * 2 * 8 + d * d + 3 * d * F) + d * V
    per_token = 3 * (2 * matmul + 2 * L * d * (T + 1))
    # Budget in tokens: 2 x 16 x 2 = 64 tokens per update; 300 tokens -> stop after update 5 (320 >= 300).
    run = make_run(tmp_path, train={"budget": {"unit": "tokens", "value": 300}, "grad_accum": 2})
    done = train_run(str(run), str(tok_dir))
    assert done["final_step"] == 5 and done["tokens"] == 320
    assert done["flops"] == pytest.approx(320 * per_token)
    run2 = make_run(tmp_path, "flops", train={"budget": {"unit": "flops", "value": 3.5 * 32 * per_token}})
    done2 = train_run(str(run2), str(tok_dir))
    assert done2["final_step"] == 4 and done2["tokens"] == 128


class _FakeMeta(steps_mod.StepKind):
    """A meta step stand-in with its own head, dropout (global RNG), generator use and state."""

    def __init__(self, ctx):
        super().__init__(ctx)
        self.head = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Linear(ctx.raw_model.cfg.d_model, 3))
        self.calls = 0

    def parameters(self):
        return list(self.head.parameters())

    def modules(self):
        return {"episode_head": self.head}

    def run(self, scale, gen):
        batch = self.ctx.batches.next().to(self.ctx.device)
        labels = torch.randint(0, 3, (batch.shape[0],), generator=gen)
        hidden = self.ctx.model.hidden(batch[:, :-1])[:, -1]
        loss = torch.nn.functional.cross_entropy(self.head(hidden), labels)
        (loss * scale).backward()
        self.calls += 1
        n = batch.shape[0] * (batch.shape[1] - 1)
        return steps_mod.StepOutput(loss=loss.item(), tokens=n, flops=3.0 * n,
                                    metrics={"query_acc": float(self.calls % 3) / 3})

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


@pytest.fixture
def fake_meta(monkeypatch):
    import metapretrain.meta  # noqa: F401  (real learners register first, so replacing one cannot clash later)

    monkeypatch.setitem(steps_mod._STEP_KINDS, "fomaml", _FakeMeta)
    return _FakeMeta


HYBRID = {"meta": {"learner": "fomaml", "hybrid_ratio": 0.5}, "train": {"grad_accum": 2}}


def test_hybrid_draws_and_meta_metrics(tmp_path, tok_dir, fake_meta):
    run = make_run(tmp_path, **HYBRID)
    train_run(str(run), str(tok_dir))
    train = records(run, "train")
    assert all(r["n_next_token"] + r["n_meta"] == 2 for r in train)
    assert 0 < sum(r["n_meta"] for r in train) < 24
    expected = [sum(micro_seeds(42, r["step"] - 1, m)[0] < 0.5 for m in range(2)) for r in train]
    assert [r["n_meta"] for r in train] == expected
    assert all(("meta/query_acc" in r) == (r["n_meta"] > 0) for r in train)
    assert all(("loss" in r) == (r["n_next_token"] > 0) for r in train)
    assert "episode_head" in ckpt.load_modules(ckpt.final_checkpoint(run).path)


def test_resume_after_crash_is_bit_identical(tmp_path, tok_dir, fake_meta, monkeypatch):
    full = make_run(tmp_path, "full", **HYBRID)
    train_run(str(full), str(tok_dir))

    cut = make_run(tmp_path, "cut", **HYBRID)
    original = crash_at(monkeypatch, 7)  # last checkpoint before the crash: step 4
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(str(cut), str(tok_dir))
    assert max(r["step"] for r in records(cut)) == 7
    monkeypatch.setattr(loop_mod.Trainer, "update", original)
    train_run(str(cut), str(tok_dir))

    assert comparable(records(cut)) == comparable(records(full))
    a, b = final_weights(full), final_weights(cut)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = ckpt.load_modules(ckpt.final_checkpoint(full).path), ckpt.load_modules(ckpt.final_checkpoint(cut).path)
    assert all(torch.equal(ma["episode_head"][k], mb["episode_head"][k]) for k in ma["episode_head"])


def test_killed_between_a_checkpoint_and_its_record_resumes_to_the_same_log(tmp_path, tok_dir, monkeypatch):
    """A kill after a checkpoint's rename but before its metrics record: the resumed run writes the record."""
    full = make_run(tmp_path, "full")
    train_run(str(full), str(tok_dir))
    run = make_run(tmp_path, "cut")
    original = loop_mod.Trainer.record

    def record(self, kind, **fields):
        if kind == "checkpoint" and self.counters.step == 4:
            raise RuntimeError("simulated kill")
        return original(self, kind, **fields)

    monkeypatch.setattr(loop_mod.Trainer, "record", record)
    with pytest.raises(RuntimeError, match="simulated kill"):
        train_run(str(run), str(tok_dir))
    assert ckpt.latest_checkpoint(run).step == 4
    assert 4 not in [r["step"] for r in records(run, "checkpoint")]
    monkeypatch.setattr(loop_mod.Trainer, "record", original)
    train_run(str(run), str(tok_dir))
    assert comparable(records(run)) == comparable(records(full))


def test_preemption_checkpoints_and_resumes(tmp_path, tok_dir, monkeypatch):
    full = make_run(tmp_path, "full")
    train_run(str(full), str(tok_dir))
    run = make_run(tmp_path, "pre")
    original = loop_mod.Trainer.update

    def update(self):
        out = original(self)
        if self.counters.step == 6:
            preemption.request()
        return out

    monkeypatch.setattr(loop_mod.Trainer, "update", update)
    try:
        with pytest.raises(preemption.Preempted):
            train_run(str(run), str(tok_dir))
    finally:
        preemption.clear()
    assert ckpt.latest_checkpoint(run).step == 6  # saved at the boundary, off the schedule
    monkeypatch.setattr(loop_mod.Trainer, "update", original)
    train_run(str(run), str(tok_dir))
    assert [r["loss"] for r in records(run, "train")] == [r["loss"] for r in records(full, "train")]
    assert 6 not in [c.step for c in ckpt.list_checkpoints(run)]  # keep=all prunes unscheduled ones later


def test_corrupt_latest_checkpoint_falls_back(tmp_path, tok_dir, capsys):
    run = make_run(tmp_path)
    train_run(str(run), str(tok_dir))
    reference = final_weights(run)
    (run / "pretrain" / "done.json").unlink()
    latest = ckpt.final_checkpoint(run).path
    data = (latest / "model.safetensors").read_bytes()
    (latest / "model.safetensors").write_bytes(data[: len(data) // 2])  # truncated
    assert ckpt.latest_checkpoint(run).step == 8
    train_run(str(run), str(tok_dir))
    assert "falling back" in capsys.readouterr().out
    again = final_weights(run)
    assert all(torch.equal(reference[k], again[k]) for k in reference)
    assert [r["step"] for r in records(run, "eval")] == [0, 4, 8, 12]


def test_killed_after_the_final_checkpoint_only_finishes(tmp_path, tok_dir):
    run = make_run(tmp_path)
    first = train_run(str(run), str(tok_dir))
    before = paths.metrics_file(run).read_text()
    (run / "pretrain" / "done.json").unlink()  # as if killed during the export, before done.json
    again = train_run(str(run), str(tok_dir))
    assert paths.metrics_file(run).read_text() == before
    assert again["final_val_loss"] == first["final_val_loss"] and again["final_step"] == 12


def test_export_hf_all_exports_every_checkpoint(tmp_path, tok_dir):
    pytest.importorskip("transformers")
    run = make_run(tmp_path, train={"budget": {"value": 4}, "checkpoint": {"export_hf": "all"}})
    done = train_run(str(run), str(tok_dir))
    hf = paths.hf_dir(run)
    assert (hf / "config.json").is_file() and (hf / "tokenizer.json").is_file()
    assert sorted(p.name for p in hf.glob("step_*")) == ["step_00000000", "step_00000001", "step_00000002",
                                                         "step_00000004"]
    assert "hf/config.json" in done["outputs"] and "hf/step_00000001/config.json" in done["outputs"]


def test_keep_last_prunes_to_two(tmp_path, tok_dir):
    run = make_run(tmp_path, train={"checkpoint": {"keep": "last"}})
    train_run(str(run), str(tok_dir))
    assert [c.step for c in ckpt.list_checkpoints(run)] == [8, 12]


class _NaNAt(steps_mod.NextTokenStep):
    def run(self, scale, gen):
        out = super().run(scale, gen)
        if self.ctx.batches.index // self.ctx.batches.batch_size == 3:  # the third update
            for p in self.ctx.raw_model.parameters():
                p.grad.fill_(float("nan"))
        return out


@pytest.mark.parametrize("action", ["skip", "stop"])
def test_nonfinite_skip_or_stop(tmp_path, tok_dir, monkeypatch, action):
    monkeypatch.setitem(steps_mod._STEP_KINDS, "next_token", _NaNAt)
    run = make_run(tmp_path, train={"on_nonfinite": action, "checkpoint": {"every": 1, "log_spaced": 0}})
    if action == "stop":
        with pytest.raises(loop_mod.NonFiniteError, match="on_nonfinite"):
            train_run(str(run), str(tok_dir))
        assert ckpt.latest_checkpoint(run).step == 2
        assert records(run, "nonfinite")[0]["step"] == 3
        return
    train_run(str(run), str(tok_dir))
    bad = records(run, "nonfinite")
    assert [r["step"] for r in bad] == [3] and bad[0]["action"] == "skip"
    w2 = ckpt.load_tensors(paths.checkpoints_dir(run) / "step_00000002")
    w3 = ckpt.load_tensors(paths.checkpoints_dir(run) / "step_00000003")
    assert all(torch.equal(w2[k], w3[k]) for k in w2)  # the update was dropped
    assert all(torch.isfinite(v).all() for v in final_weights(run).values())


def test_cli_errors_and_in_process_run(tmp_path, tok_dir, capsys):
    from metapretrain.train.stage import main

    assert main(["--run-dir", str(tmp_path / "nope"), "--data", str(tok_dir)]) == 2
    assert "no resolved config" in capsys.readouterr().err
    run = make_run(tmp_path)
    assert main(["--run-dir", str(run), "--data", str(tmp_path)]) == 2
    assert main(["--run-dir", str(run), "--data", str(tok_dir)]) == 0
    assert (run / "pretrain" / "done.json").is_file()


# ------------------------------------------------------------------ W&B
def test_wandb_failure_never_stops_training(tmp_path, tok_dir, monkeypatch):
    wandb = pytest.importorskip("wandb")

    def boom(*a, **k):
        raise RuntimeError("no network")

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setattr(wandb, "init", boom)
    run = make_run(tmp_path)
    with pytest.warns(UserWarning, match="W&B init failed"):
        train_run(str(run), str(tok_dir))
    assert (run / "pretrain" / "done.json").is_file()


def test_wandb_disabled_writes_nothing(tmp_path, tok_dir, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    run = make_run(tmp_path)
    train_run(str(run), str(tok_dir))
    assert not (tmp_path / "wandb").exists() and not (run / "pretrain" / "wandb").exists()
    assert not (run / "pretrain" / "wandb_id").exists()


def test_wandb_offline_writes_a_run_dir(tmp_path, tok_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = make_run(tmp_path)
    train_run(str(run), str(tok_dir))
    wid = (run / "pretrain" / "wandb_id").read_text().strip()
    assert wid == stable_run_id("test", "run")
    offline = list((tmp_path / "wandb").rglob(f"offline-run-*-{wid}"))
    assert offline and list(offline[0].glob("*.wandb"))
    # Logging to W&B or not never changes training.
    monkeypatch.setenv("WANDB_MODE", "disabled")
    quiet = make_run(tmp_path, "run_quiet")
    train_run(str(quiet), str(tok_dir))
    assert comparable(records(quiet)) == comparable(records(run))


# ------------------------------------------------------ real text, real kill
def test_loss_decreases_on_real_text(tmp_path, tokenized_dir):
    run = make_run(tmp_path, model={"d_model": 64, "n_layers": 2}, train={
        "budget": {"value": 40}, "batch_size": 4, "seq_len": 32, "lr": 3e-3, "warmup_steps": 5, "eval_every": 40,
        "log_every": 5})
    train_run(str(run), str(tokenized_dir))
    evals = records(run, "eval")
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 0.5, evals


@pytest.mark.slow
def test_sigkill_mid_run_resumes_with_identical_losses(tmp_path, tok_dir):
    env = child_env()
    full = make_run(tmp_path, "full", train={"budget": {"value": 20}})
    subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(full), str(tok_dir)], env=env, check=True, timeout=300,
                   capture_output=True)
    run = make_run(tmp_path, "killed", train={"budget": {"value": 20}})
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_CHILD, str(run), str(tok_dir)], env=dict(env, PAUSE_AT="11"),
                            stdout=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:  # ends at READY, or at EOF if the child died first
            if line.strip() == "READY":
                break
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert ckpt.latest_checkpoint(run).step == 8 and not (run / "pretrain" / "done.json").exists()
    subprocess.run([sys.executable, "-c", TRAIN_CHILD, str(run), str(tok_dir)], env=env, check=True, timeout=300,
                   capture_output=True)
    assert comparable(records(run)) == comparable(records(full))
    a, b = final_weights(full), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("learner", ["fomaml", "maml2", "reptile", "maml_ntp"])
def test_real_learners_resume_bit_identical(tmp_path, tok_dir, monkeypatch, learner):
    """The registered meta-learners checkpoint everything they need: a crash and resume changes nothing."""
    from metapretrain.train.steps import known_step_kinds

    if learner not in known_step_kinds():
        pytest.skip(f"{learner} is not registered yet")
    over = {"meta": {"learner": learner, "hybrid_ratio": 0.5,
                     "episode": {"n_way": 3, "k_shot": 2, "q_query": 2, "window": 8, "min_count": 2,
                                 "max_frequency": 0.5},
                     "head": {"layers": 2, "width": 16}, "inner": {"steps": 2},
                     "maml_ntp": {"support_batch_size": 2, "query_batch_size": 2}},
            "train": {"budget": {"value": 6}, "grad_accum": 2, "checkpoint": {"every": 2, "log_spaced": 0}}}
    full = make_run(tmp_path, "full", **over)
    train_run(str(full), str(tok_dir))
    cut = make_run(tmp_path, "cut", **over)
    original = crash_at(monkeypatch, 3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(str(cut), str(tok_dir))
    monkeypatch.setattr(loop_mod.Trainer, "update", original)
    train_run(str(cut), str(tok_dir))
    assert sum(r["n_meta"] for r in records(full, "train")) > 0
    assert comparable(records(cut)) == comparable(records(full))
    a, b = final_weights(full), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_progress_line_keeps_the_last_next_token_loss_lr_and_val_after_a_meta_step(tmp_path, tok_dir, fake_meta,
                                                                                     capsys):
    # The first update whose one micro-batch is a meta step ends the run: its progress line has no loss of its own.
    last = next(s for s in range(2, 50) if micro_seeds(42, s - 1, 0)[0] < 0.5
                and any(micro_seeds(42, p, 0)[0] >= 0.5 for p in range(s - 1)))
    run = make_run(tmp_path, meta={"learner": "fomaml", "hybrid_ratio": 0.5},
                   train={"budget": {"unit": "steps", "value": last}, "progress_every_s": 1e-9, "eval_every": 1000})
    train_run(str(run), str(tok_dir))
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("[pretrain]")]
    nt_loss = [r["loss"] for r in records(run, "train") if "loss" in r][-1]
    val = records(run, "eval")[-1]["val_loss"]
    assert records(run, "train")[-1]["n_meta"] == 1 and "loss" not in records(run, "train")[-1]
    assert lines[-1].startswith(f"[pretrain] {last}/{last} steps")
    assert f"loss {nt_loss:.4f}" in lines[-1] and f"val {val:.4f}" in lines[-1] and "lr " in lines[-1], lines[-1]
