"""Compute-matched readings: the checkpoint a matched fine-tune reads (exact, between, never beyond), the
stage names they get, and how ner-table and the ΔF1 tables carry them."""

from __future__ import annotations

import json
import math

import pytest
import torch

from helpers import tiny_model
from metapretrain import checkpoint as ckpt
from metapretrain import paths, stages
from metapretrain.matching import matched_checkpoint, reading_name, reading_unit

# (step, next-token tokens, flops) of the fixture run's checkpoints: FLOPs not proportional to steps, as in a
# meta run whose steps cost less than vanilla's.
CHECKPOINTS = [(0, 0, 0.0), (10, 1000, 100.0), (20, 2000, 250.0), (30, 3000, 400.0)]


def _run(tmp_path, name="vanilla", run_id=None, checkpoints=CHECKPOINTS, with_ntp=True):
    from metapretrain.config.load import run_config_from_dict, write_run_config
    from metapretrain.model import Decoder

    cfg = run_config_from_dict({"model": tiny_model(d_model=16, n_layers=1, ffn_hidden=32, max_seq_len=32),
                                "train": {"seq_len": 16}, "launch": {"launcher": "debug"}})
    run = tmp_path / name
    run.mkdir()
    write_run_config(paths.resolved_config(run), cfg)
    paths.run_record(run).write_text(json.dumps({"run_id": run_id or name, "experiment": "t", "axes": {}}))
    torch.manual_seed(0)
    model = Decoder(cfg.model.resolved(tokenizer_vocab=64))
    for step, ntp, flops in checkpoints:
        ckpt.save_checkpoint(run, step, model=model, state={}, config=cfg.to_dict(), tokens=2 * ntp, flops=flops,
                             tokens_ntp=ntp if with_ntp else None)
    paths.pretrain_dir(run).mkdir(parents=True, exist_ok=True)
    paths.done_file(paths.pretrain_dir(run)).write_text(json.dumps({"stage": "pretrain",
                                                                    "final_step": checkpoints[-1][0]}))
    return run


@pytest.mark.parametrize("unit,value,step", [
    ("flops", 250.0, 20),     # exact: the checkpoint at the target itself
    ("flops", 399.9, 20),     # between two checkpoints: the earlier one
    ("flops", 1e9, 30),       # the target beyond the run: its last checkpoint
    ("steps", 29, 20),
    ("steps", 10, 10),
    ("tokens", 1999, 10),     # next-token tokens, not `tokens` (twice as many here)
    ("tokens", 3000, 30),
])
def test_at_or_before_picks_the_last_checkpoint_not_beyond_the_target(tmp_path, unit, value, step):
    run = _run(tmp_path)
    info = ckpt.at_or_before(run, unit, value)
    assert info.step == step and info.verified
    assert info.count(unit) <= value


def test_at_or_before_never_reads_beyond_even_when_the_next_is_closer(tmp_path):
    run = _run(tmp_path)
    assert ckpt.nearest(run, flops=249.0).step == 20  # nearest would read 1 FLOP beyond the target
    assert ckpt.at_or_before(run, "flops", 249.0).step == 10


def test_at_or_before_errors_say_why(tmp_path):
    run = _run(tmp_path, checkpoints=[(5, 500, 50.0), (10, 1000, 100.0)])
    with pytest.raises(ckpt.CheckpointError, match=r"no checkpoint at or before flops = 10 .*step 5.*flops = 50"):
        ckpt.at_or_before(run, "flops", 10.0)
    old = _run(tmp_path, name="old", with_ntp=False)
    with pytest.raises(ckpt.CheckpointError, match="does not record tokens"):
        ckpt.at_or_before(old, "tokens", 1000)
    assert ckpt.at_or_before(old, "flops", 100.0).step == 10  # steps and FLOPs are always recorded
    with pytest.raises(ValueError, match="unknown matching unit"):
        ckpt.at_or_before(run, "wall", 1.0)


def test_matched_checkpoint_targets_the_meta_runs_final_count(tmp_path):
    vanilla = _run(tmp_path)
    meta = _run(tmp_path, name="meta", run_id="method~fomaml/seed~1",
                checkpoints=[(0, 0, 0.0), (15, 750, 120.0), (30, 1500, 300.0)])
    info, match = matched_checkpoint(vanilla, meta, "flops")
    assert info.step == 20  # vanilla's 400 FLOPs at step 30 would be beyond the meta run's 300
    assert match["match_target"] == 300.0 and match["match_actual"] == 250.0
    assert match["match_ratio"] == pytest.approx(250 / 300)
    assert match["matched_to"] == "method~fomaml/seed~1" and match["meta_final_step"] == 30
    assert match["reading"] == reading_name("flops", "method~fomaml/seed~1")
    info, match = matched_checkpoint(vanilla, meta, "steps")
    assert info.step == 30 and match["match_ratio"] == 1.0


def test_reading_names_and_stage_keys_round_trip():
    reading = reading_name("flops", "method~fomaml/seed~1")
    assert reading.startswith("matched-flops-") and len(reading) == len("matched-flops-") + 8
    assert reading_unit(reading) == "flops"
    with pytest.raises(ValueError, match="not a matched reading"):
        reading_unit("final")
    st = stages.finetune("results/e/runs/r", "Danish-DDT", "head", reading)
    assert st.key == f"finetune/Danish-DDT~head~{reading}"
    assert st.directory == paths.finetune_dir("results/e/runs/r", "Danish-DDT", "head", reading)
    assert stages.launched(st.key, "results/e/runs/r") == st
    assert stages.launched("finetune/Danish-DDT~head", "results/e/runs/r") == stages.finetune(
        "results/e/runs/r", "Danish-DDT", "head")
    with pytest.raises(ValueError, match="expected finetune"):
        stages.launched("finetune/a~b~c~d", "r")


def _finetune_result(run_dir, run_id, train_set, value, reading=None, done_extra=None):
    """A finished fine-tune directory as the finetune stage leaves it (results.csv, done.json)."""
    from metapretrain.finetune.stage import RESULT_COLUMNS

    out = paths.finetune_dir(run_dir, train_set, "head", reading)
    out.mkdir(parents=True)
    rows = [[run_id, "{}", train_set, "head", ev, "test", kind, "micro_f1", v]
            for ev, kind, v in ((train_set, "in_language", value), ("Other-X", "cross_lingual", value / 2))]
    text = ",".join(RESULT_COLUMNS) + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows)
    (out / "results.csv").write_text(text)
    paths.done_file(out).write_text(json.dumps({"stage": "finetune", "checkpoint_step": 30} | (done_extra or {})))
    return out


def test_ner_table_carries_each_rows_reading(tmp_path):
    from metapretrain.finetune.table import collect

    exp = tmp_path / "exp"
    v, m = exp / "runs" / "method~vanilla", exp / "runs" / "method~fomaml"
    _finetune_result(m, "method~fomaml", "Danish-DDT", 0.5)
    _finetune_result(v, "method~vanilla", "Danish-DDT", 0.4)
    reading = reading_name("flops", "method~fomaml")
    _finetune_result(v, "method~vanilla", "Danish-DDT", 0.3, reading,
                     {"reading": reading, "matched_to": "method~fomaml", "match_target": 300.0,
                      "checkpoint_step": 20, "checkpoint_flops": 250.0, "checkpoint_tokens_ntp": 2000})
    rows, pending = collect(exp)
    assert not pending
    got = {(r["pretrain_run"], r["reading"], r["matched_to"], r["checkpoint_step"]) for r in rows}
    assert got == {("method~fomaml", "final", "", "30"), ("method~vanilla", "final", "", "30"),
                   ("method~vanilla", "matched-flops", "method~fomaml", "20")}
    matched = next(r for r in rows if r["reading"] == "matched-flops")
    assert matched["checkpoint_flops"] == "250.0" and matched["match_target"] == "300.0"


def test_delta_table_reports_final_and_matched_readings_side_by_side():
    import pandas as pd

    from metapretrain.figures.load import ExperimentData, RunData
    from metapretrain.figures.ner import delta_table, delta_tests
    from metapretrain.figures.pairing import design

    runs, rows = [], []
    for seed in (1, 2, 3):
        for method, learner in (("vanilla", "none"), ("fomaml", "fomaml")):
            rid = f"method~{method}/seed~{seed}"
            runs.append(RunData(rid, {"method": method, "seed": str(seed)},
                                {"meta": {"learner": learner}, "model": {"preset": "micro"}}, None))
    f1 = {("fomaml", "final"): [0.50, 0.52, 0.55], ("vanilla", "final"): [0.50, 0.50, 0.50],
          ("vanilla", "matched-flops"): [0.40, 0.45, 0.41]}
    for (method, reading), values in f1.items():
        for seed, value in zip((1, 2, 3), values, strict=True):
            rows.append({"pretrain_run": f"method~{method}/seed~{seed}", "train_set": "Danish-DDT", "regime": "head",
                         "eval_set": "Danish-DDT", "eval_split": "test", "eval_kind": "in_language",
                         "metric": "micro_f1", "value": value, "reading": reading,
                         "matched_to": f"method~fomaml/seed~{seed}" if reading != "final" else "",
                         "checkpoint_step": 20 if reading != "final" else 30, "match_target": 300.0,
                         "checkpoint_flops": 270.0 if reading != "final" else 400.0, "checkpoint_tokens_ntp": ""})
    data = ExperimentData(exp_dir=None, name="t", axes=["method", "seed"], runs=runs, ner=pd.DataFrame(rows))
    d = design(runs, ["method", "seed"], ["seed"])
    deltas = delta_table(data, d)
    micro = deltas[(deltas["scope"] == "in_language") & (deltas["entity"] == "micro")]
    assert list(micro["reading"]) == ["final"] * 3 + ["matched-flops"] * 3
    final, matched = micro[micro["reading"] == "final"], micro[micro["reading"] == "matched-flops"]
    assert list(final["delta_f1"].round(6)) == [0.0, 0.02, 0.05]
    assert list(matched["delta_f1"].round(6)) == [0.10, 0.07, 0.14]
    assert matched["match_ratio"].tolist() == pytest.approx([0.9] * 3)
    assert matched["vanilla_step"].tolist() == [20, 20, 20]
    tests = delta_tests(deltas, d)
    t = tests[(tests["reading"] == "matched-flops") & (tests["scope"] == "in_language")
              & (tests["entity"] == "micro")].iloc[0]
    diffs = [0.10, 0.07, 0.14]
    mean = sum(diffs) / 3
    sd = math.sqrt(sum((x - mean) ** 2 for x in diffs) / 2)
    from scipy import stats as st

    assert t["delta_f1"] == pytest.approx(mean)
    assert t["p"] == pytest.approx(st.ttest_1samp(diffs, 0.0).pvalue)
    assert t["delta_f1_hi"] - t["delta_f1_lo"] == pytest.approx(2 * st.t.ppf(0.975, 2) * sd / math.sqrt(3))


# --------------------------------------------------------------------------- checkpoint sweeps (finetune.checkpoints)
SWEEP = """
experiment: t
defaults:
  model: {preset: micro}
  train: {budget: {unit: steps, value: 400}, checkpoint: {every: 100, log_spaced: 3}}
  finetune: {train_sets: [Danish-DDT], regimes: [head], checkpoints: CHECKPOINTS}
grid:
  seed: [1]
"""


def _sweep_exp(tmp_path, checkpoints, extra=""):
    from metapretrain.grid import load_experiment

    p = tmp_path / "e.yaml"
    p.write_text(SWEEP.replace("CHECKPOINTS", checkpoints) + extra)
    return load_experiment(p)


@pytest.mark.parametrize("spec,steps", [
    ("final", []),
    ("all", [0, 1, 2, 4, 100, 200, 300]),        # every scheduled checkpoint but the final (step 400)
    ("{every: 200}", [0, 200]),
    ("[2, 300]", [2, 300]),
])
def test_sweep_steps_follow_finetune_checkpoints(tmp_path, spec, steps):
    from metapretrain.matching import sweep_steps

    e = _sweep_exp(tmp_path, spec)
    (run,) = e.runs
    assert sweep_steps(run.typed) == steps
    keys = [s.key for s in stages.of_run(e.name, run) if s.kind == "finetune"]
    assert keys == ["finetune/Danish-DDT~head"] + [f"finetune/Danish-DDT~head~step-{s}" for s in steps]
    for key in keys:
        assert stages.launched(key, "r").key == key


def test_sweep_of_unscheduled_steps_or_deleted_checkpoints_is_a_config_error(tmp_path):
    from metapretrain.config import ConfigError

    with pytest.raises(ConfigError, match=r"finetune.checkpoints.*no checkpoint is scheduled at step\(s\) \[150\]"):
        _sweep_exp(tmp_path, "[100, 150]")
    text = SWEEP.replace("checkpoint: {every: 100, log_spaced: 3}", "checkpoint: {every: 100, log_spaced: 3, keep: last}")
    (tmp_path / "k.yaml").write_text(text.replace("CHECKPOINTS", "all"))
    from metapretrain.grid import load_experiment

    with pytest.raises(ConfigError, match="keep is 'last'"):
        load_experiment(tmp_path / "k.yaml")


def test_checkpoint_reading_names_and_refusals():
    from metapretrain.finetune.stage import checkpoint_reading

    assert checkpoint_reading(None, None) is None
    assert checkpoint_reading(None, None, 100) == "step-100"
    with pytest.raises(ValueError, match="give one of them"):
        checkpoint_reading("runs/m", "flops", 100)
    with pytest.raises(ValueError, match="both --match-run and --match-unit"):
        checkpoint_reading("runs/m", None)


def test_sweep_table_aggregates_per_step_over_seeds():
    import pandas as pd

    from metapretrain.figures.checkpoint_sweep import sweep_table
    from metapretrain.figures.load import ExperimentData, RunData
    from metapretrain.figures.pairing import design

    runs, rows = [], []
    # F1 per (seed, step) for in-language (Danish) and cross-lingual (Other) eval sets.
    f1 = {1: {0: (0.1, 0.0), 100: (0.3, 0.1), 200: (0.5, 0.2)}, 2: {0: (0.1, 0.0), 100: (0.5, 0.1), 200: (0.6, 0.3)}}
    for seed, by_step in f1.items():
        rid = f"seed~{seed}"
        runs.append(RunData(rid, {"seed": str(seed)}, {"meta": {"learner": "none"}, "model": {"preset": "micro"}}, None))
        for step, (own, other) in by_step.items():
            reading = "final" if step == 200 else f"step-{step}"
            for ev, kind, v in (("Danish-DDT", "in_language", own), ("Other-X", "cross_lingual", other)):
                rows.append({"pretrain_run": rid, "train_set": "Danish-DDT", "regime": "head", "eval_set": ev,
                             "eval_split": "test", "eval_kind": kind, "metric": "micro_f1", "value": v,
                             "reading": reading, "matched_to": "", "checkpoint_step": step})
    data = ExperimentData(exp_dir=None, name="t", axes=["seed"], runs=runs, ner=pd.DataFrame(rows))
    t = sweep_table(data, design(runs, ["seed"], ["seed"]))
    il = t[t["group"] == "in_language"].set_index("step")
    assert list(il.index) == [0, 100, 200] and (il["n"] == 2).all()
    assert il.loc[100, "micro_f1"] == pytest.approx(0.4) and il.loc[200, "micro_f1"] == pytest.approx(0.55)
    from scipy import stats as st

    half = st.t.ppf(0.975, 1) * pd.Series([0.3, 0.5]).std() / math.sqrt(2)
    assert il.loc[100, "micro_f1_hi"] == pytest.approx(0.4 + half)
    assert t[t["group"] == "all"].set_index("step").loc[200, "micro_f1"] == pytest.approx((0.35 + 0.45) / 2)
