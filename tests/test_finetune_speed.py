"""Fine-tuning speed (companion Table 2): the measures by hand, the Δ table over seeds, fit's curve every N steps."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
scipy_stats = pytest.importorskip("scipy.stats")

from metapretrain.figures import finetune_speed as fs  # noqa: E402
from test_replicates import SEEDS, T2, build, make_seeds_experiment, table  # noqa: E402

# --- the three measures on constructed curves -------------------------------------------------------------

STEPS = [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
LOSS = [2.0, 1.5, 1.0, 0.8, 0.6, 0.5, 0.45, 0.42, 0.41, 0.40]
F1 = [0.0, 0.1, 0.3, 0.5, 0.6, 0.62, 0.6, 0.61, 0.6, 0.6]


def test_t90_is_the_first_step_within_90_percent_of_the_loss_drop():
    # L0 = 2.0, L_final = 0.4: target 2.0 − 0.9 × 1.6 = 0.56; first loss ≤ 0.56 is 0.5 at step 60
    assert fs.t90_loss(STEPS, LOSS) == 60
    # dev F1: best 0.62, 90% = 0.558; first F1 ≥ 0.558 is 0.6 at step 50 (best, not final, F1)
    assert fs.t90_f1(STEPS, F1) == 50
    assert math.isnan(fs.t90_f1(STEPS, [0.0] * 10)) and math.isnan(fs.t90_f1(STEPS, [math.nan] * 10))
    # exactly on the target counts
    assert fs.t90_loss([0, 1, 2], [1.0, 0.1, 0.0]) == 1


def test_auc_is_the_trapezoid_area_over_the_step_span():
    # widths 10; trapezoids 1.75 1.25 .9 .7 .55 .475 .435 .415 .405 sum 6.88 -> area 68.8 over span 90
    assert fs.auc(STEPS, LOSS) == pytest.approx(68.8 / 90)
    assert fs.auc([0, 10, 30], [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert fs.auc([5], [0.7]) == pytest.approx(0.7)  # one point: its loss


def test_initial_slope_fits_the_first_ten_percent_of_steps():
    steps = list(range(1, 101))
    loss = [3.0 - 0.01 * s if s <= 10 else 2.9 + 0.5 * (s % 2) for s in steps]
    # span 1..100: first 10% = steps ≤ 1 + 9.9 = 10.9, i.e. 1..10, exactly linear with slope −0.01
    assert fs.initial_slope(steps, loss) == pytest.approx(-0.01)
    # fewer than two points in the first 10%: the first two points
    assert fs.initial_slope(STEPS, LOSS) == pytest.approx((1.5 - 2.0) / 10)
    assert math.isnan(fs.initial_slope([1], [1.0]))
    m = fs.measures(STEPS, LOSS, F1)
    assert (m["t90"], m["t90_f1"]) == (60, 50)


# --- the Δ table over seeds on fixture runs ------------------------------------------------------------------

# The drop of the loss curve (1 until step k − 10, 0 from step k): t90 = k, AUC = (k − 15) / 90, slope 0.
META_K = {1: 40, 2: 40, 3: 50}
VAN_K = {1: 60, 2: 70, 3: 70}


def _step_curve(k: int) -> tuple[list[int], list[float]]:
    return STEPS, [1.0 if s < k else 0.0 for s in STEPS]


def write_finetune(rdir: Path, k: int, *, train_set="English-EWT", regime="head", curve=True) -> Path:
    out = rdir / "finetune" / f"{train_set}~{regime}"
    out.mkdir(parents=True)
    steps, loss = _step_curve(k)
    if curve:
        rows = ["step,epoch,train_loss,dev_micro_f1"] + [f"{s},{1 + (s - 1) // 50},{v},{0.5 if s >= k else 0.1}"
                                                       for s, v in zip(steps, loss, strict=True)]
        (out / "curve.csv").write_text("\n".join(rows) + "\n")
    (out / "history.csv").write_text("epoch,train_loss,dev_micro_f1,dev_loss\n1,0.9,0.1,1.0\n2,0.3,0.5,0.6\n")
    (out / "done.json").write_text(json.dumps({"train_set": train_set, "regime": regime}))
    return out


@pytest.fixture(scope="module")
def speed(tmp_path_factory):
    exp = make_seeds_experiment(tmp_path_factory.mktemp("speed"))
    for s in SEEDS:
        write_finetune(exp / "runs" / f"method~fomaml/seed~{s}", META_K[s])
        write_finetune(exp / "runs" / f"method~vanilla/seed~{s}", VAN_K[s])
        # a compute-matched reading is not read (reading final only)
        write_finetune(exp / "runs" / f"method~vanilla/seed~{s}", 100, regime="head~matched-flops-x")
    return exp, build(exp)


def test_per_run_measures(speed):
    exp, _ = speed
    t = table(exp, "finetune_speed").set_index("run_id")
    assert len(t) == 6 and set(t["source"]) == {"curve.csv"}
    for s in SEEDS:
        meta, van = t.loc[f"method~fomaml/seed~{s}"], t.loc[f"method~vanilla/seed~{s}"]
        assert (meta["t90"], van["t90"]) == (META_K[s], VAN_K[s])
        assert meta["auc"] == pytest.approx((META_K[s] - 15) / 90)
        assert meta["slope"] == 0 and meta["t90_f1"] == META_K[s]


def test_delta_mean_ci_and_paired_p(speed):
    exp, entries = speed
    t = table(exp, "finetune_speed_tests").set_index("measure")
    assert set(t["train_set"]) == {"English-EWT"} and set(t["regime"]) == {"head"}
    row = t.loc["t90"]
    diffs = [META_K[s] - VAN_K[s] for s in SEEDS]  # −20, −30, −20
    sd = pd.Series(diffs).std()
    assert row["n"] == 3 and bool(row["paired"])
    assert row["delta"] == pytest.approx(-70 / 3)
    assert row["delta_lo"] == pytest.approx(-70 / 3 - T2 * sd / math.sqrt(3))
    assert row["delta_hi"] == pytest.approx(-70 / 3 + T2 * sd / math.sqrt(3))
    p = scipy_stats.ttest_rel([META_K[s] for s in SEEDS], [VAN_K[s] for s in SEEDS]).pvalue
    assert row["p"] == pytest.approx(p)
    assert row["meta"] == pytest.approx(130 / 3) and row["vanilla"] == pytest.approx(200 / 3)
    auc = t.loc["auc"]
    assert auc["delta"] == pytest.approx(-70 / 3 / 90) and auc["p"] == pytest.approx(p)
    slope = t.loc["slope"]  # no spread: no test
    assert slope["delta"] == 0 and math.isnan(slope["p"])
    captions = {e["file"]: e["caption"] for e in entries}
    cap = captions["tables/finetune_speed_tests.csv"]
    assert "t90: first logged step with train loss ≤ L0 − 0.9 (L0 − L_final)" in cap and "paired t-test" in cap
    assert "first 10%" in cap and "divided by the step span" in cap
    figs = [f for f in captions if f.startswith("finetune_speed/")]
    assert figs == ["finetune_speed/finetune_loss__micro__head.png"]


def test_history_fallback_is_said_and_several_train_sets_get_a_mean(tmp_path):
    exp = make_seeds_experiment(tmp_path)
    for s in SEEDS:
        write_finetune(exp / "runs" / f"method~fomaml/seed~{s}", META_K[s])
        write_finetune(exp / "runs" / f"method~fomaml/seed~{s}", META_K[s], train_set="Danish-DDT")
        write_finetune(exp / "runs" / f"method~vanilla/seed~{s}", VAN_K[s])
        write_finetune(exp / "runs" / f"method~vanilla/seed~{s}", VAN_K[s], train_set="Danish-DDT", curve=False)
    entries = build(exp)
    t = table(exp, "finetune_speed")
    hist = t[t["source"] == "history.csv"]
    assert len(hist) == 3 and set(hist["unit"]) == {"epoch"}  # no batch size in these configs: x = epoch
    tests = table(exp, "finetune_speed_tests")
    mean = tests[(tests["train_set"] == "mean") & (tests["measure"] == "t90")].iloc[0]
    ewt = tests[(tests["train_set"] == "English-EWT") & (tests["measure"] == "t90")].iloc[0]
    assert ewt["delta"] == pytest.approx(-70 / 3)
    # vanilla Danish-DDT from history.csv: loss 0.9 then 0.3 at epochs 1, 2 -> t90 = 2; meta Danish t90 = k
    assert mean["meta"] == pytest.approx(130 / 3)
    assert mean["vanilla"] == pytest.approx(((60 + 2) / 2 + (70 + 2) / 2 * 2) / 3)
    cap = next(e["caption"] for e in entries if e["file"] == "tables/finetune_speed_tests.csv")
    assert "3 of 12 fine-tune(s) have no curve.csv" in cap and "history.csv" in cap


def test_steps_per_epoch_from_done_json_and_config():
    done = {"train_set": "Danish-DDT", "data": {"Danish-DDT/train": {"sentences": 95}, "Danish-DDT/dev": {"sentences": 9}}}
    assert fs._steps_per_epoch(done, {"finetune": {"batch_size": 10}}) == 10
    assert fs._steps_per_epoch(done, {"finetune": {"batch_size": 10, "max_train_sentences": 40}}) == 4
    assert math.isnan(fs._steps_per_epoch(done, {}))


def test_no_finetune_is_a_skip(tmp_path):
    exp = make_seeds_experiment(tmp_path)
    entries = build(exp)
    assert not any("finetune_speed" in e["file"] for e in entries)
    assert (exp / "figures" / "finetune_speed").is_dir()  # the workflow's declared output exists even empty


# --- fit records the curve every N optimizer steps ------------------------------------------------------------

from test_finetune import _sources, classifier, make_run, small_uner  # noqa: E402

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def ft_run(tmp_path_factory, data_root) -> Path:
    return make_run(tmp_path_factory.mktemp("run") / "r", data_root)


def _fit(ft_run, data_root, *, log_every, epochs=2, state=None):
    from metapretrain.finetune.train import fit

    clf, enc = classifier(ft_run)
    train, dev, names = _sources(clf, enc, data_root, "head")
    res = fit(clf, train, dev, names, regime="head", epochs=epochs, batch_size=8, lr=1e-3, head_lr=None,
              weight_decay=0.0, patience=None, seed=0, state_path=state, log_every=log_every)
    n_batches = math.ceil(sum(1 for x in train.items if x.starts) / 8)
    return res, n_batches


def test_fit_records_train_loss_and_dev_f1_every_n_steps(ft_run, data_root, tmp_path):
    res, nb = _fit(ft_run, data_root, log_every=5)
    total = 2 * nb
    expected = [*range(5, total + 1, 5)] + ([total] if total % 5 else [])
    assert [c["step"] for c in res.curve] == expected
    assert [c["epoch"] for c in res.curve] == [min(2, 1 + (s - 1) // nb) for s in expected]
    assert all(0 <= c["dev_micro_f1"] <= 1 for c in res.curve)
    # interval means weighted by their lengths = epoch means weighted by theirs: the same batches
    widths = [b - a for a, b in zip([0, *expected], expected, strict=False)]
    assert sum(w * c["train_loss"] for w, c in zip(widths, res.curve, strict=True)) == pytest.approx(
        sum(nb * h["train_loss"] for h in res.history))
    none, _ = _fit(ft_run, data_root, log_every=None)
    assert none.curve == [] and [h["train_loss"] for h in none.history] == [h["train_loss"] for h in res.history]
    # killed after epoch 1 and resumed: the same curve
    _fit(ft_run, data_root, log_every=5, epochs=1, state=tmp_path / "state.pt")
    resumed, _ = _fit(ft_run, data_root, log_every=5, epochs=2, state=tmp_path / "state.pt")
    assert resumed.curve == res.curve
    with pytest.raises(ValueError, match="log_every"):
        _fit(ft_run, data_root, log_every=0)


def test_stage_writes_curve_csv_and_lists_it_in_done_json(tmp_path, data_root):
    from metapretrain.finetune import stage

    if not (data_root / "uner" / "Danish-DDT").is_dir():
        pytest.skip("no UNER data")
    uner = small_uner(data_root, tmp_path / "uner", n=30)
    run = make_run(tmp_path / "exp" / "runs" / "method~vanilla" / "model.preset~micro", data_root, lines=200,
                   finetune={"data_dir": str(uner), "epochs": 1, "batch_size": 8, "log_every": 2})
    out = Path(stage.finetune_run(str(run), "Danish-DDT", "head"))
    lines = (out / "curve.csv").read_text().splitlines()
    assert lines[0] == "step,epoch,train_loss,dev_micro_f1" and len(lines) > 2
    assert [int(x.split(",")[0]) for x in lines[1:3]] == [2, 4]
    done = json.loads((out / "done.json").read_text())
    assert set(done["outputs"]) == {"results.csv", "history.csv", "curve.csv"} and done["log_every"] == 2
