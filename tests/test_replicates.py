"""Replicate axes: seeds aggregate (mean, 95% CI, n) instead of faceting, meta seed s pairs with vanilla seed s.

The fixture is 2 methods × 3 seeds of one model with hand-checkable values:
* validation loss at steps 0/100/200: vanilla seed s [9, 6, 4.0 + 0.1 (s − 1)], fomaml [9, 5, 3];
  fomaml crosses vanilla's final loss T at step 100 + 50 (5 − T): 150, 145, 140 -> speedups 200/150, 200/145, 200/140;
* NER micro-F1 (one train/eval set): vanilla 0.50, 0.52, 0.55; fomaml 0.51, 0.54, 0.58 (ΔF1 0.01, 0.02, 0.03);
* layer-0 PER peak step: vanilla 100, 120, 140, rise-and-fall in seeds 1 and 2 only.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

T2 = 4.302653  # t(0.975, 2 df)
SEEDS = (1, 2, 3)
VAN_F1 = {1: 0.50, 2: 0.52, 3: 0.55}
META_F1 = {1: 0.51, 2: 0.54, 3: 0.58}
PEAK = {1: (100, True), 2: (120, True), 3: (140, False)}


def _val(method: str, seed: int) -> list[float]:
    return [9.0, 6.0, 4.0 + 0.1 * (seed - 1)] if method == "vanilla" else [9.0, 5.0, 3.0]


def make_seeds_experiment(root: Path, seeds=SEEDS, methods_seeds=None, replicates=None) -> Path:
    """results/<exp> of method × seed runs (one model), with metrics, NER and peaks; `replicates` into grid.yaml."""
    exp = root / "results" / "reps"
    methods_seeds = methods_seeds or {"vanilla": seeds, "fomaml": seeds}
    runs, ner = [], []
    for method, mseeds in methods_seeds.items():
        for seed in mseeds:
            ax = {"method": method, "seed": str(seed)}
            run_id = f"method~{method}/seed~{seed}"
            runs.append({"run_id": run_id, "axes": ax, "hash": "0" * 10})
            rdir = exp / "runs" / run_id
            (rdir / "pretrain").mkdir(parents=True)
            cfg = {"seed": seed, "meta": {"learner": "none" if method == "vanilla" else "fomaml"},
                   "model": {"preset": "micro"}}
            (rdir / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
            lines = []
            for i, step in enumerate((0, 100, 200)):
                co = {"step": step, "tokens": step * 1000 + seed, "flops": step * 1e9, "wall": float(step)}
                lines.append(json.dumps({"kind": "train", **co, "loss": 9.0 - 0.02 * step, "n_next_token": 1,
                                         "n_meta": int(method != "vanilla")}))
                lines.append(json.dumps({"kind": "eval", **co, "val_loss": _val(method, seed)[i]}))
            (rdir / "pretrain" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
            (rdir / "pretrain" / "done.json").write_text("{}")
            (rdir / "dynamics").mkdir()
            dyn = [[run_id, step, 0, "resid.act", "per", 0.5] for step in (0, 100, 200)]
            pd.DataFrame(dyn, columns=["run_id", "step", "layer", "component", "metric", "value"]).to_csv(
                rdir / "dynamics" / "dynamics.csv", index=False)
            step, rf = PEAK[seed] if method == "vanilla" else (80, True)
            # A second curve per run (layer 1, monotone): a run counts once in its cell however many curves it has.
            pd.DataFrame([[run_id, 0, "resid.act", "per", step, 0.8, rf], [run_id, 1, "resid.act", "per", 200, 0.9, False]],
                         columns=["run_id", "layer", "component", "metric", "peak_step", "peak_value",
                                  "is_rise_and_fall"]).to_csv(rdir / "dynamics" / "peaks.csv", index=False)
            f1 = (VAN_F1 if method == "vanilla" else META_F1)[seed]
            ner.append({"pretrain_run": run_id, "train_set": "English-EWT", "regime": "head",
                        "eval_set": "English-EWT", "eval_split": "test", "eval_kind": "in_language",
                        "metric": "micro_f1", "value": f1})
    doc = {"experiment": "reps", "axes": ["method", "seed"], "runs": runs}
    if replicates is not None:
        doc["replicates"] = replicates
    (exp / "grid.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    (exp / "ner").mkdir()
    pd.DataFrame(ner).to_csv(exp / "ner" / "results.csv", index=False)
    return exp


def build(exp: Path):
    from metapretrain.figures.stage import build_figures

    return build_figures(exp, formats=("png",), strict=True)


def table(exp: Path, name: str):
    return pd.read_csv(exp / "figures" / "tables" / f"{name}.csv")


@pytest.fixture(scope="module")
def three(tmp_path_factory):
    exp = make_seeds_experiment(tmp_path_factory.mktemp("three"))
    return exp, build(exp)


def test_seed_is_a_replicate_axis_by_default_and_pairs_by_seed(three):
    exp, _ = three
    grid = table(exp, "grid")
    assert set(grid["panel"]) == {"micro"}  # one panel: seeds are aggregated, not faceted
    for s in SEEDS:
        assert grid.set_index("run_id").loc[f"method~fomaml/seed~{s}", "baseline_run"] == f"method~vanilla/seed~{s}"


def test_final_loss_summary_mean_ci_n(three):
    exp, _ = three
    t = table(exp, "pretrain_final_summary").set_index("method")
    v = t.loc["vanilla"]
    assert v["n"] == 3 and v["final_val_loss"] == pytest.approx(4.1)
    assert v["final_val_loss_lo"] == pytest.approx(4.1 - T2 * 0.1 / math.sqrt(3), abs=1e-6)
    assert v["final_val_loss_hi"] == pytest.approx(4.348414, abs=1e-6)
    assert t.loc["fomaml", "final_val_loss"] == pytest.approx(3.0)
    md = (exp / "figures" / "tables" / "pretrain_final_summary.md").read_text()
    assert "n = 3 per cell" in md and "Student t" in md and "4.1000 [3.8516, 4.3484]" in md


def test_speedup_per_pair_and_aggregated(three):
    exp, _ = three
    per = table(exp, "speedup").set_index("run_id")
    expect = {1: 200 / 150, 2: 200 / 145, 3: 200 / 140}
    for s, v in expect.items():
        assert per.loc[f"method~fomaml/seed~{s}", "speedup_step"] == pytest.approx(v)
    summ = table(exp, "speedup_summary").set_index("method").loc["fomaml"]
    assert summ["n_pairs"] == 3 and summ["n_reached"] == 3 and bool(summ["paired"])
    assert summ["speedup_step"] == pytest.approx(sum(expect.values()) / 3)  # 1.380405
    assert min(expect.values()) <= summ["speedup_step_lo"] < summ["speedup_step"] < summ["speedup_step_hi"]
    assert "percentile bootstrap over pairs" in summ["interval"]
    md = (exp / "figures" / "tables" / "speedup_summary.md").read_text()
    assert "3 of 3" in md and "paired by replicate (seed)" in md


def test_ner_cells_and_paired_delta_test(three):
    exp, _ = three
    cells = table(exp, "ner_summary_cells").set_index("method")
    v = cells.loc["vanilla"]
    sd = pd.Series(list(VAN_F1.values())).std()
    assert v["n"] == 3 and v["head in-language"] == pytest.approx(sum(VAN_F1.values()) / 3)
    assert v["head in-language hi"] == pytest.approx(v["head in-language"] + T2 * sd / math.sqrt(3), abs=1e-6)
    t = table(exp, "ner_delta_f1_tests")
    row = t[(t["regime"] == "head") & (t["scope"] == "in_language") & (t["entity"] == "micro")].iloc[0]
    assert row["n"] == 3 and row["delta_f1"] == pytest.approx(0.02)
    assert row["p"] == pytest.approx(0.074180, abs=1e-6)  # hand computation: tests/test_stats.py
    assert row["delta_f1_lo"] == pytest.approx(0.02 - T2 * 0.01 / math.sqrt(3), abs=1e-6)
    assert row["test"] == "paired t-test over seeds, two-sided"
    caption = (exp / "figures" / "tables" / "ner_delta_f1_tests.md").read_text().splitlines()[0]
    assert "paired t-test" in caption and "n pairs = 3" in caption


def test_dynamics_peak_step_and_rise_and_fall_fraction(three):
    exp, _ = three
    summ = table(exp, "dynamics_peaks")  # the per-cell summary (was dynamics_peaks_summary; issue 23)
    t = summ[summ["layer"] == 0].set_index("method").loc["vanilla"]
    # The peak step over the runs with a rise-and-fall (seeds 1, 2: 100 and 120), t with 1 df.
    assert t["n_runs"] == 3 and t["n_peaks"] == 2 and t["peak_step"] == pytest.approx(110)
    assert t["peak_step_hi"] == pytest.approx(110 + 12.706205 * 20 / math.sqrt(2) / math.sqrt(2), abs=1e-3)
    assert t["rise_and_fall_fraction"] == pytest.approx(2 / 3)
    flat = summ[summ["layer"] == 1].set_index("method").loc["vanilla"]
    assert flat["n_runs"] == 3 and flat["n_peaks"] == 0 and flat["rise_and_fall_fraction"] == 0


def test_one_seed_says_n_1_without_interval(tmp_path):
    exp = make_seeds_experiment(tmp_path, seeds=(1,))
    build(exp)
    t = table(exp, "pretrain_final_summary").set_index("method")
    assert t.loc["vanilla", "n"] == 1 and math.isnan(t.loc["vanilla", "final_val_loss_lo"])
    assert "4.0000 (n = 1)" in (exp / "figures" / "tables" / "pretrain_final_summary.md").read_text()
    d = table(exp, "ner_delta_f1_tests").iloc[0]
    assert d["n"] == 1 and math.isnan(d["p"]) and d["test"] == "none (n = 1)"
    assert "(n = 1)" in (exp / "figures" / "tables" / "speedup_summary.md").read_text()
    loss_caption = next(e["caption"] for e in json.loads((exp / "figures" / "index.json").read_text())
                        if e["file"] == "loss/loss_vs_step.png")
    assert "n = 1 run per curve, no interval" in loss_caption


def test_no_same_seed_vanilla_is_reported_unpaired(tmp_path):
    exp = make_seeds_experiment(tmp_path, methods_seeds={"vanilla": (1, 2), "fomaml": (3,)})
    build(exp)
    grid = table(exp, "grid").set_index("run_id")
    assert grid.loc["method~fomaml/seed~3", "baseline_run"] == "method~vanilla/seed~1"  # smallest id
    summ = table(exp, "speedup_summary").iloc[0]
    assert not bool(summ["paired"])
    assert "compared unpaired" in (exp / "figures" / "tables" / "speedup_summary.md").read_text()


def test_empty_replicates_facet_by_seed(tmp_path):
    exp = make_seeds_experiment(tmp_path, seeds=(1, 2), replicates=[])
    build(exp)
    assert set(table(exp, "grid")["panel"]) == {"seed=1", "seed=2"}
    assert set(table(exp, "pretrain_final_summary")["n"]) == {1}


def test_loss_band_interpolates_onto_common_x():
    import numpy as np

    from metapretrain.figures.loss import common_x, replicate_band

    a = (np.array([0.0, 10.0, 20.0]), np.array([3.0, 2.0, 1.0]))
    b = (np.array([5.0, 15.0, 25.0]), np.array([3.0, 2.0, 1.0]))
    assert list(common_x([a[0], a[0]])) == [0.0, 10.0, 20.0]
    x, mean, lo, hi = replicate_band([a, b])
    assert list(x) == [5.0, 10.0, 15.0, 20.0]  # the overlap, every replicate's x in it
    # a at x=5 is 2.5, b is 3.0: mean 2.75, and a two-run t band (t(0.975, 1) = 12.706205).
    assert mean[0] == pytest.approx(2.75)
    assert hi[0] - mean[0] == pytest.approx(12.706205 * (0.25 * math.sqrt(2)) / math.sqrt(2), abs=1e-6)


def test_grid_file_carries_the_replicate_axes(tmp_path):
    from metapretrain.grid import load_experiment
    from metapretrain.grid_cli import write_grid_file

    exp = load_experiment(data={"experiment": "x", "grid": {"seed": [1, 2]}})
    assert exp.replicates == ["seed"]
    write_grid_file(exp, "x.yaml", tmp_path / "grid.yaml")
    assert yaml.safe_load((tmp_path / "grid.yaml").read_text())["replicates"] == ["seed"]
    assert load_experiment(data={"experiment": "x", "replicates": [], "grid": {"seed": [1, 2]}}).replicates == []


def test_vanilla_variants_get_distinct_colours_and_panels_are_named():
    from metapretrain.figures.pairing import Design
    from metapretrain.figures.style import VANILLA_COLOR, method_colors

    c = method_colors(["vanilla", "vanilla_flops", "fomaml"])
    assert c["vanilla"] == VANILLA_COLOR and len(set(c.values())) == 3
    assert Design([], [], ["model.preset"]).panel_title() == "model"
    assert Design([], [], ["model.preset", "train.lr"]).panel_title() == "model.preset, train.lr"


def test_dynamics_columns_are_cells_with_mean_curves(three):
    exp, _ = three
    caption = next(e["caption"] for e in json.loads((exp / "figures" / "index.json").read_text())
                   if e["file"].startswith("dynamics/dynamics_layers__per"))
    assert "mean curve" in caption
