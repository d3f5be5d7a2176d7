"""The claims report (figures/claims.{md,json}): the verdict rule, each claim's statistic against a hand
computation, and what build_figures writes.

Fixture: tests/test_replicates.py's 2 methods × 3 seeds experiment, whose meta runs reach the vanilla
baseline's final loss at step 150, 145, 140 (vanilla: 200), so r = 200/150, 200/145, 200/140; its layer-0 PER
curve rises and falls in every fomaml run and in vanilla seeds 1 and 2 only.
"""

from __future__ import annotations

import json
import math

import pytest
import yaml

pd = pytest.importorskip("pandas")
scipy_stats = pytest.importorskip("scipy.stats")
pytest.importorskip("matplotlib")

from metapretrain.figures import claims  # noqa: E402
from test_replicates import build, make_seeds_experiment  # noqa: E402

META = [f"method~fomaml/seed~{s}" for s in (1, 2, 3)]
VAN = [f"method~vanilla/seed~{s}" for s in (1, 2, 3)]


def _data_design(exp):
    from metapretrain.figures.load import load_experiment_data
    from metapretrain.figures.pairing import design

    data = load_experiment_data(exp)
    return data, design(data.runs, data.axes, data.replicates)


def _t_interval(xs, level=0.95):
    n = len(xs)
    mean = sum(xs) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = scipy_stats.t.ppf(0.5 + level / 2, n - 1) * sd / math.sqrt(n)
    return mean, mean - half, mean + half


@pytest.fixture(scope="module")
def seeds(tmp_path_factory):
    exp = make_seeds_experiment(tmp_path_factory.mktemp("claims"))
    return exp, build(exp)


# --------------------------------------------------------------------------- the verdict rule


def test_verdict_gives_each_word_by_the_rule():
    v = claims.verdict
    assert v(1.3, 1.0, 0.01, 3, +1, 0.05) == "supported"
    assert v(0.02, 0.0, 0.001, 2, "greater", 0.05) == "supported"
    assert v(0.8, 1.0, 0.01, 3, +1, 0.05) == "contradicted"
    assert v(-0.02, 0.0, 0.01, 5, "greater", 0.05) == "contradicted"
    assert v(-0.02, 0.0, 0.01, 5, "less", 0.05) == "supported"  # a claim that something goes down
    assert v(1.3, 1.0, 0.2, 3, +1, 0.05) == "inconclusive"  # p >= alpha
    assert v(1.3, 1.0, 0.05, 3, +1, 0.05) == "inconclusive"  # p == alpha is not < alpha
    assert v(1.3, 1.0, 0.07, 3, +1, 0.10) == "supported"  # alpha is the experiment's
    assert v(1.3, 1.0, 0.001, 1, +1, 0.05) == "inconclusive"  # n = 1
    assert v(1.3, 1.0, math.nan, 1, +1, 0.05) == "inconclusive"  # n = 1 has no p
    assert v(1.3, 1.0, math.nan, 4, +1, 0.05) == "inconclusive"  # NaN p (no spread)
    assert v(math.nan, 1.0, math.nan, 0, +1, 0.05) == "inconclusive"  # no data
    assert v(1.0, 1.0, 0.01, 3, +1, 0.05) == "inconclusive"  # on the null
    with pytest.raises(ValueError):
        v(1.3, 1.0, 0.01, 3, "sideways")
    r = claims.verdict_reason
    assert r(1.3, 1.0, 0.001, 1, +1) == "n = 1: one pair, no test"
    assert "no spread" in r(1.3, 1.0, math.nan, 4, +1)
    assert r(math.nan, 1.0, math.nan, 0, +1) == "no data"
    assert "≥ alpha = 0.05" in r(1.3, 1.0, 0.2, 3, +1)
    assert "opposite side" in r(0.8, 1.0, 0.01, 3, +1)
    text = claims.rule_text(0.1)
    assert "alpha = 0.1" in text and "90%" in text and "**supported**" in text and "**contradicted**" in text


# --------------------------------------------------------------------------- same loss sooner


def test_speedup_ratio_geometric_mean_ci_and_p_match_a_hand_computation(seeds):
    exp, _ = seeds
    data, d = _data_design(exp)
    rows = [r for r in claims.speedup_rows(data, d, 0.05) if r["unit"] == "step"]
    assert len(rows) == 1
    row = rows[0]
    logs = [math.log(200 / x) for x in (150, 145, 140)]
    mean, lo, hi = _t_interval(logs)
    p = scipy_stats.ttest_1samp(logs, 0.0).pvalue
    assert row["estimate"] == pytest.approx(math.exp(mean), rel=1e-9)
    assert row["estimate"] == pytest.approx((200 ** 3 / (150 * 145 * 140)) ** (1 / 3), rel=1e-9)  # geometric mean
    assert (row["ci_lo"], row["ci_hi"]) == (pytest.approx(math.exp(lo), rel=1e-9), pytest.approx(math.exp(hi), rel=1e-9))
    assert row["p"] == pytest.approx(p, rel=1e-9) and p < 0.05
    assert row["n"] == 3 and row["verdict"] == "supported" and row["null"] == 1.0
    assert row["baseline"] == "vanilla (paired by seed)" and row["baseline_runs"] == "; ".join(VAN)
    assert row["run_ids"] == "; ".join(META)
    assert {r["unit"] for r in claims.speedup_rows(data, d, 0.05)} == {"step", "tokens", "flops"}


def _fake_speedup(reached, fwd, rev=None):
    rows = []
    for m, v, ok, f in zip(META, VAN, reached, fwd, strict=True):
        rows.append({"panel": "micro", "method": "vanilla", "run_id": v, "baseline_run": v, "reached": True,
                     "speedup_step": 1.0, "speedup_tokens": 1.0, "speedup_flops": 1.0})
        rows.append({"panel": "micro", "method": "fomaml", "run_id": m, "baseline_run": v, "reached": ok,
                     "speedup_step": f, "speedup_tokens": f, "speedup_flops": f})
    df = pd.DataFrame(rows)
    if rev is not None:  # the columns another branch adds to speedup_table
        for u in ("step", "tokens", "flops"):
            df[f"reverse_{u}"] = [math.nan if r["run_id"] in VAN else rev[META.index(r["run_id"])]
                                  for r in rows]
    return df


def test_a_pair_that_never_reaches_the_target_uses_the_reverse_ratio(seeds, monkeypatch):
    from metapretrain.figures import speedup

    exp, _ = seeds
    data, d = _data_design(exp)
    table = _fake_speedup([True, True, False], [1.5, 1.2, math.nan], rev=[math.nan, math.nan, 0.8])
    monkeypatch.setattr(speedup, "speedup_table", lambda data, d: table)
    row = next(r for r in claims.speedup_rows(data, d, 0.05) if r["unit"] == "flops")
    logs = [math.log(x) for x in (1.5, 1.2, 0.8)]
    assert row["n"] == 3
    assert row["estimate"] == pytest.approx(math.exp(sum(logs) / 3))
    assert row["p"] == pytest.approx(scipy_stats.ttest_1samp(logs, 0.0).pvalue)
    assert "1 of 3 pair(s) by the reverse ratio" in row["note"]
    # Without the reverse columns (speedup_table before that change) the pair is left out, and said so.
    monkeypatch.setattr(speedup, "speedup_table", lambda data, d: table.drop(
        columns=[c for c in table.columns if c.startswith("reverse_")]))
    row = next(r for r in claims.speedup_rows(data, d, 0.05) if r["unit"] == "step")
    assert row["n"] == 2 and "1 pair(s) without a ratio left out" in row["note"]


# --------------------------------------------------------------------------- NER


def test_ner_rows_from_a_delta_table_with_readings(seeds, monkeypatch):
    from metapretrain.figures import ner

    exp, _ = seeds
    data, d = _data_design(exp)
    deltas = {"final": [0.01, -0.01, 0.02], "matched-flops": [0.02, 0.03, 0.025]}
    rows = []
    for reading, ds in deltas.items():
        for m, v, delta in zip(META, VAN, ds, strict=True):
            for entity in ("micro", "PER"):
                rows.append({"panel": "micro", "method": "fomaml", "run_id": m, "baseline_run": v, "regime": "head",
                             "scope": "in_language", "entity": entity, "meta_f1": 0.5 + delta, "vanilla_f1": 0.5,
                             "delta_f1": delta if entity == "micro" else 0.5, "n_pairs": 2, "reading": reading,
                             "source": "ner/results.csv"})
            rows.append(rows[-2] | {"scope": "all"})  # not an eval group of the claim
    table = pd.DataFrame(rows)
    monkeypatch.setattr(ner, "delta_table", lambda data, d: table)
    out = claims.ner_rows(data, d, 0.05)
    assert [r["unit"] for r in out] == ["matched-flops", "final"]  # matched (equal compute) first
    for r in out:
        ds = deltas[r["unit"]]
        assert r["estimate"] == pytest.approx(sum(ds) / 3)
        assert r["p"] == pytest.approx(scipy_stats.ttest_rel([0.5 + x for x in ds], [0.5] * 3).pvalue)
        assert r["n"] == 3 and r["scope"] == "head fine-tuning, in-language eval sets"
        assert r["estimate_kind"] == "delta_f1" and r["test"].startswith("paired t-test")
    assert out[0]["verdict"] == "supported" and out[1]["verdict"] == "inconclusive"
    assert "not necessarily equal compute" in out[1]["note"]
    # Without a `reading` column every row reads as `final`.
    monkeypatch.setattr(ner, "delta_table", lambda data, d: table[table["reading"] == "final"].drop(columns="reading"))
    out = claims.ner_rows(data, d, 0.05)
    assert [r["unit"] for r in out] == ["final"]
    assert out[0]["estimate"] == pytest.approx(sum(deltas["final"]) / 3)


def test_ner_from_the_fixture_files(seeds):
    exp, _ = seeds
    data, d = _data_design(exp)
    (row,) = claims.ner_rows(data, d, 0.05)
    ds = [0.01, 0.02, 0.03]
    assert row["estimate"] == pytest.approx(0.02)
    assert row["p"] == pytest.approx(scipy_stats.ttest_1samp(ds, 0.0).pvalue)
    assert row["unit"] == "final"


# --------------------------------------------------------------------------- rise-and-fall


def test_rise_and_fall_difference_in_fractions_and_descriptive_rows(seeds):
    exp, _ = seeds
    data, d = _data_design(exp)
    rows = claims.dynamics_rows(data, d, 0.05)
    (tested,) = [r for r in rows if r["verdict"] != "descriptive" and r["unit"] == "effective rank (per)"]
    # Each run has two curves, the second monotone: fomaml rises and falls in 1 of 2 in every seed, vanilla
    # in seeds 1 and 2 only.
    ds = [0.0, 0.0, 0.5]
    assert tested["estimate"] == pytest.approx(1 / 6)
    assert tested["p"] == pytest.approx(scipy_stats.ttest_1samp(ds, 0.0).pvalue)
    assert tested["verdict"] == "inconclusive" and "vanilla baseline" in tested["statistic"]
    desc = {r["method"]: r for r in rows if r["verdict"] == "descriptive"}
    assert desc["vanilla"]["estimate"] == pytest.approx(2 / 3) and desc["fomaml"]["estimate"] == 1.0
    assert "2 of 3 runs" in desc["vanilla"]["note"]
    (ent,) = [r for r in rows if r["unit"] == "head entropy"]  # the fixture has no head-entropy peaks
    assert ent["verdict"] == "inconclusive" and ent["note"].startswith("not testable")


# --------------------------------------------------------------------------- the files


def test_build_figures_writes_claims_md_and_json_and_indexes_them(seeds):
    exp, entries = seeds
    fig = exp / "figures"
    index = json.loads((fig / "index.json").read_text())
    assert {"claims.md", "claims.json"} <= {e["file"] for e in index}
    for e in index:
        if e["file"].startswith("claims."):
            assert e["caption"] and e["inputs"] and all((exp / i).exists() for i in e["inputs"])
    md = (fig / "claims.md").read_text()
    assert md.startswith("# Claims: experiment `reps`")
    assert md.index("Verdict rule") < md.index("| claim |")
    assert "alpha: 0.05" in md and "paired by replicate axes seed" in md
    assert "1.38× [1.27×, 1.50×]" in md and "+0.020" in md and "**supported**" in md
    doc = json.loads((fig / "claims.json").read_text())
    assert doc["alpha"] == 0.05 and doc["rule"].startswith("Verdict rule") and doc["columns"] == list(claims.COLUMNS)
    assert set(doc["readings"]) == {"speedup", "ner", "rise_and_fall"}
    assert {r["claim_id"] for r in doc["rows"]} == {"speedup", "ner", "rise_and_fall"}
    for r in doc["rows"]:
        assert set(r) == set(claims.COLUMNS) and r["verdict"] in ("supported", "contradicted", "inconclusive",
                                                                  "descriptive")


def test_alpha_comes_from_the_compare_section(tmp_path):
    exp = make_seeds_experiment(tmp_path)
    grid = yaml.safe_load((exp / "grid.yaml").read_text())
    grid["compare"] = {"alpha": 0.1}
    (exp / "grid.yaml").write_text(yaml.safe_dump(grid))
    (exp / "ner" / "results.csv").unlink()  # and an experiment without NER still gets its NER row
    build(exp)
    doc = json.loads((exp / "figures" / "claims.json").read_text())
    assert doc["alpha"] == 0.1 and "90%" in doc["rule"]
    (ner_row,) = [r for r in doc["rows"] if r["claim_id"] == "ner"]
    assert ner_row["verdict"] == "inconclusive" and "no ner/results.csv" in ner_row["note"]
    assert "NER ΔF1 under equal compute**: not tested here" in (exp / "figures" / "claims.md").read_text()
    # alpha 0.1: the NER test of the fixture (p = 0.074) would pass it, but there is no NER here.
    speed = [r for r in doc["rows"] if r["claim_id"] == "speedup"]
    assert all(r["verdict"] == "supported" for r in speed)


def test_a_claims_failure_costs_no_other_output(tmp_path, monkeypatch):
    from metapretrain.figures.stage import build_figures

    exp = make_seeds_experiment(tmp_path)

    def boom(data, d):
        raise RuntimeError("broken claim")

    monkeypatch.setattr(claims, "claims_table", boom)
    build_figures(exp, formats=("png",), strict=False)
    fig = exp / "figures"
    files = {e["file"] for e in json.loads((fig / "index.json").read_text())}
    assert "speedup/speedup_to_equal_loss.png" in files and "tables/ner_delta_f1_tests.csv" in files
    assert {"claims.md", "claims.json"} <= files
    assert "failed (RuntimeError: broken claim)" in (fig / "claims.md").read_text()
    assert json.loads((fig / "claims.json").read_text())["error"] == "RuntimeError: broken claim"


def test_no_finished_run_gives_untestable_rows_and_build_writes_nothing(tmp_path):
    from metapretrain.figures.load import load_experiment_data

    exp = tmp_path / "results" / "empty"
    (exp / "runs").mkdir(parents=True)
    (exp / "grid.yaml").write_text(yaml.safe_dump({"experiment": "empty", "axes": ["method"], "runs": []}))
    rows = claims.claims_table(load_experiment_data(exp), None)
    assert list(rows["claim_id"]) == ["speedup", "ner", "rise_and_fall"]
    assert (rows["verdict"] == "inconclusive").all() and rows["note"].str.startswith("not testable").all()
    assert build(exp) == []  # as for every other figure: nothing to index without a finished run
    assert not (exp / "figures" / "claims.md").exists()


def test_the_workflow_registers_claims_md_as_a_report_item():
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    rule = (repo / "workflow" / "rules" / "figures.smk").read_text()
    assert 'report(f"{FIGURES_DIR}/claims.md", caption="../report/claims.rst"' in rule
    assert (repo / "workflow" / "report" / "claims.rst").read_text().strip()


def test_without_same_seed_vanilla_runs_the_rows_say_unpaired(tmp_path):
    exp = make_seeds_experiment(tmp_path, methods_seeds={"vanilla": (1,), "fomaml": (1, 2, 3)})
    data, d = _data_design(exp)
    rows = claims.claims_table(data, d)
    speed = rows[(rows["claim_id"] == "speedup") & (rows["unit"] == "step")].iloc[0]
    assert speed["n"] == 3 and "unpaired" in speed["baseline"] and "not same-replicate" in speed["note"]
    (ner_row,) = rows[rows["claim_id"] == "ner"].to_dict("records")
    assert ner_row["verdict"] == "inconclusive" and ner_row["test"] == "none"  # Welch needs two vanilla runs
    assert "1 of 3 meta runs have a same-replicate vanilla run" in claims.pairing_text(data, d)


def test_matched_readings_come_first_the_experiments_matched_unit_leading(seeds, monkeypatch):
    from metapretrain.figures import ner

    exp, _ = seeds
    data, d = _data_design(exp)
    rows = [{"panel": "micro", "method": "fomaml", "run_id": m, "baseline_run": v, "regime": "full",
             "scope": "cross_lingual", "entity": "micro", "meta_f1": 0.6, "vanilla_f1": 0.5, "delta_f1": 0.1,
             "n_pairs": 1, "reading": reading}
            for reading in ("final", "matched-step", "matched-flops") for m, v in zip(META, VAN, strict=True)]
    monkeypatch.setattr(ner, "delta_table", lambda data, d: pd.DataFrame(rows))
    assert data.compare["match"] == ["flops"]
    out = claims.ner_rows(data, d, 0.05)
    assert [r["unit"] for r in out] == ["matched-flops", "matched-step", "final"]
    assert all(r["verdict"] == "inconclusive" and "no spread" in r["note"] for r in out)  # equal ΔF1: no test
