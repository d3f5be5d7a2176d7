"""What a grid will cost (`metapretrain grid show`): FLOPs, GPU-hours and disk, by hand and against real files."""

from __future__ import annotations

import json

import pytest

from helpers import REPO, tiny_model, write_run_dir
from metapretrain.config.load import run_config_from_dict
from metapretrain.config.overrides import deep_merge
from metapretrain.cost import CHECKPOINT_OVERHEAD_BYTES, TOKENIZER_BYTES_PER_ENTRY, run_cost
from metapretrain.grid import load_experiment
from metapretrain.grid_cli import main as grid_main

SMALL = {
    "tokenizer": {"vocab_size": 512},
    "model": {"preset": "micro"},  # d 64, 4 layers, 4 heads, 2 KV heads, FFN 256
    "train": {"budget": {"unit": "steps", "value": 20}, "batch_size": 4, "seq_len": 32, "grad_accum": 2,
              "checkpoint": {"every": 10, "log_spaced": 3, "keep": "all", "export_hf": "final"}},
    "meta": {"learner": "fomaml", "hybrid_ratio": 0.5, "episode": {"n_way": 4, "k_shot": 2, "q_query": 2, "window": 8},
             "head": {"layers": 2, "width": 16}, "inner": {"steps": 2}},
}


def test_small_run_by_hand():
    c = run_cost(run_config_from_dict(SMALL))
    d, L, V, F, kv = 64, 4, 512, 256, 2 * 16  # kv: 2 KV heads of dimension 16
    block = d * d + 2 * d * kv + d * d + 3 * d * F
    assert c.parameters == 2 * V * d + L * (block + 2 * d) + d == 311_872
    fwd = lambda T: 2 * (L * block + d * V) + 2 * L * d * (T + 1)  # noqa: E731  (forward FLOPs per token)
    next_token = 4 * 32 * 3 * fwd(32)
    backbone = fwd(8) - 2 * d * V  # episode features: no LM head
    head = 2 * (d * 16 + 16 * 4)
    # FOMAML: 8 support windows forward, 8 query windows forward + backward, head: 2 inner steps of
    # forward + backward on the support, support metrics before/after, query forward + backward.
    episode = 8 * 8 * backbone + 8 * 8 * 3 * backbone + head * (3 * 2 * 8 + 2 * 8 + 3 * 8)
    assert c.micro_batch_flops == pytest.approx(0.5 * next_token + 0.5 * episode)
    assert c.updates == 20 and c.flops == pytest.approx(20 * 2 * (0.5 * next_token + 0.5 * episode))
    assert c.tokens == pytest.approx(20 * 2 * (0.5 * 4 * 32 + 0.5 * 16 * 8))
    assert c.gpu_hours == pytest.approx(c.flops / (0.4 * 989e12 * 3600))
    # Checkpoints at 0, 1, 2, 4 (log-spaced), 10, 20; each fp32 weights + two AdamW moments of the
    # model and the episode head (d·16 + 16 + 16·4 + 4 parameters), plus the small files.
    assert c.extra_parameters == d * 16 + 16 + 16 * 4 + 4
    assert c.checkpoints == 6
    assert c.checkpoint_bytes == 12 * (311_872 + c.extra_parameters) + CHECKPOINT_OVERHEAD_BYTES
    assert c.init_checkpoint_bytes == 4 * (311_872 + c.extra_parameters) + CHECKPOINT_OVERHEAD_BYTES  # no moments yet
    assert c.hf_exports == 1 and c.hf_export_bytes == 4 * 311_872 + TOKENIZER_BYTES_PER_ENTRY * V
    assert c.disk_bytes == c.init_checkpoint_bytes + 5 * c.checkpoint_bytes + c.hf_export_bytes


@pytest.mark.parametrize("change, check", [
    ({"train": {"checkpoint": {"keep": "last", "export_hf": "none"}}}, lambda c: (c.checkpoints, c.hf_exports) == (2, 0)),
    ({"train": {"checkpoint": {"export_hf": "all"}}}, lambda c: c.hf_exports == 1 + 6),  # hf/ and hf/step_*/ each
    ({"meta": {"learner": "none"}}, lambda c: c.meta_fraction == 0 and c.extra_parameters == 0),
    ({"train": {"budget": {"value": 25}}}, lambda c: c.checkpoints == 7),  # the final step 25 is saved too
    # A token budget of 10 updates' expected tokens takes 10 updates.
    ({"train": {"budget": {"unit": "tokens", "value": 10 * 2 * (0.5 * 128 + 0.5 * 128)}}}, lambda c: c.updates == 10),
])
def test_schedule_and_budget_variants(change, check):
    assert check(run_cost(run_config_from_dict(deep_merge(SMALL, change))))


def test_several_processes_sample_an_episode_each_and_fsdp_doubles_the_checkpoint():
    from metapretrain.train.steps import step_kind

    one = run_cost(run_config_from_dict(SMALL))
    multi = {"launch": {"launcher": "slurm", "slurm": {"tasks_per_node": 4}}, "train": {"distributed": {"strategy": "fsdp"}}}
    cfg = run_config_from_dict(deep_merge(SMALL, multi))
    c = run_cost(cfg)
    model_cfg = cfg.model.resolved(tokenizer_vocab=512)
    nt, ep = (step_kind(k).expected_cost(cfg, model_cfg).flops for k in ("next_token", "fomaml"))
    assert c.processes == 4 and c.micro_batch_flops == pytest.approx(0.5 * nt + 0.5 * 4 * ep)
    assert c.checkpoint_bytes == 2 * one.checkpoint_bytes - CHECKPOINT_OVERHEAD_BYTES  # + dcp/ shards
    assert c.init_checkpoint_bytes == 2 * one.init_checkpoint_bytes - CHECKPOINT_OVERHEAD_BYTES


def test_checkpoint_and_export_bytes_match_a_real_run(tmp_path, synthetic_tokenized):
    """The byte model against the files a real pretrain writes (fp32 weights, AdamW state, HF export)."""
    from metapretrain.checkpoint import list_checkpoints
    from metapretrain.train.stage import train_run

    vocab = json.loads((synthetic_tokenized / "manifest.json").read_text())["vocab_size"]
    config = {"tokenizer": {"vocab_size": vocab}, "model": tiny_model(),
              "train": {"budget": {"unit": "steps", "value": 6}, "batch_size": 2, "seq_len": 16, "eval_every": 3,
                        "eval_batches": 1, "checkpoint": {"every": 3, "log_spaced": 2, "export_hf": "final"}},
              "launch": {"launcher": "debug"}, "wandb": {"mode": "disabled"}}
    run = write_run_dir(tmp_path, "run", config, "cost")
    train_run(str(run), str(synthetic_tokenized))
    c = run_cost(run_config_from_dict(config))
    ckpts = list_checkpoints(run)
    assert [x.step for x in ckpts] == [0, 1, 2, 3, 6] and c.checkpoints == len(ckpts)
    for info in ckpts:
        size = sum(f.stat().st_size for f in info.path.rglob("*") if f.is_file())
        expected = c.init_checkpoint_bytes if info.step == 0 else c.checkpoint_bytes
        assert abs(size - expected) < CHECKPOINT_OVERHEAD_BYTES, (info.path, size, expected)
        print(f"{info.path.name}: {size} bytes on disk, {expected} estimated")
    hf = sum(f.stat().st_size for f in (run / "pretrain" / "hf").rglob("*") if f.is_file())
    print(f"hf: {hf} bytes on disk, {c.hf_export_bytes} estimated")
    assert c.hf_exports == 1 and abs(hf - c.hf_export_bytes) < 0.1 * c.hf_export_bytes, (hf, c.hf_export_bytes)


def test_paper_large_run_takes_about_half_a_terabyte():
    exp = load_experiment(REPO / "config" / "paper.yaml")
    costs = {r.run_id: run_cost(r.typed) for r in exp.runs}
    large = costs["method~vanilla/size~large"]
    assert large.checkpoints == 61 and large.hf_exports == 62
    assert 0.5e12 < large.disk_bytes < 0.6e12  # 61 × 6.8 GB checkpoints + 62 × 2.3 GB exports
    assert large.flops == pytest.approx(8.0e19, rel=0.01)  # 6,000 × 2,048 × 2,048 tokens (README's table)
    assert costs["method~fomaml/size~large"].flops < 0.6 * large.flops


def test_grid_show_prints_costs_and_totals(tmp_path, capsys):
    (tmp_path / "e.yaml").write_text("experiment: c\ndefaults:\n" + "".join(
        f"  {k}: {json.dumps(v)}\n" for k, v in SMALL.items()) + "grid:\n  seed: [1, 2]\n")
    assert grid_main(["show", str(tmp_path / "e.yaml"), "--json", "--mfu", "0.5", "--peak-tflops", "100"]) == 0
    out = json.loads(capsys.readouterr().out)
    one = run_cost(run_config_from_dict(SMALL), mfu=0.5, peak_tflops=100)
    assert [r["cost"]["flops"] for r in out["runs"]] == [pytest.approx(one.flops)] * 2
    assert out["cost"]["total"]["disk_bytes"] == 2 * one.disk_bytes
    assert out["cost"]["total"]["gpu_hours"] == pytest.approx(2 * one.flops / (0.5 * 100e12 * 3600))
    assert out["cost"]["mfu"] == 0.5 and out["cost"]["peak_tflops"] == 100
    assert grid_main(["show", str(tmp_path / "e.yaml")]) == 0
    table = capsys.readouterr().out
    assert "total" in table and "GPU-h" in table and "MFU 0.4 × 989 TFLOP/s" in table and "6 ckpt + 1 HF" in table
    with pytest.raises(SystemExit):
        grid_main(["show", str(tmp_path / "e.yaml"), "--mfu", "40"])
