"""Per-step episodic curves (companion Figs 12–15) from metrics.jsonl, and the loop's head weight mean/std."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from test_replicates import SEEDS, T2, build, make_seeds_experiment, table  # noqa: E402


def query_acc(step: int, seed: int) -> float:
    return step / 1000 + 0.01 * seed


def add_episodic(exp: Path, head_stats: bool = True) -> None:
    """Meta runs get a train record every 10 steps (0..200) with episodic fields of known value."""
    for s in SEEDS:
        path = exp / "runs" / f"method~fomaml/seed~{s}" / "pretrain" / "metrics.jsonl"
        kept = [json.loads(x) for x in path.read_text().splitlines() if json.loads(x)["kind"] != "train"]
        train = []
        for step in range(0, 201, 10):
            rec = {"kind": "train", "step": step, "tokens": step * 1000, "flops": step * 1e9, "wall": float(step),
                   "loss": 9.0 - 0.02 * step, "n_next_token": 1, "n_meta": 1,
                   "meta/query_acc": query_acc(step, s), "meta/support_acc_after": 0.5,
                   "meta/support_acc_before": 0.2, "meta/head_weight_norm": 1.0 + step / 100}
            if head_stats:
                rec |= {"meta/head_weight_mean": 0.001 * s, "meta/head_weight_std": 0.02}
            train.append(rec)
        path.write_text("".join(json.dumps(r) + "\n" for r in train + kept))


@pytest.fixture(scope="module")
def episodic(tmp_path_factory):
    exp = make_seeds_experiment(tmp_path_factory.mktemp("episodic"))
    add_episodic(exp)
    return exp, build(exp)


def test_final_interval_values_with_intervals(episodic):
    exp, _ = episodic
    t = table(exp, "episodic_final").set_index("metric")
    assert set(t["method"]) == {"fomaml"} and set(t["panel"]) == {"micro"}  # meta runs only
    q = t.loc["meta/query_acc"]
    # final interval = the last 10% of steps 0..200: records at 180, 190, 200 -> 0.19 + 0.01 s
    finals = [0.19 + 0.01 * s for s in SEEDS]
    assert q["n"] == 3 and q["final"] == pytest.approx(sum(finals) / 3)
    half = T2 * pd.Series(finals).std() / math.sqrt(3)
    assert (q["final_lo"], q["final_hi"]) == (pytest.approx(0.21 - half), pytest.approx(0.21 + half))
    std = t.loc["meta/head_weight_std"]
    assert std["final"] == pytest.approx(0.02) and std["final_lo"] == pytest.approx(0.02)
    assert t.loc["meta/head_weight_mean", "final"] == pytest.approx(0.002)
    assert t.loc["meta/head_weight_norm", "final"] == pytest.approx(1.0 + 1.9)
    assert "meta/query_loss" not in t.index  # not recorded: no row


def test_curve_figure_has_every_recorded_metric(episodic):
    exp, entries = episodic
    captions = {e["file"]: e["caption"] for e in entries}
    assert (exp / "figures" / "episodic" / "episodic_curves.png").is_file()
    cap = captions["episodic/episodic_curves.png"]
    for what in ("query accuracy", "support accuracy (before adaptation)", "head weight mean", "head weight std"):
        assert what in cap
    assert "n = 3" in cap and "Not recorded" not in cap


def test_band_is_the_mean_over_seeds_at_each_step(episodic):
    from metapretrain.figures.episodic import series
    from metapretrain.figures.load import load_experiment_data
    from metapretrain.figures.loss import replicate_band

    exp, _ = episodic
    data = load_experiment_data(exp)
    curves = [series(data.run(f"method~fomaml/seed~{s}").train, "meta/query_acc") for s in SEEDS]
    x, mean, lo, hi = replicate_band(curves)
    assert list(x) == list(range(0, 201, 10))
    assert mean == pytest.approx([query_acc(int(step), 2) for step in x])


def test_missing_head_stats_are_said_and_no_fields_is_a_skip(tmp_path):
    exp = make_seeds_experiment(tmp_path / "a")
    add_episodic(exp, head_stats=False)
    entries = build(exp)
    cap = next(e["caption"] for e in entries if e["file"] == "episodic/episodic_curves.png")
    assert "Not recorded by these runs: head weight mean, head weight std" in cap
    bare = make_seeds_experiment(tmp_path / "b")  # no episodic field at all
    entries = build(bare)
    assert not any(e["file"].startswith("episodic/") or "episodic_final" in e["file"] for e in entries)
    assert (bare / "figures" / "episodic").is_dir()


def test_loop_records_head_weight_mean_and_std_over_weight_matrices():
    from metapretrain.train.loop import Trainer

    head = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 1))
    with torch.no_grad():
        head[0].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        head[2].weight.copy_(torch.tensor([[5.0, 6.0]]))
        head[0].bias.fill_(100.0)  # biases are left out
    kinds = {"meta": SimpleNamespace(modules=lambda: {"episode_head": head}),
             "next_token": SimpleNamespace(modules=lambda: {})}
    out = Trainer._head_weight_stats(SimpleNamespace(mix=SimpleNamespace(kinds=kinds)))
    w = torch.tensor([1.0, 2, 3, 4, 5, 6])
    assert out == {"meta/head_weight_mean": pytest.approx(3.5), "meta/head_weight_std": pytest.approx(float(w.std()))}


def test_hybrid_run_writes_head_weight_stats_in_train_records(tmp_path, tok_dir, monkeypatch):
    import metapretrain.meta  # noqa: F401
    from helpers import make_run, records
    from metapretrain.train import steps as steps_mod
    from metapretrain.train.stage import train_run
    from test_train_runs import HYBRID, _FakeMeta

    monkeypatch.setitem(steps_mod._STEP_KINDS, "fomaml", _FakeMeta)
    run = make_run(tmp_path, **HYBRID)
    train_run(str(run), str(tok_dir))
    train = records(run, "train")
    assert train and all({"meta/head_weight_mean", "meta/head_weight_std"} <= set(r) for r in train)
    assert all(r["meta/head_weight_std"] > 0 for r in train)
