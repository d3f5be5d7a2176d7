"""Tuned and declared baselines, candidates without metrics, reverse fraction and loss gap, meta fraction.

Validation losses at steps 0/100/200 (tokens = 1000·step, tokens_ntp = 500·step, FLOPs = 1e9·step):

* tuned fixture (method × train.lr × seed, fomaml only at lr 0.001, `compare.tuning: [train.lr]`):
  vanilla lr 0.001: seed 1 final 4.0 (the lowest single run), seed 2 final 5.0 -> mean 4.5;
  vanilla lr 0.003: seed 1 final 4.2, seed 2 final 4.4 -> mean 4.3: the tuned value is 0.003.
  fomaml seed 1 [9, 5, 3.0] reaches 4.2 at step 100 + 100·(5 − 4.2)/2 = 140 (speedup 200/140);
  fomaml seed 2 [9, 6, 4.8] never reaches 4.4; vanilla seed 2 reaches 4.8 at 100 + 100·1.2/1.6 = 175:
  reverse 175/200 = 0.875, loss gap at step 200: 4.8 − 4.4 = +0.4.
* declared fixture (vanilla, vanilla_flops, fomaml × 3 seeds, `compare.baselines: {fomaml: [vanilla,
  vanilla_flops, vanilla_nope]}`): vanilla [9, 6, 4.0], vanilla_flops seed s [9, 5, 2.0 + 0.1 (s − 1)],
  fomaml [9, 5, 3.0]: against vanilla it reaches at 150; against vanilla_flops it never does, and
  vanilla_flops reaches 3.0 at 100 + 100·2/(5 − F): reverse (F = 2.0, 2.1, 2.2) 5/6, 0.84483, 0.85714;
  loss gap 1.0, 0.9, 0.8 (mean 0.9).
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
STEPS = (0, 100, 200)


def _write_run(exp: Path, run_id: str, axes: dict, cfg: dict, val: list[float], train_extra=None) -> None:
    rdir = exp / "runs" / run_id
    (rdir / "pretrain").mkdir(parents=True)
    (rdir / "config.resolved.yaml").write_text(yaml.safe_dump(cfg))
    lines = []
    for i, step in enumerate(STEPS):
        co = {"step": step, "tokens": step * 1000, "tokens_ntp": step * 500, "flops": step * 1e9,
              "wall": float(step)}
        tr = {"kind": "train", **co, "loss": 9.0 - 0.02 * step, "n_next_token": 1,
              "n_meta": int(cfg["meta"]["learner"] != "none")}
        if train_extra:
            tr |= train_extra[i]
        lines.append(json.dumps(tr))
        lines.append(json.dumps({"kind": "eval", **co, "val_loss": val[i]}))
    (rdir / "pretrain" / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (rdir / "pretrain" / "done.json").write_text("{}")


TUNED_VAL = {("vanilla", "0.001", 1): 4.0, ("vanilla", "0.001", 2): 5.0,
             ("vanilla", "0.003", 1): 4.2, ("vanilla", "0.003", 2): 4.4}


def make_tuned(root: Path, meta_lrs=("0.001",), compare=None) -> Path:
    exp = root / "results" / "tuned"
    runs = []
    for method, lrs in (("vanilla", ("0.001", "0.003")), ("fomaml", meta_lrs)):
        for lr in lrs:
            for seed in (1, 2):
                ax = {"method": method, "train.lr": lr, "seed": str(seed)}
                rid = f"method~{method}/seed~{seed}/train.lr~{lr}"
                runs.append({"run_id": rid, "axes": ax})
                cfg = {"seed": seed, "train": {"lr": float(lr)}, "model": {"preset": "micro"},
                       "meta": {"learner": "none" if method == "vanilla" else "fomaml"}}
                if method == "vanilla":
                    val = [9.0, 6.0, TUNED_VAL[(method, lr, seed)]]
                else:
                    val = [9.0, 5.0, 3.0] if seed == 1 else [9.0, 6.0, 4.8]
                _write_run(exp, rid, ax, cfg, val)
    doc = {"experiment": "tuned", "axes": ["method", "train.lr", "seed"], "runs": runs, "replicates": ["seed"],
           "compare": compare if compare is not None else {"tuning": ["train.lr"]}}
    (exp / "grid.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return exp


def make_declared(root: Path) -> Path:
    exp = root / "results" / "declared"
    runs = []
    for method in ("vanilla", "vanilla_flops", "fomaml"):
        for seed in (1, 2, 3):
            ax = {"method": method, "seed": str(seed)}
            rid = f"method~{method}/seed~{seed}"
            runs.append({"run_id": rid, "axes": ax})
            cfg = {"seed": seed, "model": {"preset": "micro"},
                   "train": {"budget": {"unit": "flops" if method == "vanilla_flops" else "steps"}},
                   "meta": {"learner": "fomaml" if method == "fomaml" else "none"}}
            val = {"vanilla": [9.0, 6.0, 4.0], "fomaml": [9.0, 5.0, 3.0],
                   "vanilla_flops": [9.0, 5.0, 2.0 + 0.1 * (seed - 1)]}[method]
            _write_run(exp, rid, ax, cfg, val)
    doc = {"experiment": "declared", "axes": ["method", "seed"], "runs": runs, "replicates": ["seed"],
           "compare": {"baselines": {"fomaml": ["vanilla", "vanilla_flops", "vanilla_nope"]}}}
    (exp / "grid.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))
    return exp


def build(exp: Path):
    from metapretrain.figures.stage import build_figures

    return build_figures(exp, formats=("png",), strict=True)


def table(exp: Path, name: str):
    return pd.read_csv(exp / "figures" / "tables" / f"{name}.csv")


def caption(exp: Path, file: str) -> str:
    return next(e["caption"] for e in json.loads((exp / "figures" / "index.json").read_text()) if e["file"] == file)


def loaded(exp: Path):
    from metapretrain.figures.load import load_experiment_data
    from metapretrain.figures.pairing import design

    data = load_experiment_data(exp)
    return data, design(data.runs, data.axes, data.replicates, compare=data.compare)


def V(lr, seed):
    return f"method~vanilla/seed~{seed}/train.lr~{lr}"


def M(lr, seed):
    return f"method~fomaml/seed~{seed}/train.lr~{lr}"


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    exp = make_tuned(tmp_path_factory.mktemp("tuned"))
    build(exp)
    return exp


@pytest.fixture(scope="module")
def declared(tmp_path_factory):
    exp = make_declared(tmp_path_factory.mktemp("declared"))
    build(exp)
    return exp


# --------------------------------------------------------------------------- tuned baseline


def test_tuned_baseline_is_lowest_mean_not_lowest_run(tuned):
    data, d = loaded(tuned)
    assert d.tuning_axes == ["train.lr"] and d.facet_axes == [] and "train.lr" not in d.method_axes
    assert d.panels() == ["micro"]  # no panel per learning rate
    t = d.tuned["micro"]["vanilla"]
    assert t["text"] == "train.lr=0.003" and t["n"] == 2 and t["from_evals"]
    assert t["mean_val_loss"] == {"train.lr=0.001": pytest.approx(4.5), "train.lr=0.003": pytest.approx(4.3)}
    for s in (1, 2):  # paired by seed with the tuned value, although the lowest single run is lr 0.001 seed 1
        assert d.baseline[M("0.001", s)] == V("0.003", s) and d.baselines[M("0.001", s)] == [V("0.003", s)]
        assert d.paired[M("0.001", s)]
    assert d.label[V("0.001", 1)] == "vanilla, lr=0.001" and d.label[V("0.003", 2)] == "vanilla, lr=0.003"
    assert d.label[M("0.001", 1)] == "fomaml"  # meta runs do not vary lr: no lr in their label
    assert d.methods() == ["vanilla, lr=0.001", "vanilla, lr=0.003", "fomaml"]
    assert any(n.startswith("tuned baseline for panel micro: train.lr=0.003 (mean final val loss 4.30 over 2 "
                            "replicates; 0.001: 4.50)") for n in d.notes)
    text = d.baseline_text()
    assert "vanilla at train.lr=0.003" in text and "{0.001, 0.003}" in text
    assert text == ("baseline: vanilla at train.lr=0.003, the tuned value of {0.001, 0.003} by mean final "
                    "validation loss over 2 seeds; paired by seed")


def test_tuned_tables_and_captions_name_the_choice(tuned):
    grid = table(tuned, "grid").set_index("run_id")
    assert grid.loc[V("0.003", 1), "tuned_baseline"].startswith("chosen: train.lr=0.003")
    assert grid.loc[V("0.001", 1), "tuned_baseline"].startswith("not chosen (tuned: train.lr=0.003")
    assert grid.loc[M("0.001", 2), "baseline_run"] == V("0.003", 2)
    final = table(tuned, "pretrain_final_summary")
    assert set(final["method"]) == {"vanilla, lr=0.001", "vanilla, lr=0.003", "fomaml"}  # each lr its own cell
    sp = table(tuned, "speedup")
    meta = sp[sp["run_id"] != sp["baseline_run"]].set_index("run_id")
    assert set(sp["baseline_run"]) == {V("0.003", 1), V("0.003", 2)}
    assert meta.loc[M("0.001", 1), "speedup_step"] == pytest.approx(200 / 140)
    # tokens are next-token tokens (tokens_ntp = 500·step), not `tokens` (1000·step)
    assert meta.loc[M("0.001", 1), "tokens_to_target"] == pytest.approx(140 * 500)
    assert not meta.loc[M("0.001", 2), "reached"]
    assert meta.loc[M("0.001", 2), "reverse_step"] == pytest.approx(0.875)
    assert meta.loc[M("0.001", 2), "reverse_flops"] == pytest.approx(0.875)
    assert meta.loc[M("0.001", 2), "loss_gap_flops"] == pytest.approx(0.4)
    assert math.isnan(meta.loc[M("0.001", 1), "reverse_step"])  # 3.0: lower than vanilla ever gets
    assert meta.loc[M("0.001", 1), "loss_gap_step"] == pytest.approx(3.0 - 4.2)
    cap = caption(tuned, "speedup/speedup_to_equal_loss.png")
    assert "train.lr=0.003" in cap and "paired by seed" in cap and "next-token tokens" in cap
    assert "1 of 2 pairs reached" in cap
    assert "next-token tokens" in caption(tuned, "loss/loss_vs_tokens.png")


def test_meta_runs_that_vary_the_tuning_axis_carry_it_and_meet_the_tuned_vanilla(tmp_path):
    exp = make_tuned(tmp_path, meta_lrs=("0.001", "0.003"))
    _, d = loaded(exp)
    assert d.label[M("0.001", 1)] == "fomaml, lr=0.001" and d.label[M("0.003", 1)] == "fomaml, lr=0.003"
    for lr in ("0.001", "0.003"):
        for s in (1, 2):
            assert d.baseline[M(lr, s)] == V("0.003", s)


def test_candidates_without_any_metrics():
    from metapretrain.figures.load import RunData
    from metapretrain.figures.pairing import design

    def run(method, lr, seed, preset="micro"):
        ax = {"method": method, "train.lr": lr, "seed": str(seed), "model.preset": preset}
        cfg = {"seed": seed, "train": {"lr": float(lr)}, "model": {"preset": preset},
               "meta": {"learner": "none" if method == "vanilla" else "fomaml"}}
        return RunData(f"{method}-{lr}-{seed}-{preset}", ax, cfg, Path("."))  # evals=None

    runs = [run(m, lr, s, p) for p in ("micro", "mini") for m in ("vanilla", "fomaml") for lr in ("0.001", "0.003")
            for s in (1, 2) if not (m == "fomaml" and lr == "0.001")]
    axes = ["method", "train.lr", "seed", "model.preset"]
    d = design(runs, axes, ["seed"], compare={"tuning": ["train.lr"], "baselines": {}})
    assert d.facet_axes == ["model.preset"]
    assert d.candidates["fomaml-0.003-1-micro"] == ["vanilla-0.001-1-micro", "vanilla-0.003-1-micro"]
    assert d.candidates["fomaml-0.003-2-mini"] == ["vanilla-0.001-2-mini", "vanilla-0.003-2-mini"]
    # no evals: the smallest value, said so
    assert d.baseline["fomaml-0.003-1-micro"] == "vanilla-0.001-1-micro"
    assert any("smallest value (no run has a validation loss yet)" in n for n in d.notes)
    assert "no run has validation loss yet" in d.baseline_text()

    # declared labels restrict the candidates
    van2 = [RunData(f"vf-{lr}-{s}", {"method": "vanilla_flops", "train.lr": lr, "seed": str(s), "model.preset": "micro"},
                    {"seed": s, "train": {"lr": float(lr), "budget": {"unit": "flops"}}, "model": {"preset": "micro"},
                    "meta": {"learner": "none"}}, Path(".")) for lr in ("0.001", "0.003") for s in (1, 2)]
    micro = [r for r in runs if r.axes["model.preset"] == "micro"] + van2
    d = design(micro, axes, ["seed"], compare={"tuning": ["train.lr"], "baselines": {"fomaml": ["vanilla_flops"]}})
    assert d.candidates["fomaml-0.003-2-micro"] == ["vf-0.001-2", "vf-0.003-2"]
    assert d.baselines["fomaml-0.003-2-micro"] == ["vf-0.001-2"]
    d = design(micro, axes, ["seed"], compare={"tuning": ["train.lr"]})
    assert set(d.candidates["fomaml-0.003-2-micro"]) == {"vanilla-0.001-2-micro", "vanilla-0.003-2-micro",
                                                        "vf-0.001-2", "vf-0.003-2"}


# --------------------------------------------------------------------------- declared baselines


def test_declared_baselines_one_row_per_meta_and_baseline(declared):
    data, d = loaded(declared)
    for s in (1, 2, 3):
        assert d.baselines[f"method~fomaml/seed~{s}"] == [f"method~vanilla/seed~{s}", f"method~vanilla_flops/seed~{s}"]
        assert d.baseline[f"method~fomaml/seed~{s}"] == f"method~vanilla/seed~{s}"
    assert any("'vanilla_nope' matches no vanilla run" in n and "vanilla, vanilla_flops" in n for n in d.notes)
    sp = table(declared, "speedup")
    meta = sp[sp["run_id"] != sp["baseline_run"]]
    assert len(meta) == 6 and len(sp) == 12
    assert set(zip(meta["run_id"], meta["baseline"], strict=True)) == {
        (f"method~fomaml/seed~{s}", b) for s in (1, 2, 3) for b in ("vanilla", "vanilla_flops")}
    vf = meta[meta["baseline"] == "vanilla_flops"].set_index("run_id")
    assert not vf["reached"].any()
    for s, F in ((1, 2.0), (2, 2.1), (3, 2.2)):
        assert vf.loc[f"method~fomaml/seed~{s}", "reverse_step"] == pytest.approx((100 + 200 / (5 - F)) / 200)
        assert vf.loc[f"method~fomaml/seed~{s}", "loss_gap_flops"] == pytest.approx(3.0 - F)
    va = meta[meta["baseline"] == "vanilla"]
    assert va["reached"].all() and va["speedup_step"].tolist() == pytest.approx([200 / 150] * 3)


def test_not_reached_summary_has_the_reverse_interval(declared):
    summ = table(declared, "speedup_summary").set_index("baseline")
    assert list(summ.index) == ["vanilla", "vanilla_flops"]
    v = summ.loc["vanilla"]
    assert v["n_reached"] == 3 and v["speedup_step"] == pytest.approx(200 / 150)
    f = summ.loc["vanilla_flops"]
    assert f["n_pairs"] == 3 and f["n_reached"] == 0 and math.isnan(f["speedup_step"])
    revs = [(100 + 200 / (5 - F)) / 200 for F in (2.0, 2.1, 2.2)]
    assert f["reverse_flops"] == pytest.approx(sum(revs) / 3) and f["reverse_flops_n"] == 3
    assert min(revs) - 1e-9 <= f["reverse_flops_lo"] < f["reverse_flops"] < f["reverse_flops_hi"] <= max(revs) + 1e-9
    assert f["loss_gap_flops"] == pytest.approx(0.9)
    assert f["loss_gap_flops_hi"] == pytest.approx(0.9 + T2 * 0.1 / math.sqrt(3), abs=1e-6)
    md = (declared / "figures" / "tables" / "speedup_summary.md").read_text()
    assert "reverse_flops [95% CI]" in md and "0.85× [" in md and "+0.9000 [" in md
    cap = caption(declared, "speedup/speedup_to_equal_loss.png")
    assert "fomaml vs vanilla_flops (micro): 0 of 3 pairs reached; reverse (FLOPs) 0.85× [" in cap
    assert "Declared baselines: fomaml vs vanilla, vanilla_flops, vanilla_nope" in cap


def test_vanilla_labels_get_distinct_colours():
    from metapretrain.figures.style import OKABE_ITO, method_colors

    c = method_colors(["vanilla, lr=0.001", "vanilla, lr=0.003", "vanilla_flops", "fomaml"])
    assert len({c["vanilla, lr=0.001"], c["vanilla, lr=0.003"], c["vanilla_flops"]}) == 3
    assert c["fomaml"] == OKABE_ITO[0] and all(c[m] not in OKABE_ITO for m in c if m.startswith("vanilla"))
    from metapretrain.figures.style import method_linestyles

    ls = method_linestyles(["vanilla, lr=0.001", "vanilla, lr=0.003", "fomaml"])
    assert ls["vanilla, lr=0.001"] != ls["vanilla, lr=0.003"] and ls["fomaml"] == "-"


# --------------------------------------------------------------------------- hand-computed curves


def test_reverse_fraction_and_loss_gap_by_hand():
    from metapretrain.figures.speedup import loss_at, reverse_and_gap

    def ev(steps, losses):
        return pd.DataFrame({"step": steps, "tokens": [2 * s for s in steps], "flops": [1e9 * s for s in steps],
                             "wall": [float(s) for s in steps], "val_loss": losses})

    base = ev([0, 100, 200], [9.0, 6.0, 4.0])
    meta = ev([0, 50, 150], [9.0, 7.0, 5.5])
    assert loss_at(base, "step", 150) == pytest.approx(5.0) and math.isnan(loss_at(base, "step", 250))
    r = reverse_and_gap(meta, base)
    # vanilla reaches 5.5 at 100 + 100·(6 − 5.5)/2 = 125; meta's final step is 150
    assert r["reverse_step"] == pytest.approx(125 / 150) and r["reverse_flops"] == pytest.approx(125 / 150)
    assert r["loss_gap_step"] == pytest.approx(0.5) and r["loss_gap_tokens"] == pytest.approx(0.5)
    longer = ev([0, 150, 300], [9.0, 6.0, 5.0])  # meta ends beyond the baseline's evaluations
    r = reverse_and_gap(longer, base)
    assert math.isnan(r["loss_gap_flops"]) and r["reverse_step"] == pytest.approx((100 + 50) / 300)


def test_meta_fraction_counts_micro_batches_not_records():
    from metapretrain.figures.loss import _meta_fraction

    # per-interval counts: 0 + 3 + 2 meta of 20 micro-batches, though 2 of 3 records have meta steps
    train = pd.DataFrame({"step": [1, 10, 20], "n_meta": [0, 3, 2], "n_next_token": [1, 6, 8]})
    assert _meta_fraction(train) == pytest.approx(5 / 20)
    assert math.isnan(_meta_fraction(pd.DataFrame({"step": [1]})))


def test_final_train_loss_is_the_last_interval_mean(tmp_path):
    exp = tmp_path / "results" / "one"
    runs = []
    for method in ("vanilla", "fomaml"):
        rid = f"method~{method}"
        runs.append({"run_id": rid, "axes": {"method": method}})
        extra = [{"loss_interval": 8.5}, {"loss_interval": 6.5}, {"loss": None, "loss_interval": 4.25}]
        _write_run(exp, rid, {"method": method}, {"model": {"preset": "micro"},
                   "meta": {"learner": "none" if method == "vanilla" else "fomaml"}}, [9.0, 6.0, 4.0], extra)
    (exp / "grid.yaml").write_text(yaml.safe_dump({"experiment": "one", "axes": ["method"], "runs": runs}))
    build(exp)
    final = table(exp, "pretrain_final").set_index("run_id")
    assert final.loc["method~vanilla", "final_train_loss"] == pytest.approx(4.25)  # not the last update's loss
    assert final.loc["method~fomaml", "meta_fraction"] == pytest.approx(0.5)
    assert final.loc["method~vanilla", "tokens_ntp"] == pytest.approx(100_000)


def test_example_config_loads():
    from metapretrain.grid import load_experiment

    exp = load_experiment(Path(__file__).resolve().parents[1] / "config" / "examples" / "tuned-baseline.yaml")
    assert exp.compare["tuning"] == ["train.lr"]
    methods = {(r.axes["method"], r.axes["train.lr"]) for r in exp.runs}
    assert len(exp.runs) == 6 and ("fomaml", "0.001") not in methods


def test_tuning_ignores_runs_without_evals_and_breaks_ties_to_the_smaller_value():
    from metapretrain.figures.load import RunData
    from metapretrain.figures.pairing import design

    def run(method, lr, seed, final):
        ax = {"method": method, "train.lr": lr, "seed": str(seed)}
        cfg = {"train": {"lr": float(lr)}, "model": {"preset": "micro"},
               "meta": {"learner": "none" if method == "vanilla" else "fomaml"}}
        ev = None if final is None else pd.DataFrame({"step": [0, 100], "tokens": [0, 1], "flops": [0, 1],
                                                      "wall": [0.0, 1.0], "val_loss": [9.0, final]})
        return RunData(f"{method}-{lr}-{seed}", ax, cfg, Path("."), evals=ev)

    axes, cmp = ["method", "train.lr", "seed"], {"tuning": ["train.lr"]}
    # lr 0.01 seed 2 has no evals: 0.01's mean is its seed 1 alone (4.0), below 0.003's (4.5)
    runs = [run("vanilla", "0.003", 1, 4.5), run("vanilla", "0.003", 2, 4.5), run("vanilla", "0.01", 1, 4.0),
            run("vanilla", "0.01", 2, None), run("fomaml", "0.003", 1, 3.0)]
    d = design(runs, axes, ["seed"], compare=cmp)
    assert d.tuned["micro"]["vanilla"]["text"] == "train.lr=0.01" and d.tuned["micro"]["vanilla"]["n"] == 1
    assert d.baseline["fomaml-0.003-1"] == "vanilla-0.01-1"
    # a tie: the smaller value by natural order (0.003 < 0.01, although '0.01' < '0.003' as text)
    runs = [run("vanilla", "0.01", 1, 4.5), run("vanilla", "0.003", 1, 4.5), run("fomaml", "0.003", 1, 3.0)]
    d = design(runs, axes, ["seed"], compare=cmp)
    assert d.baseline["fomaml-0.003-1"] == "vanilla-0.003-1"
