"""Training-side accounting: schedules sized on the step-kind mix, next-token tokens apart, the final train
loss over an interval, a fine-tuning seed apart from the pretraining seed."""

from __future__ import annotations

import json
import math

import pytest

from helpers import write_run_dir
from metapretrain import checkpoint as ckpt
from metapretrain import paths
from metapretrain.config.load import run_config_from_dict
from metapretrain.config.overrides import deep_merge
from metapretrain.cost import run_cost, update_cost
from metapretrain.metrics_log import read_records

# A hybrid FOMAML run small enough to train 40 updates in a second; its meta micro-batch costs about four
# next-token ones, so sizing its schedule as if every micro-batch were next-token is far off.
FOMAML = {
    "model": {"preset": "micro", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
              "max_seq_len": 64},
    "train": {"budget": {"unit": "steps", "value": 8}, "batch_size": 2, "seq_len": 16, "grad_accum": 2, "lr": 3e-3,
              "warmup_steps": 2, "eval_every": 1000, "eval_batches": 1, "log_every": 1,
              "checkpoint": {"every": 1000, "log_spaced": 0, "export_hf": "none"}},
    "meta": {"learner": "fomaml", "hybrid_ratio": 0.5,
             "episode": {"n_way": 4, "k_shot": 2, "q_query": 2, "window": 16, "min_count": 8, "max_frequency": 0.5},
             "head": {"layers": 2, "width": 16}, "inner": {"steps": 3, "lr": 0.05}},
    "launch": {"launcher": "debug"},
    "wandb": {"mode": "disabled"},
}


def _vocab(tokenized) -> int:
    return json.loads((tokenized / "manifest.json").read_text())["vocab_size"]


def test_flop_budget_sizes_a_fomaml_schedule_on_the_step_kind_mix(tmp_path, synthetic_tokenized, single_thread):
    vocab = _vocab(synthetic_tokenized)
    base = deep_merge(FOMAML, {"tokenizer": {"vocab_size": vocab}})
    model_cfg = run_config_from_dict(base).model.resolved(tokenizer_vocab=vocab)
    update = update_cost(run_config_from_dict(base), model_cfg, 1)
    next_token = update_cost(run_config_from_dict(deep_merge(base, {"meta": {"learner": "none"}})), model_cfg, 1)
    planned = 40
    budget = planned * update.flops
    assert budget / next_token.flops > 2 * planned  # the next-token sizing this replaces: a cosine twice too long

    config = deep_merge(base, {"train": {"budget": {"unit": "flops", "value": budget}}})
    run = write_run_dir(tmp_path, "fomaml-flops", config, "acct")
    from metapretrain.train.stage import train_run

    done = train_run(str(run), str(synthetic_tokenized))
    decay = ckpt.load_state(ckpt.final_checkpoint(run).path)["schedule"]["decay_steps"]
    assert decay == planned == run_cost(run_config_from_dict(config)).updates
    assert abs(done["final_step"] - decay) <= 4, (done["final_step"], decay)
    # The loop still stops on the FLOPs it counts: the first update that reaches the budget.
    train = [r for r in read_records(paths.metrics_file(run)) if r["kind"] == "train"]
    assert train[-1]["flops"] >= budget > train[-2]["flops"] and train[-1]["step"] == done["final_step"]


def test_steps_budget_schedule_is_the_step_count_whatever_the_mix():
    from metapretrain.train.schedule import decay_steps_for

    cfg = run_config_from_dict(deep_merge(FOMAML, {"tokenizer": {"vocab_size": 128}}))
    update = update_cost(cfg, cfg.model.resolved(tokenizer_vocab=128), 1)
    assert decay_steps_for(cfg.train, update) == 8


def test_records_count_next_token_tokens_apart_from_episode_windows(tmp_path, synthetic_tokenized, single_thread):
    from metapretrain.train.stage import train_run

    config = deep_merge(FOMAML, {"tokenizer": {"vocab_size": _vocab(synthetic_tokenized)}})
    run = write_run_dir(tmp_path, "fomaml", config, "acct")
    train_run(str(run), str(synthetic_tokenized))
    records = read_records(paths.metrics_file(run))
    assert all("tokens_ntp" in r for r in records)
    train = [r for r in records if r["kind"] == "train"]  # log_every 1: one record per update
    batch_tokens = FOMAML["train"]["batch_size"] * FOMAML["train"]["seq_len"]
    ntp = 0
    for r in train:
        ntp += r["n_next_token"] * batch_tokens
        assert r["tokens_ntp"] == ntp
    assert sum(r["n_meta"] for r in train) > 0 and train[-1]["tokens_ntp"] < train[-1]["tokens"]

    vanilla = write_run_dir(tmp_path, "vanilla", deep_merge(config, {"meta": {"learner": "none"}}), "acct")
    train_run(str(vanilla), str(synthetic_tokenized))
    assert all(r["tokens_ntp"] == r["tokens"] for r in read_records(paths.metrics_file(vanilla)))


def test_a_checkpoint_from_before_tokens_ntp_resumes_with_what_is_known():
    from types import SimpleNamespace

    from metapretrain.train.loop import _counters

    saved = {"step": 5, "tokens": 320, "flops": 1.0, "wall": 2.0}
    off = SimpleNamespace(slots=[SimpleNamespace(kind=object), SimpleNamespace(kind=None)])
    on = SimpleNamespace(slots=[SimpleNamespace(kind=object), SimpleNamespace(kind=object)])
    assert _counters(saved, off)["tokens_ntp"] == 320  # next-token steps only: every token was one
    assert _counters(saved, on)["tokens_ntp"] is None  # episode windows mixed in: not known, not written
    assert _counters(saved | {"tokens_ntp": 100}, on)["tokens_ntp"] == 100


def test_loss_interval_is_the_mean_over_the_logging_interval_and_survives_a_resume(
        tmp_path, synthetic_tokenized, single_thread, monkeypatch):
    from metapretrain.train import loop as loop_mod
    from metapretrain.train.stage import train_run

    config = deep_merge(FOMAML, {"tokenizer": {"vocab_size": _vocab(synthetic_tokenized)},
                                 "train": {"budget": {"value": 9}, "checkpoint": {"every": 2}}})
    every = write_run_dir(tmp_path, "every", config, "acct")  # log_every 1: each update's own loss
    train_run(str(every), str(synthetic_tokenized))
    per_update = {r["step"]: r for r in read_records(paths.metrics_file(every)) if r["kind"] == "train"}

    sparse_cfg = deep_merge(config, {"train": {"log_every": 3}})
    sparse = write_run_dir(tmp_path, "sparse", sparse_cfg, "acct")
    original = loop_mod.Trainer.update

    def crash(self):  # after the checkpoint at step 4, inside the logging interval (3, 6]
        if self.counters.step == 5:
            raise RuntimeError("simulated crash")
        return original(self)

    monkeypatch.setattr(loop_mod.Trainer, "update", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train_run(str(sparse), str(synthetic_tokenized))
    monkeypatch.setattr(loop_mod.Trainer, "update", original)
    train_run(str(sparse), str(synthetic_tokenized))
    logged = [r for r in read_records(paths.metrics_file(sparse)) if r["kind"] == "train"]
    assert [r["step"] for r in logged] == [1, 3, 6, 9]
    previous = 0
    for r in logged:
        interval = [per_update[s] for s in range(previous + 1, r["step"] + 1) if per_update[s]["n_next_token"]]
        n = sum(u["n_next_token"] for u in interval)
        assert r["loss_interval"] == pytest.approx(sum(u["loss"] * u["n_next_token"] for u in interval) / n)
        for slot in ("n_meta", "n_next_token"):  # the counts cover the interval too, across the resume
            assert r[slot] == sum(per_update[s][slot] for s in range(previous + 1, r["step"] + 1))
        previous = r["step"]
    assert {r["loss_interval"] for r in logged} != {r.get("loss") for r in logged}
    # So the records' counts sum to every micro-batch the run drew (the true meta fraction).
    assert sum(r["n_meta"] + r["n_next_token"] for r in logged) == 9 * 2
    assert sum(r["n_meta"] for r in logged) == sum(u["n_meta"] for u in per_update.values())


def test_final_train_loss_from_a_constructed_metrics_file(tmp_path):
    from metapretrain.metrics_log import final_train_loss

    def write(name, records):
        path = tmp_path / name
        path.write_text("".join(json.dumps({"step": i + 1, "tokens": 0, "flops": 0, "wall": 0} | r) + "\n"
                                for i, r in enumerate(records)))
        return [r for r in read_records(path) if r["kind"] == "train"]

    new = write("new.jsonl", [{"kind": "train", "loss": 4.0, "loss_interval": 4.5},
                              {"kind": "train", "loss": 3.0, "loss_interval": 3.4}, {"kind": "eval", "val_loss": 3.3}])
    assert final_train_loss(new) == 3.4  # the interval's mean, not the last update's 3.0
    # The last update was all meta steps, so it has no `loss`; its interval still had next-token ones.
    assert final_train_loss(write("meta.jsonl", [{"kind": "train", "loss": 4.0, "loss_interval": 4.2},
                                                 {"kind": "train", "loss_interval": 3.9}])) == 3.9
    assert final_train_loss(write("none.jsonl", [{"kind": "train", "loss": 4.0, "loss_interval": 4.2},
                                                 {"kind": "train", "loss": None}])) == 4.2
    old = write("old.jsonl", [{"kind": "train", "loss": 4.0}, {"kind": "train", "loss": 3.0}])
    assert final_train_loss(old) == 3.0  # from before loss_interval: the last update's loss
    assert math.isnan(final_train_loss(write("meta_only.jsonl", [{"kind": "train", "n_meta": 1}])))
    assert math.isnan(final_train_loss([]))
    assert final_train_loss([{"loss": 2.0}, {"loss": float("nan"), "loss_interval": float("nan")}]) == 2.0


def test_finetune_seed_defaults_to_the_run_seed_and_changes_the_finetune_alone(tmp_path, data_root, single_thread):
    from metapretrain.finetune import stage
    from test_finetune import make_run, small_uner

    if not (data_root / "uner" / "Danish-DDT").is_dir():
        pytest.skip("no UNER data")
    old = run_config_from_dict({"seed": 5})  # a config from before finetune.seed loads, with the run's seed
    assert old.finetune.seed is None and old.finetune.seed_of(old.seed) == 5
    uner = small_uner(data_root, tmp_path / "uner")
    outputs = {}
    for name, seed in (("null", None), ("same", 42), ("other", 7)):
        run = make_run(tmp_path / name / "runs" / "method~vanilla", data_root, lines=200,
                       finetune={"data_dir": str(uner), "epochs": 1, "max_train_sentences": 40, "seed": seed})
        assert stage.main(["--run-dir", str(run), "--train-set", "Danish-DDT", "--regime", "head"]) == 0
        outputs[name] = (run / "finetune" / "Danish-DDT~head" / "results.csv").read_text()
    assert run_config_from_dict({}).seed == 42  # `null` fine-tunes with the run's seed: the same as 42
    assert outputs["null"] == outputs["same"] != outputs["other"]
