"""Figures and tables from run files: speedup to equal loss, NER tables, dynamics plots, index.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("seaborn")

STEPS = [0, 50, 100, 150, 200]
# Validation curves (eval at STEPS). The micro vanilla run ends at 4.2; the micro fomaml run first
# drops to <= 4.2 between step 100 (4.6) and 150 (4.1): f = (4.6 - 4.2) / (4.6 - 4.1) = 0.8 -> step 140.
VAL = {
    ("vanilla", "micro"): [9.0, 6.0, 5.0, 4.5, 4.2],
    ("fomaml", "micro"): [9.0, 5.5, 4.6, 4.1, 3.9],
    ("vanilla", "mini"): [9.0, 6.0, 5.0, 4.5, 4.3],
    ("fomaml", "mini"): [9.0, 6.5, 5.5, 5.0, 4.8],  # never reaches 4.3
}
TOKENS_PER_STEP = 1000
FLOPS_PER_STEP = {"vanilla": 2e9, "fomaml": 3e9}  # meta steps cost more compute
WALL_PER_STEP = {"vanilla": 1.0, "fomaml": 1.5}
TRAIN_SETS = ["Danish-DDT", "English-EWT"]
EVAL_SETS = ["Danish-DDT", "English-EWT", "Tagalog-TRG"]  # Tagalog-TRG: test split only


def ner_value(run_id: str, regime: str, train: str, ev: str, metric: str) -> float:
    """Distinct, deterministic F1 values for the fixture (hand-checkable)."""
    base = 0.30 + 0.10 * TRAIN_SETS.index(train) + 0.05 * EVAL_SETS.index(ev) + (0.2 if regime == "full" else 0.0)
    bonus = 0.04 if "fomaml" in run_id else 0.0
    return round(base + bonus + {"micro_f1": 0.0, "PER_f1": 0.01, "LOC_f1": -0.02}[metric], 6)


def eval_kind(train: str, ev: str) -> str:
    return "in_language" if train == ev else ("test_only" if ev == "Tagalog-TRG" else "cross_lingual")


# The shared fixture's grid: method × model.preset × seed, with (mini, seed 2) excluded: two sizes, an extra
# axis, three panels.
POINTS = [("micro", 1), ("micro", 2), ("mini", 1)]


def rid(method: str, preset: str, seed: int | None = 1) -> str:
    return f"method~{method}/model.preset~{preset}" + (f"/seed~{seed}" if seed is not None else "")


def make_experiment(root: Path, points=(("micro", None), ("mini", None)), ner=True, dynamics=True, peaks=True,
                    unfinished: tuple[str, ...] = (), no_dynamics: tuple[tuple, ...] = ()) -> Path:
    """A synthetic results/<exp> with grid.yaml and finished runs: method × points ((preset, seed or None))."""
    exp = root / "results" / "synth"
    with_seed = any(seed is not None for _, seed in points)
    axes = ["method", "model.preset"] + (["seed"] if with_seed else [])
    runs, ner_rows = [], []
    for method in ("vanilla", "fomaml"):
        for preset, seed in points:
            ax = {"method": method, "model.preset": preset} | ({"seed": str(seed)} if with_seed else {})
            run_id = "/".join(f"{k}~{ax[k]}" for k in sorted(ax))
            runs.append({"run_id": run_id, "axes": ax, "hash": "0" * 10})
            rdir = exp / "runs" / run_id
            (rdir / "pretrain").mkdir(parents=True)
            cfg = {"seed": seed or 42, "meta": {"learner": "none" if method == "vanilla" else "fomaml", "inner": {"steps": 5}},
                   "model": {"preset": preset}, "train": {"lr": 3e-3}, "finetune": {"enabled": ner},
                   "dynamics": {"enabled": dynamics}}
            (rdir / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
            (rdir / "run.json").write_text(json.dumps({"run_id": run_id, "axes": ax, "hash": "0" * 10}))
            write_metrics(rdir, method, preset)
            if run_id not in unfinished:
                (rdir / "pretrain" / "done.json").write_text("{}")
            if dynamics and (preset, seed) not in no_dynamics:
                write_dynamics(rdir, run_id, method, peaks)
            for regime in ("head", "full"):
                for tr in TRAIN_SETS:
                    for ev in EVAL_SETS:
                        for metric in ("micro_f1", "PER_f1", "LOC_f1"):
                            ner_rows.append({"pretrain_run": run_id, "method_axes": json.dumps({"method": method}),
                                             "train_set": tr, "regime": regime, "eval_set": ev,
                                             "eval_split": "test", "eval_kind": eval_kind(tr, ev),
                                             "metric": metric, "value": ner_value(run_id, regime, tr, ev, metric)})
                        ner_rows.append({"pretrain_run": run_id, "method_axes": "{}", "train_set": tr,
                                         "regime": regime, "eval_set": tr, "eval_split": "dev",
                                         "eval_kind": "in_language", "metric": "micro_f1", "value": 0.99})
    # `replicates: []`: this fixture's seed axis is a facet (one panel per seed); tests/test_replicates.py
    # covers the default, where seeds are aggregated.
    (exp / "grid.yaml").write_text(yaml.safe_dump({"experiment": "synth", "axes": axes, "replicates": [], "runs": runs},
                                                  sort_keys=False))
    if ner:
        (exp / "ner").mkdir(parents=True)
        pd.DataFrame(ner_rows).to_csv(exp / "ner" / "results.csv", index=False)
    return exp


def write_metrics(rdir: Path, method: str, preset: str) -> None:
    lines = []
    for step in range(0, 201, 10):
        rec = {"kind": "train", "step": step, "tokens": step * TOKENS_PER_STEP, "flops": step * FLOPS_PER_STEP[method],
               "wall": step * WALL_PER_STEP[method], "lr": 1e-3, "loss": 9.0 - 0.02 * step, "n_next_token": 1,
               "n_meta": 1 if method == "fomaml" else 0}
        if method == "fomaml":
            rec["meta/query_acc"] = 0.1 + 0.003 * step
        lines.append(json.dumps(rec))
        if step in STEPS:
            loss = VAL[(method, preset)][STEPS.index(step)]
            lines.append(json.dumps({"kind": "eval", "step": step, "tokens": step * TOKENS_PER_STEP,
                                     "flops": step * FLOPS_PER_STEP[method], "wall": step * WALL_PER_STEP[method],
                                     "val_loss": loss, "val_ppl": math.exp(loss)}))
    lines.append('{"kind": "train", "step": 2')  # a truncated last line (killed writer): skipped with a warning
    (rdir / "pretrain" / "metrics.jsonl").write_text("\n".join(lines) + "\n")


def write_dynamics(rdir: Path, run_id: str, method: str, peaks: bool) -> None:
    rows, peak_rows = [], []
    for layer in range(3):
        for comp in ("attn.v_proj.act", "resid.act"):  # names as the dynamics stage writes them
            top = 50 + 50 * layer  # deeper layers peak later
            for step in STEPS:
                value = 0.5 + 0.3 * math.exp(-((step - top) / 60) ** 2) + 0.02 * layer
                rows.append([run_id, step, step * 1000, step * 2e9, layer, comp, "", "per", value])
            peak_rows.append([run_id, layer, comp, "per", top, 0.8 + 0.02 * layer, 0.3, 0.2, True])
        for head in range(2):
            for step in STEPS:
                rows.append([run_id, step, step * 1000, step * 2e9, layer, "attn", head, "head_entropy",
                             2.0 + 0.5 * math.sin(step / 80 + layer) + 0.1 * head])
    for step in STEPS:
        rows.append([run_id, step, step * 1000, step * 2e9, "", "", "", "some_new_metric", step / 200])
        if method == "fomaml":
            rows.append([run_id, step, step * 1000, step * 2e9, "", "episode", "", "query_acc", 0.2 + step / 400])
    cols = ["run_id", "step", "tokens", "flops", "layer", "component", "head", "metric", "value"]
    (rdir / "dynamics").mkdir()
    pd.DataFrame(rows, columns=cols).to_csv(rdir / "dynamics" / "dynamics.csv", index=False)
    if peaks:
        pd.DataFrame(peak_rows, columns=["run_id", "layer", "component", "metric", "peak_step", "peak_value", "rise",
                                         "fall", "is_rise_and_fall"]).to_csv(rdir / "dynamics" / "peaks.csv", index=False)
    (rdir / "dynamics" / "done.json").write_text("{}")


def build(exp: Path, **kw):
    from metapretrain.figures.stage import build_figures

    return build_figures(exp, formats=kw.pop("formats", ("png",)), strict=kw.pop("strict", True), **kw)


def read_csv(exp: Path, name: str):
    return pd.read_csv(exp / "figures" / "tables" / f"{name}.csv")


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """Every input present (dynamics for one of the three panels, to keep it fast), built once: (exp dir, index)."""
    exp = make_experiment(tmp_path_factory.mktemp("full"), points=POINTS, no_dynamics=(("micro", 2), ("mini", 1)))
    return exp, build(exp)


# --------------------------------------------------------------------------- speedup rule


def test_first_crossing_interpolates_linearly_between_evals():
    from metapretrain.figures.speedup import first_crossing

    ev = pd.DataFrame({"step": [0, 100, 200], "tokens": [0, 1e5, 2e5], "flops": [0, 1e9, 2e9], "wall": [0, 10, 20],
                       "val_loss": [5.0, 4.0, 3.0]})
    c = first_crossing(ev, 3.5)
    assert c.reached and not c.at_first_eval
    assert c.coords == pytest.approx({"step": 150, "tokens": 1.5e5, "flops": 1.5e9, "wall": 15})
    assert first_crossing(ev, 4.0).coords["step"] == pytest.approx(100)  # hits an eval exactly
    assert not first_crossing(ev, 2.9).reached and math.isnan(first_crossing(ev, 2.9).coords["step"])
    early = first_crossing(ev, 6.0)  # already below at the first eval: its coordinates, flagged
    assert early.reached and early.at_first_eval and early.coords["step"] == 0
    # NaN evals are ignored; the first crossing (not the last) counts on a non-monotone curve.
    bumpy = pd.DataFrame({"step": [0, 10, 20, 30], "tokens": [0, 1, 2, 3], "flops": [0, 1, 2, 3], "wall": [0, 1, 2, 3],
                          "val_loss": [5.0, float("nan"), 3.0, 4.0]})
    assert first_crossing(bumpy, 4.0).coords["step"] == pytest.approx(10)


def test_speedup_table_matches_hand_computed_values(full):
    exp, _ = full
    t = read_csv(exp, "speedup").set_index("run_id")
    fm = t.loc[rid("fomaml", "micro", 1)]
    assert fm["baseline_run"] == rid("vanilla", "micro", 1)
    assert fm["target_val_loss"] == pytest.approx(4.2)
    assert fm["step_to_target"] == pytest.approx(140.0)
    assert fm["tokens_to_target"] == pytest.approx(140_000.0)
    assert fm["speedup_step"] == pytest.approx(200 / 140)
    assert fm["speedup_tokens"] == pytest.approx(200 / 140)
    assert fm["speedup_flops"] == pytest.approx((200 * 2e9) / (140 * 3e9))
    assert fm["speedup_wall"] == pytest.approx((200 * 1.0) / (140 * 1.5))
    assert t.loc[rid("vanilla", "micro", 1), "speedup_step"] == pytest.approx(1.0)
    never = t.loc[rid("fomaml", "mini", 1)]
    assert not never["reached"] and math.isnan(never["speedup_step"]) and math.isnan(never["step_to_target"])
    md = (exp / "figures" / "tables" / "speedup.md").read_text()
    assert "not reached" in md and "1.43×" in md
    tex = (exp / "figures" / "tables" / "speedup.tex").read_text()
    assert "\\toprule" in tex and "\\bottomrule" in tex
    assert f"% runs/{rid('fomaml', 'micro', 1)}/pretrain/metrics.jsonl" in tex  # traceable to the run file


def test_extra_axis_facets_panels_and_pairs_runs_by_it(full):
    exp, _ = full
    t = read_csv(exp, "speedup")
    meta = t[t["run_id"] != t["baseline_run"]]
    assert len(meta) == 3
    for r, base in zip(meta["run_id"], meta["baseline_run"], strict=True):
        assert r.replace("fomaml", "vanilla") == base  # same size, same seed
    grid = read_csv(exp, "grid")
    assert set(grid["panel"]) == {"micro, seed=1", "micro, seed=2", "mini, seed=1"}
    fig = exp / "figures"
    for panel in ("micro_seed-1", "micro_seed-2", "mini_seed-1"):
        assert (fig / "ner" / f"ner_f1_heatmap__{panel}__full.png").exists()
        has = (fig / "dynamics" / f"dynamics_layers__per__activations__{panel}.png").exists()
        assert has == (panel == "micro_seed-1")  # the other panels' runs have no dynamics


# --------------------------------------------------------------------------- NER tables


def test_ner_summary_and_delta_reproduce_hand_computed_means(full):
    exp, _ = full
    s = read_csv(exp, "ner_summary").set_index("run_id")
    r = rid("fomaml", "micro", 2)

    def v(regime, tr, ev):
        return ner_value(r, regime, tr, ev, "micro_f1")

    for regime in ("head", "full"):
        in_lang = (v(regime, "Danish-DDT", "Danish-DDT") + v(regime, "English-EWT", "English-EWT")) / 2
        cross = (v(regime, "Danish-DDT", "English-EWT") + v(regime, "English-EWT", "Danish-DDT")) / 2
        test_only = (v(regime, "Danish-DDT", "Tagalog-TRG") + v(regime, "English-EWT", "Tagalog-TRG")) / 2
        mean = sum(sum(v(regime, tr, ev) for ev in EVAL_SETS) / 3 for tr in TRAIN_SETS) / 2
        row = s.loc[r]
        assert row[f"{regime} in-language"] == pytest.approx(in_lang, abs=1e-9)  # dev rows (0.99) excluded
        assert row[f"{regime} cross-lingual"] == pytest.approx(cross, abs=1e-9)
        assert row[f"{regime} test-only"] == pytest.approx(test_only, abs=1e-9)
        assert row[f"{regime} mean"] == pytest.approx(mean, abs=1e-9)
        assert row[f"{regime} train sets"] == 2
    assert s.loc[r, "method"] == "fomaml" and s.loc[r, "panel"] == "micro, seed=2"
    md = (exp / "figures" / "tables" / "ner_summary.md").read_text()
    assert f"{s.loc[r, 'head in-language']:.3f}" in md

    dt = read_csv(exp, "ner_delta_f1")
    sel = dt[(dt["run_id"] == r) & (dt["regime"] == "head") & (dt["scope"] == "all")].set_index("entity")
    assert set(sel.index) == {"micro", "PER", "LOC"}
    assert sel.loc["micro", "delta_f1"] == pytest.approx(0.04, abs=1e-9)  # the fixture's fomaml bonus
    assert sel.loc["micro", "n_pairs"] == len(TRAIN_SETS) * len(EVAL_SETS)
    assert sel.loc["micro", "baseline_run"] == rid("vanilla", "micro", 2)


# --------------------------------------------------------------------------- files, index, missing inputs


def test_every_output_exists_and_index_lists_it(full):
    exp, entries = full
    fig = exp / "figures"
    index = json.loads((fig / "index.json").read_text())
    assert index == entries
    listed = {e["file"] for e in index}
    on_disk = {str(p.relative_to(fig)) for p in fig.rglob("*") if p.is_file() and p.name != "index.json"}
    assert listed == on_disk
    for e in index:
        assert e["kind"] in ("figure", "table") and e["caption"] and e["inputs"]
        for inp in e["inputs"]:
            assert (exp / inp).exists(), inp
    for name in ("loss/loss_vs_step", "loss/loss_vs_tokens", "loss/loss_vs_flops", "speedup/speedup_to_equal_loss",
                 "ner/ner_f1_heatmap__micro_seed-1__head", "ner/ner_f1_heatmap__mini_seed-1__full",
                 "ner/ner_delta_f1", "dynamics/dynamics_layers__per__activations__micro_seed-1",
                 "dynamics/dynamics_layers__head_entropy__micro_seed-1",
                 "dynamics/dynamics_heatmap__per__activations__micro_seed-1",
                 "dynamics/dynamics_overview__micro_seed-1", "dynamics/episodic_accuracy_vs_per"):
        assert (fig / f"{name}.png").stat().st_size > 1000, name
    for name in ("grid", "pretrain_final", "speedup", "ner_summary", "ner_delta_f1", "dynamics_peaks"):
        for ext in ("csv", "md", "tex", "html"):
            assert (fig / "tables" / f"{name}.{ext}").exists()
    peaks = read_csv(exp, "dynamics_peaks")
    assert set(peaks["method"]) == {"vanilla", "fomaml"} and "source" in peaks
    # Not blank: the loss figure has plenty of distinct colours.
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(fig / "loss" / "loss_vs_step.png")
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 50


def test_missing_inputs_still_produce_what_they_can(tmp_path, caplog):
    exp = make_experiment(tmp_path, ner=False, dynamics=False, unfinished=(rid("fomaml", "mini", None),))
    (exp / "grid.yaml").unlink()  # runs are then found from their run.json files
    build(exp)
    fig = exp / "figures"
    index = json.loads((fig / "index.json").read_text())
    files = {e["file"] for e in index}
    assert "loss/loss_vs_step.png" in files and "speedup/speedup_to_equal_loss.png" in files
    assert not any(f.startswith(("ner/", "dynamics/")) for f in files)
    assert not list((fig / "ner").iterdir()) and not list((fig / "dynamics").iterdir())  # folders exist, empty
    grid = read_csv(exp, "grid")
    assert rid("fomaml", "mini", None) not in set(grid["run_id"])  # unfinished: left out
    text = caplog.text
    assert "no ner/results.csv" in text and "pretraining not done" in text and "no run has dynamics" in text
    assert "runs discovered from 4 run.json files" in text
    assert set(grid["method"]) == {"vanilla", "fomaml"} and set(grid["panel"]) == {"micro", "mini"}


def test_dynamics_without_peaks_and_an_experiment_without_runs(tmp_path):
    exp = make_experiment(tmp_path, points=(("micro", None),), ner=False, peaks=False)
    build(exp)
    assert (exp / "figures" / "dynamics" / "dynamics_layers__per__activations__micro.png").exists()
    assert not (exp / "figures" / "tables" / "dynamics_peaks.csv").exists()

    empty = tmp_path / "results" / "empty"
    (empty / "runs").mkdir(parents=True)
    assert build(empty) == []
    assert json.loads((empty / "figures" / "index.json").read_text()) == []


def test_cli_writes_index_and_a_rerun_drops_stale_files(tmp_path, capsys):
    from metapretrain.cli import main

    exp = make_experiment(tmp_path, points=(("micro", None),), ner=False, dynamics=False)
    stale = exp / "figures" / "loss" / "old_figure.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"x")
    assert main(["figures", "--experiment-dir", str(exp)]) == 0
    files = {e["file"] for e in json.loads((exp / "figures" / "index.json").read_text())}
    assert {"loss/loss_vs_step.png", "loss/loss_vs_step.pdf", "speedup/speedup_to_equal_loss.pdf"} <= files
    assert (exp / "figures" / "loss" / "loss_vs_step.pdf").read_bytes().startswith(b"%PDF")
    assert not stale.exists()
    assert "figure files" in capsys.readouterr().out
    assert main(["figures", "--experiment-dir", str(tmp_path / "nope")]) == 1


# --------------------------------------------------------------------------- pairing rule, table writers


def test_pairing_rule_treats_meta_only_axes_as_method_axes():
    from metapretrain.figures.load import RunData
    from metapretrain.figures.pairing import design

    def run(method, steps, preset):
        learner = "none" if method == "vanilla" else "fomaml"
        ax = {"method": method, "meta.inner.steps": str(steps), "model.preset": preset}
        cfg = {"meta": {"learner": learner, "inner": {"steps": steps}}, "model": {"preset": preset}}
        return RunData(f"{method}-{steps}-{preset}", ax, cfg, Path("."))

    # Vanilla only at inner.steps=1 (the others excluded as redundant): meta runs at 5 still pair with it.
    runs = [run("vanilla", 1, "tiny"), run("vanilla", 1, "small"), run("fomaml", 1, "tiny"), run("fomaml", 5, "tiny"),
            run("fomaml", 5, "small"), run("fomaml", 1, "small")]
    d = design(runs, ["method", "meta.inner.steps", "model.preset"])
    assert d.method_axes == ["method", "meta.inner.steps"] and d.learner_axes == ["method"]
    assert d.facet_axes == ["model.preset"]
    assert d.baseline["fomaml-5-tiny"] == "vanilla-1-tiny" and d.baseline["fomaml-1-small"] == "vanilla-1-small"
    assert d.label["fomaml-5-tiny"] == "fomaml, inner.steps=5" and d.label["vanilla-1-tiny"] == "vanilla"
    assert d.panels() == ["tiny", "small"]  # by model size, not alphabetically
    assert d.methods()[0] == "vanilla"

    # A dotted learner axis: `none` reads as vanilla.
    dotted = [RunData(f"l{i}", {"meta.learner": v}, {"meta": {"learner": v}}, Path(".")) for i, v in
              enumerate(("none", "fomaml", "reptile"))]
    d = design(dotted, ["meta.learner"])
    assert d.methods() == ["vanilla", "fomaml", "reptile"] and d.baseline == {"l1": "l0", "l2": "l0"}

    lonely = [run("fomaml", 1, "large"), run("vanilla", 1, "tiny")]
    d = design(lonely, ["method", "model.preset"])
    assert d.baseline["fomaml-1-large"] is None and "no vanilla run" in d.notes[0]


def test_dynamics_components_are_grouped_by_source():
    from metapretrain.figures.dynamics import MAX_ROWS, component_groups, is_per

    comps = [f"attn.{p}_proj.{s}" for p in "qkvo" for s in ("weight", "grad", "act")] + ["resid.act", "attn"]
    groups = dict(component_groups(comps))
    assert list(groups) == ["", "weights", "gradients", "activations"]
    assert groups["activations"] == ["attn.q_proj.act", "attn.k_proj.act", "attn.v_proj.act", "attn.o_proj.act",
                                     "resid.act"]  # in the order data flows through a block
    many = component_groups([f"m{i}.weight" for i in range(MAX_ROWS + 1)])
    assert [g for g, _ in many] == ["weights-part1", "weights-part2"] and len(many[1][1]) == 1
    assert is_per("per") and is_per("per_weights") and not is_per("perplexity")


def test_latex_and_markdown_escape_and_align():
    from metapretrain.figures.tables import to_latex, to_markdown

    df = pd.DataFrame({"run_id": ["method~a_b", "x&y"], "value": ["0.123", "1.5×"]})
    tex = to_latex(df, "100% sure", sources=["runs/a/b.csv"])
    assert "method\\textasciitilde{}a\\_b" in tex and "x\\&y" in tex and "100\\% sure" in tex
    assert "\\begin{tabular}{lr}" in tex and "1.5$\\times$" in tex
    md = to_markdown(df)
    assert md.splitlines()[1] == "|:---|---:|"


# --------------------------------------------------------------------------- the Snakemake rule and its report

HARNESS = '''
from types import SimpleNamespace
import yaml
EXP_DIR = "results/synth"
EXPERIMENT_FILE = "exp.yaml"
EXP = SimpleNamespace(runs=[SimpleNamespace(run_id=r["run_id"]) for r in yaml.safe_load(open(EXP_DIR + "/grid.yaml"))["runs"]])
GRID_FILE = EXP_DIR + "/grid.yaml"
NER_RESULTS = EXP_DIR + "/ner/results.csv"
def run_dir(run_id): return EXP_DIR + "/runs/" + run_id
def done_targets(kind):
    if kind == "finetune":
        return ["finetune results exist"]
    return [run_dir(r.run_id) + f"/{kind}/done.json" for r in EXP.runs]
FIGURES_DIR = EXP_DIR + "/figures"
from metapretrain import paths
# common.smk's figure_group, which the real workflow defines beside the other rule helpers
def figure_group(group, caption, category):
    return report(directory(FIGURES_DIR + "/" + group), patterns=["{figure}.png"], caption="../report/" + caption,
                  category=category, labels={"figure": "{figure}"})
rule all:
    input: EXP_DIR + "/figures/index.json"
include: "{rules}"
'''


@pytest.mark.slow
def test_figures_rule_and_html_report_show_every_figure_with_its_caption(tmp_path):
    """workflow/rules/figures.smk on a finished fixture experiment (upstream rules stubbed), then --report."""
    import base64
    import io
    import os
    import re
    import subprocess
    import sys

    import matplotlib.image as mpimg
    import numpy as np

    repo = Path(__file__).resolve().parents[1]
    make_experiment(tmp_path, points=(("micro", None),))
    (tmp_path / "exp.yaml").write_text("experiment: synth\n")
    (tmp_path / "Snakefile").write_text(HARNESS.replace("{rules}", str(repo / "workflow" / "rules" / "figures.smk")))
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    snakemake = str(Path(sys.executable).parent / "snakemake")
    for args in (["--cores", "1"], ["--report", "report.html"]):
        proc = subprocess.run([snakemake, *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    pngs = sorted(p.name for p in (tmp_path / "results" / "synth" / "figures").rglob("*.png"))
    html = (tmp_path / "report.html").read_text()
    shown = re.findall(r"data:image/png;charset=[^;]*;filename=([^;]+);base64,([A-Za-z0-9+/=]+)", html)
    assert sorted(name for name, _ in shown) == pngs
    for name, data in shown:  # every embedded image decodes and is not blank
        img = mpimg.imread(io.BytesIO(base64.b64decode(data)), format="png")
        assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 20, name
    for caption in ("Speedup to equal loss, measured four ways", "Pretraining loss against", "Pairing rule",
                    "strict entity-level micro-F1", "Learning dynamics per layer", "The resolved grid"):
        assert caption in html, caption
