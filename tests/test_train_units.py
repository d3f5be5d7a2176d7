"""The pretraining loop's parts, without a training run: schedule, budgets, compile and fused-AdamW policy,
optimiser groups, batches, micro-batch seeds, the step mix, step-kind declarations, the metrics writer, W&B mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from helpers import tiny_run
from metapretrain.config.load import run_config_from_dict
from metapretrain.device import use_fused
from metapretrain.metrics_log import read_records
from metapretrain.train import steps as steps_mod
from metapretrain.train.batches import DataTooSmallError, TokenBatches, fixed_batches
from metapretrain.train.metrics import MetricsWriter
from metapretrain.train.optim import param_groups
from metapretrain.train.runtime import micro_seeds
from metapretrain.train.schedule import Schedule, decay_steps_for
from metapretrain.train.steps import StepCost
from metapretrain.wandb_run import stable_run_id, wandb_mode


# ---------------------------------------------------------------- schedule
def test_schedule_shapes():
    cos = Schedule(lr=1.0, warmup_steps=10, decay_steps=110, kind="cosine", min_lr_ratio=0.1)
    assert [cos.factor(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cos.factor(10) == pytest.approx(1.0)
    assert cos.factor(60) == pytest.approx(0.55)  # half-way: min + (1 - min) / 2
    assert cos.factor(110) == pytest.approx(0.1) and cos.factor(500) == pytest.approx(0.1)
    lin = Schedule(lr=2.0, warmup_steps=0, decay_steps=100, kind="linear", min_lr_ratio=0.0)
    assert [lin.lr_at(s) for s in (0, 25, 50, 100)] == pytest.approx([2.0, 1.5, 1.0, 0.0])
    const = Schedule(lr=1.0, warmup_steps=4, decay_steps=10, kind="constant")
    assert [const.factor(s) for s in (0, 3, 4, 1000)] == pytest.approx([0.25, 1.0, 1.0, 1.0])
    values = [cos.factor(s) for s in range(10, 120)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_decay_steps_from_budget():
    def train(unit, value, decay=None):
        return run_config_from_dict(tiny_run(train={"budget": {"unit": unit, "value": value}, "decay_steps": decay,
                                                    "grad_accum": 2})).train

    # 2 sequences x 16 tokens x 2 micro-batches = 64 tokens per update, at 1,000 FLOPs per token
    update = StepCost(tokens=64, flops=64 * 1000.0)
    assert decay_steps_for(train("steps", 12), update) == 12
    assert decay_steps_for(train("steps", 12, decay=500), update) == 500
    assert decay_steps_for(train("tokens", 640), update) == 10
    assert decay_steps_for(train("tokens", 641), update) == 11
    assert decay_steps_for(train("flops", 64 * 1000 * 7), update) == 7


def test_compile_policy():
    from metapretrain.train.runtime import CPU_COMPILE_MIN_MICRO_BATCHES, use_compile

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_compile("auto", cpu, 200) and use_compile("auto", cpu, CPU_COMPILE_MIN_MICRO_BATCHES)
    assert use_compile("auto", cuda, 10) and use_compile("on", cpu, 1) and not use_compile("off", cuda, 10**9)


# --------------------------------------------------------------- optimiser
def test_fused_adamw_policy_and_fsdp_mix(tmp_path):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    cpu = torch.device("cpu")
    plain = torch.nn.Parameter(torch.ones(4))
    assert use_fused("auto", cpu, [plain]) and use_fused("on", cpu, [plain]) and not use_fused("off", cpu, [plain])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        sharded = torch.nn.Parameter(distribute_tensor(torch.ones(4), init_device_mesh("cpu", (1,)), [Shard(0)]))
        assert use_fused("auto", cpu, [sharded])
        # FSDP-sharded model + a step kind's replicated head: torch's fused kernel takes one kind only.
        assert not use_fused("auto", cpu, [sharded, plain])
        with pytest.raises(ValueError, match="train.fused_adamw"):
            use_fused("on", cpu, [sharded, plain])
        opt = torch.optim.AdamW([sharded, plain], fused=use_fused("auto", cpu, [sharded, plain]) or None)
        sharded.grad, plain.grad = torch.ones_like(sharded), torch.ones_like(plain)
        opt.step()
    finally:
        dist.destroy_process_group()


def test_weight_decay_on_matrices_only():
    from metapretrain.model import ModelConfig
    from metapretrain.model.decoder import Decoder

    model = Decoder(ModelConfig(d_model=16, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden=32, vocab_size=50,
                                max_seq_len=8))
    head = torch.nn.Linear(16, 4)
    decay, no_decay = param_groups(model, list(head.parameters()), 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names.get(id(p), "head") for p in decay["params"]}
    assert "embed.weight" not in decayed and "lm_head.weight" in decayed
    assert "layers.0.attn.q_proj.weight" in decayed and "head" in decayed
    assert all(p.dim() == 1 or names.get(id(p)) == "embed.weight" for p in no_decay["params"])
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    n_all = sum(1 for _ in model.parameters()) + 2
    assert len(decay["params"]) + len(no_decay["params"]) == n_all


# ----------------------------------------------------------------- batches
def test_batches_are_deterministic_resumable_and_cover_every_window():
    tokens = np.arange(1001, dtype=np.uint16)
    a = TokenBatches(tokens, batch_size=3, seq_len=10, seed=7)
    first = [a.next() for _ in range(40)]  # 120 windows: crosses the epoch boundary (100 windows)
    assert first[0].shape == (3, 11) and first[0].dtype == torch.int64
    starts = torch.cat([b[:, 0] for b in first[:34]])[:100]
    assert sorted(starts.tolist()) == list(range(0, 1000, 10))  # an epoch visits every window once
    assert torch.equal(first[0][:, 1:], first[0][:, :-1] + 1)  # contiguous text
    b = TokenBatches(tokens, batch_size=3, seq_len=10, seed=7)
    for _ in range(17):
        b.next()
    c = TokenBatches(tokens, batch_size=3, seq_len=10, seed=7)
    c.load_state_dict(b.state_dict())
    assert all(torch.equal(c.next(), x) for x in first[17:])
    other = TokenBatches(tokens, batch_size=3, seq_len=10, seed=8)
    assert not torch.equal(other.next(), first[0])
    with pytest.raises(ValueError, match="does not match"):
        TokenBatches(tokens, batch_size=4, seq_len=10, seed=7).load_state_dict(b.state_dict())
    with pytest.raises(DataTooSmallError, match="seq_len"):
        TokenBatches(np.arange(5), batch_size=1, seq_len=10, seed=0)


def test_validation_batches_are_fixed():
    tokens = np.arange(500, dtype=np.uint16)
    a, b = fixed_batches(tokens, 2, 8, 3), fixed_batches(tokens, 2, 8, 3)
    assert len(a) == 3 and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert len({int(x[i, 0]) for x in a for i in range(2)}) == 6
    few = fixed_batches(np.arange(20), 2, 8, 3)  # 2 windows only: repeated
    assert len(few) == 3 and few[0].shape == (2, 9)


def test_micro_seeds_deterministic_and_hybrid_fraction():
    assert micro_seeds(1, 5, 0) == micro_seeds(1, 5, 0)
    assert micro_seeds(1, 5, 0) != micro_seeds(1, 5, 1) != micro_seeds(2, 5, 0)
    draws = [micro_seeds(3, s, m)[0] for s in range(500) for m in range(2)]
    assert 0.45 < np.mean([u < 0.5 for u in draws]) < 0.55


class _Still(steps_mod.StepKind):
    def run(self, scale, gen):
        raise AssertionError("not run here")


def test_step_mix_draws_like_the_hybrid_ratio_and_counts_an_off_slot():
    from metapretrain.train.steps import Slot, StepMix, config_slots

    mix = StepMix([Slot("next_token", _Still, 0.7), Slot("meta", _Still, 0.3, "meta.learner")], ctx=None)
    draws = [micro_seeds(3, s, m)[0] for s in range(200) for m in range(2)]
    assert [mix.draw(u)[0] for u in draws] == ["meta" if u < 0.3 else "next_token" for u in draws]
    assert mix.draw(0.0)[1] is mix.kinds["meta"] and mix.base == "next_token"
    off = StepMix([Slot("next_token", _Still, 1.0), Slot("meta", None, 0.0, "meta.learner")], ctx=None)
    assert {off.draw(u)[0] for u in draws} == {"next_token"}
    assert off.names == ["next_token", "meta"] and list(off.kinds) == ["next_token"]
    vanilla, meta = config_slots(run_config_from_dict({})), config_slots(run_config_from_dict(
        {"meta": {"learner": "fomaml", "hybrid_ratio": 0.5}, "train": {"grad_accum": 2}}))
    assert [(s.name, s.kind) for s in vanilla] == [("next_token", steps_mod.NextTokenStep), ("meta", None)]
    assert [s.probability for s in meta] == [0.5, 0.5] and meta[1].label == "meta.learner=fomaml"


def test_a_step_kind_declares_valid_sync_and_needs():
    with pytest.raises(TypeError, match="grad_sync='ddp'; expected one of wrapper, explicit"):
        type("BadSync", (_Still,), {"grad_sync": "ddp"})
    with pytest.raises(TypeError, match=r"needs names \['shard'\]"):
        type("BadNeeds", (_Still,), {"needs": ("shard",)})
    with pytest.raises(ValueError, match="step kind next_token needs StepContext.batches"):
        steps_mod.step_kind("next_token")(steps_mod.StepContext(model=None, cfg=None, device=None, batches=None))


# ----------------------------------------------------------------- metrics
def test_metrics_truncate_and_torn_line(tmp_path):
    w = MetricsWriter(tmp_path / "metrics.jsonl")
    for s in range(5):
        w.write({"kind": "train", "step": s, "loss": float("nan") if s == 2 else 1.0})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write('{"kind": "train", "st')  # a kill mid-line
    recs = read_records(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3, 4] and recs[2]["loss"] is None
    kept = w.truncate_to(2)
    assert [r["step"] for r in kept] == [0, 1, 2]
    assert [r["step"] for r in read_records(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    w.truncate_to(None)
    assert read_records(tmp_path / "metrics.jsonl") == []


def test_wandb_mode_and_stable_id(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert wandb_mode("auto") == "offline" and wandb_mode("disabled") == "disabled"
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert wandb_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert wandb_mode("online") == "disabled"
    assert stable_run_id("exp", "method~a") == stable_run_id("exp", "method~a") != stable_run_id("exp", "method~b")
