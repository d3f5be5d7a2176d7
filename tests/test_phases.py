"""Phases in both directions (issue 23, item 5): rise-then-fall and fall-then-rise curves, their summary table
per cell × layer × metric over seeds, and the claims rows for the opposite shape.

The summary fixture is the replicate fixture of tests/test_replicates.py (2 methods × 3 seeds, one model) with
peaks.csv rewritten in the new format. Per run, metric `per`:
* resid.act layer 0: vanilla seeds 1, 2 fall then rise (troughs 200, 300), seed 3 rises then falls (peak 500);
  fomaml every seed falls then rises (troughs 100, 150, 200);
* resid.act layer 1: vanilla monotone down; fomaml falls then rises (trough 300 in every seed);
* attn.q_proj.act layer 0 (not the summary's component): vanilla rises then falls, fomaml flat;
and metric `head_entropy` on `attn` layer 0: vanilla monotone up, fomaml flat.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from metapretrain.dynamics.phases import PEAK_COLUMNS, SHAPES, detect_peak, peaks_table

T1, T2 = 12.706205, 4.302653  # t(0.975) with 1 and 2 df
STEPS = np.array([0, 10, 20, 50, 100, 200, 300, 500, 1000, 2000, 4000])  # log-spaced early, as the runs are


# --------------------------------------------------------------------------- the detector


def test_a_curve_highest_at_init_that_falls_then_rises_is_fall_rise():
    # Effective rank / head entropy of a small run: highest at the random init, trough at step 200, rises again.
    curve = [0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6]
    p = detect_peak(STEPS, curve, smoothing=3, min_prominence=0.05)
    assert p.shape == "fall_rise" and p.is_fall_and_rise and not p.is_rise_and_fall
    assert p.trough_step == 200 and p.trough_value == pytest.approx((0.4 + 0.3 + 0.4) / 3)
    assert p.peak_step == 0  # the global maximum is the init: no rise-and-fall
    assert p.trough_fall == pytest.approx(0.85 - 1.1 / 3) and p.trough_rise == pytest.approx(0.575 - 1.1 / 3)


@pytest.mark.parametrize("shape, curve, peak, trough", [
    ("rise_fall", lambda s: 0.5 + 0.3 * np.exp(-((np.log1p(s) - np.log1p(500)) / 1.0) ** 2), 500, None),
    ("fall_rise", lambda s: 0.8 - 0.4 * np.exp(-((np.log1p(s) - np.log1p(100)) / 1.0) ** 2), None, 100),
    ("monotone_up", lambda s: 0.2 + np.log1p(s) / 10, 4000, 0),
    ("monotone_down", lambda s: 1.0 - np.log1p(s) / 10, 0, 4000),
    ("flat", lambda s: 0.7 + 0.001 * np.sin(s), None, None),
])
def test_each_shape_with_its_peak_and_trough_step(shape, curve, peak, trough):
    p = detect_peak(STEPS, curve(STEPS.astype(float)), smoothing=1, min_prominence=0.05)
    assert p.shape == shape
    assert p.is_rise_and_fall == (shape == "rise_fall") and p.is_fall_and_rise == (shape == "fall_rise")
    if peak is not None:
        assert p.peak_step == peak
    if trough is not None:
        assert p.trough_step == trough


def test_both_extrema_interior_takes_the_more_prominent_and_ties_go_to_the_first():
    steps = np.arange(7) * 100
    # Rise by 0.6 to step 200, fall to 0.1 at step 400, rise by 0.2: the peak's smaller arm (0.6 vs 0.2) wins.
    p = detect_peak(steps, [0.3, 0.5, 0.9, 0.5, 0.1, 0.2, 0.3], smoothing=1, min_prominence=0.05)
    assert p.is_rise_and_fall and p.is_fall_and_rise and p.shape == "rise_fall"
    assert (p.peak_step, p.trough_step) == (200, 400)
    # Fall by 0.6 to step 200, rise to 0.8 at step 400, fall to 0.5: the trough's smaller arm (0.4 vs 0.1) wins.
    p = detect_peak(steps, [0.7, 0.4, 0.1, 0.5, 0.8, 0.6, 0.5], smoothing=1, min_prominence=0.05)
    assert p.is_rise_and_fall and p.is_fall_and_rise
    assert p.shape == "fall_rise" and p.trough_step == 200 and p.peak_step == 400
    # Equal arms (0.25 each, exact in binary): the earlier extremum.
    p = detect_peak(steps, [0.5, 0.75, 0.5, 0.25, 0.5, 0.5, 0.5], smoothing=1, min_prominence=0.05)
    assert p.is_rise_and_fall and p.is_fall_and_rise and p.shape == "rise_fall"
    p = detect_peak(steps, [0.5, 0.25, 0.5, 0.75, 0.5, 0.5, 0.5], smoothing=1, min_prominence=0.05)
    assert p.is_rise_and_fall and p.is_fall_and_rise and p.shape == "fall_rise"


def test_small_arms_are_monotone_and_two_points_have_no_interior():
    steps = np.arange(5) * 100
    # A dip of 0.02 on a curve of scale 1 is below 5%: monotone up, not fall-rise.
    p = detect_peak(steps, [0.5, 0.48, 0.7, 0.9, 1.0], smoothing=1, min_prominence=0.05)
    assert p.shape == "monotone_up" and not p.is_fall_and_rise and p.trough_step == 100
    p = detect_peak([0, 100], [1.0, 0.5], smoothing=1, min_prominence=0.05)
    assert p.shape == "monotone_down" and not p.is_fall_and_rise and not p.is_rise_and_fall


def test_peaks_table_writes_every_column():
    rows = [{"run_id": "r", "step": str(s), "layer": "0", "component": "resid.act", "metric": "per",
             "value": str(v)} for s, v in zip(STEPS, [0.9, 0.8, 0.7, 0.5, 0.4, 0.3, 0.4, 0.45, 0.5, 0.55, 0.6],
                                              strict=True)]
    (out,) = peaks_table(rows, smoothing=3, min_prominence=0.05)
    assert tuple(out) == PEAK_COLUMNS
    assert out["shape"] == "fall_rise" and out["trough_step"] == 200 and out["is_fall_and_rise"]
    assert out["peak_step"] == 0 and not out["is_rise_and_fall"]


# --------------------------------------------------------------------------- the summary table over seeds

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

# (method, component, layer, metric) -> seed -> (shape, peak_step, trough_step)
CURVES = {
    ("vanilla", "resid.act", 0, "per"): {1: ("fall_rise", 0, 200), 2: ("fall_rise", 0, 300), 3: ("rise_fall", 500, 20)},
    ("fomaml", "resid.act", 0, "per"): {1: ("fall_rise", 0, 100), 2: ("fall_rise", 0, 150), 3: ("fall_rise", 0, 200)},
    ("vanilla", "resid.act", 1, "per"): {s: ("monotone_down", 0, 4000) for s in (1, 2, 3)},
    ("fomaml", "resid.act", 1, "per"): {s: ("fall_rise", 0, 300) for s in (1, 2, 3)},
    ("vanilla", "attn.q_proj.act", 0, "per"): {s: ("rise_fall", 50, 0) for s in (1, 2, 3)},
    ("fomaml", "attn.q_proj.act", 0, "per"): {s: ("flat", 0, 0) for s in (1, 2, 3)},
    ("vanilla", "attn", 0, "head_entropy"): {s: ("monotone_up", 4000, 0) for s in (1, 2, 3)},
    ("fomaml", "attn", 0, "head_entropy"): {s: ("flat", 0, 0) for s in (1, 2, 3)},
}


def _rewrite_peaks(exp):
    for method in ("vanilla", "fomaml"):
        for seed in (1, 2, 3):
            run_id = f"method~{method}/seed~{seed}"
            rows = []
            for (m, comp, layer, metric), by_seed in CURVES.items():
                if m != method:
                    continue
                shape, peak, trough = by_seed[seed]
                rows.append({"run_id": run_id, "layer": layer, "component": comp, "metric": metric,
                             "peak_step": peak, "peak_value": 0.9, "rise": 0.1, "fall": 0.1,
                             "is_rise_and_fall": shape == "rise_fall", "shape": shape, "trough_step": trough,
                             "trough_value": 0.3, "trough_fall": 0.1, "trough_rise": 0.1,
                             "is_fall_and_rise": shape == "fall_rise"})
            pd.DataFrame(rows, columns=list(PEAK_COLUMNS)).to_csv(
                exp / "runs" / run_id / "dynamics" / "peaks.csv", index=False)


@pytest.fixture(scope="module")
def phased(tmp_path_factory):
    from test_replicates import build, make_seeds_experiment

    exp = make_seeds_experiment(tmp_path_factory.mktemp("phases"))
    _rewrite_peaks(exp)
    return exp, build(exp)


def _summary(exp):
    t = pd.read_csv(exp / "figures" / "tables" / "dynamics_peaks.csv", keep_default_na=False, na_values=[""])
    return t


def test_one_row_per_cell_layer_and_metric_for_the_summary_component(phased):
    exp, _ = phased
    t = _summary(exp)
    keys = list(zip(t["method"], t["metric"], t["layer"], strict=True))
    assert sorted(keys) == sorted([(m, "per", 0) for m in ("vanilla", "fomaml")]
                                  + [(m, "per", 1) for m in ("vanilla", "fomaml")]
                                  + [(m, "head_entropy", 0) for m in ("vanilla", "fomaml")])
    assert len(keys) == len(set(keys)) == 6
    comp = dict(zip(t["metric"], t["component"], strict=False))
    assert comp == {"per": "resid.act", "head_entropy": "attn"}  # resid.act wins over attn.q_proj.act
    assert set(t["n_runs"]) == {3}
    fractions = t[[c for c in t.columns if c.endswith("_fraction")]]
    assert list(fractions.columns) == ["rise_and_fall_fraction", "fall_and_rise_fraction", "monotone_up_fraction",
                                       "monotone_down_fraction", "flat_fraction"]
    assert np.allclose(fractions.sum(axis=1), 1.0)


def test_fractions_and_phase_boundary_intervals_by_hand(phased):
    exp, _ = phased
    t = _summary(exp).set_index(["method", "metric", "layer"])
    v = t.loc[("vanilla", "per", 0)]
    assert v["fall_and_rise_fraction"] == pytest.approx(2 / 3) and v["rise_and_fall_fraction"] == pytest.approx(1 / 3)
    assert v["monotone_up_fraction"] == 0 and v["monotone_down_fraction"] == 0 and v["flat_fraction"] == 0
    # Troughs of the two fall-rise seeds (200, 300): mean 250, sd 50·√2, t with 1 df.
    assert v["n_troughs"] == 2 and v["trough_step"] == pytest.approx(250)
    assert v["trough_step_lo"] == pytest.approx(250 - T1 * 50 * math.sqrt(2) / math.sqrt(2), abs=1e-3)
    assert v["trough_step_hi"] == pytest.approx(250 + T1 * 50, abs=1e-3)
    # Seed 3's trough (20) is not a phase boundary: its curve rises then falls, peak 500 (n = 1, no interval).
    assert v["n_peaks"] == 1 and v["peak_step"] == 500 and math.isnan(v["peak_step_lo"])
    f = t.loc[("fomaml", "per", 0)]
    assert f["fall_and_rise_fraction"] == 1 and f["n_troughs"] == 3 and f["trough_step"] == pytest.approx(150)
    assert f["trough_step_hi"] == pytest.approx(150 + T2 * 50 / math.sqrt(3), abs=1e-3)
    assert f["n_peaks"] == 0 and math.isnan(f["peak_step"])
    same = t.loc[("fomaml", "per", 1)]  # the same trough in every seed: a zero-width interval
    assert same["trough_step"] == 300 and same["trough_step_lo"] == pytest.approx(300)
    assert t.loc[("vanilla", "per", 1), "monotone_down_fraction"] == 1
    assert t.loc[("vanilla", "head_entropy", 0), "monotone_up_fraction"] == 1
    assert t.loc[("fomaml", "head_entropy", 0), "flat_fraction"] == 1


def test_the_markdown_table_is_readable_and_the_curves_stay_as_csv(phased):
    exp, entries = phased
    tables = exp / "figures" / "tables"
    md = (tables / "dynamics_peaks.md").read_text()
    assert "67% (2/3)" in md and "250 [" in md and "500 (n = 1)" in md and "fall→rise" in md
    assert len(md.splitlines()) == 2 + 2 + 6  # caption, blank, header, rule, one line per row
    curves = pd.read_csv(tables / "dynamics_peaks_curves.csv")
    assert len(curves) == sum(len(v) for v in CURVES.values())  # every curve of every run
    assert {"shape", "trough_step", "is_fall_and_rise", "panel", "method", "source"} <= set(curves.columns)
    assert not (tables / "dynamics_peaks_curves.md").exists() and not (tables / "dynamics_peaks_curves.html").exists()
    assert "tables/dynamics_peaks_curves.csv" in {e["file"] for e in entries}
    assert not (tables / "dynamics_peaks_summary.csv").exists()


def test_a_handful_of_dynamics_figures_on_a_log_step_axis(phased):
    exp, entries = phased
    dyn = {e["file"] for e in entries if e["file"].startswith("dynamics/")}
    # This fixture has only PER of resid.act: per-layer curves, heatmap and the overview.
    assert dyn == {"dynamics/dynamics_layers__per__activations__micro.png",
                   "dynamics/dynamics_heatmap__per__activations__micro.png",
                   "dynamics/dynamics_overview__micro.png"}
    captions = [e["caption"] for e in entries if e["file"].startswith("dynamics/")]
    assert all("log scale" in c for c in captions)


def test_figure_count_for_the_full_dynamics_fixture(tmp_path):
    from test_figures import build, make_experiment

    exp = make_experiment(tmp_path, points=(("micro", None),), ner=False)
    build(exp)
    names = sorted(p.name for p in (exp / "figures" / "dynamics").iterdir())
    assert names == sorted(f"{n}.png" for n in (
        "dynamics_layers__per__activations__micro", "dynamics_heatmap__per__activations__micro",
        "dynamics_layers__head_entropy__micro", "dynamics_heatmap__head_entropy__micro",
        "dynamics_overview__micro", "episodic_accuracy_vs_per"))


# --------------------------------------------------------------------------- the claims rows


def test_claims_add_the_opposite_shape_beside_the_rise_and_fall(phased):
    from metapretrain.figures import claims
    from test_claims import _data_design

    exp, _ = phased
    data, d = _data_design(exp)
    rows = claims.dynamics_rows(data, d, 0.05)
    per = [r for r in rows if r["unit"].startswith("effective rank (per)")]
    rf = [r for r in per if r["unit"] == "effective rank (per)"]
    fr = [r for r in per if r["unit"] == f"effective rank (per) · {claims.OPPOSITE}"]
    assert "opposite of the paper's shape" in fr[0]["unit"]
    (rf_test,) = [r for r in rf if r["scope"] != "per run"]
    (fr_test,) = [r for r in fr if r["scope"] != "per run"]
    # Per run, the three per curves (resid.act 0, 1; attn.q_proj.act 0). Fall-rise fractions: vanilla 1/3, 1/3, 0;
    # fomaml 2/3 in every seed. Rise-fall: vanilla 1/3, 1/3, 2/3; fomaml 0.
    assert fr_test["estimate"] == pytest.approx(4 / 9) and rf_test["estimate"] == pytest.approx(-4 / 9)
    assert fr_test["n"] == 3 and math.isfinite(fr_test["p"]) and "is_fall_and_rise" in fr_test["statistic"]
    assert fr_test["verdict"] == "descriptive" and fr_test["note"].startswith("opposite of the paper's shape")
    assert rf_test["verdict"] in ("supported", "contradicted", "inconclusive")
    fr_desc = {r["method"]: r for r in fr if r["scope"] == "per run"}
    assert fr_desc["fomaml"]["estimate"] == 1 and fr_desc["vanilla"]["estimate"] == pytest.approx(2 / 3)
    assert "falls then rises" in fr_desc["fomaml"]["statistic"]
    doc = json.loads((exp / "figures" / "claims.json").read_text())
    assert any(claims.OPPOSITE in r["unit"] for r in doc["rows"])


def test_shapes_constant_names_every_shape():
    assert SHAPES == ("rise_fall", "fall_rise", "monotone_up", "monotone_down", "flat")
