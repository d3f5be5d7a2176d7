"""The claims report: does this experiment support the paper's three claims? `figures/claims.{md,json}`.

One row per claim the experiment can test, and one saying why for a claim it
cannot (no NER results, no dynamics peaks, no meta run with a baseline). The
paper's claims (arXiv 2508.02189, abstract v1/v2):

1. **Same loss sooner** ("up to 1.6× sooner"), per unit (steps, tokens,
   FLOPs), panel, meta method and baseline. Per (meta run, baseline) pair the
   equal-loss compute ratio r = baseline units / meta units to the same
   validation loss: `speedup_<u>` of `speedup.speedup_table` when the meta run
   reached the baseline's final loss, else `reverse_<u>` (the baseline's
   coordinate where it first reaches the meta run's final loss over the meta
   run's final coordinate). Over the pairs: the geometric mean of r with the
   exponentiated Student-t interval of mean log r, and the two-sided
   one-sample t-test of log r against 0 (over seed pairs this is the paired
   test). Claimed direction r > 1.
2. **NER ΔF1 under equal compute** ("F1 improves ... under equal compute"),
   per eval group, regime and reading, micro-F1, from `ner.delta_table`: one
   ΔF1 (meta − vanilla, averaged over the group's train × eval sets) per pair,
   paired t-test against 0 (Welch's test on the F1s when some pair is not
   same-replicate). A `reading` column (`matched-<unit>`: vanilla fine-tuned
   from its checkpoint matched to the meta run's final compute; `final`: both
   final checkpoints) gives one row per reading, matched readings first;
   without the column every row is `final`. Claimed direction ΔF1 > 0.
3. **Rise-and-fall** ("diversify then compress", in effective rank and
   attention-head entropy): per pair, the fraction of the meta run's
   (layer, component) curves of the metric that rise then fall
   (`is_rise_and_fall` in dynamics/peaks.csv, the dynamics stage's rule) minus
   the same fraction for its vanilla baseline; paired t-test against 0;
   claimed direction > 0. The paper describes the pattern in meta runs and
   does not say vanilla runs lack it, so the test asks "more than vanilla";
   descriptive rows give, per method, the fraction of runs showing it in at
   least one layer (no test).

The verdict rule (`verdict`, `rule_text`) is written at the top of claims.md
and into claims.json as `rule`.
"""

from __future__ import annotations

import json
import math

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design

SUPPORTED, CONTRADICTED, INCONCLUSIVE, DESCRIPTIVE = "supported", "contradicted", "inconclusive", "descriptive"
CLAIMS = {
    "speedup": "Same loss sooner",
    "ner": "NER ΔF1 under equal compute",
    "rise_and_fall": "Rise-and-fall (diversify then compress)",
}
PAPER = {
    "speedup": "paper: the same loss up to 1.6× sooner (1.3–1.6× across sizes in a summary; unit not stated)",
    "ner": "paper: better Universal NER F1 under equal compute (v2: +2–3 pp at medium/large)",
    "rise_and_fall": "paper: effective rank and head entropy rise then fall (v2: correlational)",
}
UNITS = (("step", "steps"), ("tokens", "tokens"), ("flops", "FLOPs"))
COLUMNS = ("claim_id", "claim", "panel", "method", "baseline", "baseline_runs", "run_ids", "unit", "scope",
           "statistic", "null", "claimed", "estimate", "ci_lo", "ci_hi", "n", "p", "test", "verdict", "note",
           "estimate_kind")
NO_TEST = "none"


# --------------------------------------------------------------------------- the verdict rule


def _sign(direction) -> int:
    if direction in (1, "+", ">", "greater", "higher"):
        return 1
    if direction in (-1, "-", "<", "less", "lower"):
        return -1
    raise ValueError(f"direction must be +1/'greater' or -1/'less', got {direction!r}")


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def verdict(estimate, null, p, n, direction, alpha: float = 0.05) -> str:
    """'supported' / 'contradicted' / 'inconclusive' for one row (rule_text says the rule in words)."""
    sign = _sign(direction)
    if not (_finite(estimate) and _finite(null) and _finite(p) and _finite(n)) or int(n) < 2 or float(p) >= alpha:
        return INCONCLUSIVE
    side = (float(estimate) - float(null)) * sign
    return SUPPORTED if side > 0 else CONTRADICTED if side < 0 else INCONCLUSIVE


def verdict_reason(estimate, null, p, n, direction, alpha: float = 0.05) -> str:
    """Why a row got its verdict, in a few words (the `note` of an inconclusive row)."""
    word = verdict(estimate, null, p, n, direction, alpha)
    if not _finite(estimate) or not _finite(n) or int(n) == 0:
        return "no data"
    if int(n) < 2:
        return "n = 1: one pair, no test"
    if not _finite(p):
        return "every pair gives the same value: no spread, no test"
    if float(p) >= alpha:
        return f"p = {stats.fmt_p(float(p))} ≥ alpha = {alpha:g}"
    if word == SUPPORTED:
        return f"p < {alpha:g}, estimate on the claimed side"
    if word == CONTRADICTED:
        return f"p < {alpha:g}, estimate on the opposite side to the claim"
    return "estimate equals the null"


def rule_text(alpha: float) -> str:
    level = 1 - alpha
    return (f"Verdict rule (alpha = {alpha:g}; every interval is {level:.0%} = 1 − alpha, Student t): a row is "
            f"**supported** when n ≥ 2, its two-sided test gives p < {alpha:g} and the estimate lies on the claimed "
            "side of the null (so the interval excludes the null on that side); **contradicted** when n ≥ 2, "
            f"p < {alpha:g} and the estimate lies on the other side; **inconclusive** otherwise (p ≥ alpha, n < 2, "
            "no spread to test, or no data; the note says which), including a claim this experiment cannot test. "
            "Rows marked **descriptive** report a frequency and carry no test. No correction for multiple "
            "comparisons is made: with many rows, some will pass p < alpha by chance.")


# --------------------------------------------------------------------------- rows


def _row(claim_id: str, **kw) -> dict:
    row = {c: "" for c in COLUMNS} | {"null": math.nan, "estimate": math.nan, "ci_lo": math.nan,
                                      "ci_hi": math.nan, "n": 0, "p": math.nan, "test": NO_TEST,
                                      "verdict": INCONCLUSIVE}
    row |= {"claim_id": claim_id, "claim": CLAIMS[claim_id]} | kw
    return row


def _untestable(claim_id: str, why: str, **kw) -> dict:
    return _row(claim_id, panel="–", method="–", baseline="–", note=f"not testable: {why}", **kw)


def _baseline_text(d: Design, meta_ids, base_ids) -> tuple[str, str]:
    labels = sorted({d.label.get(b, b) for b in base_ids})
    paired = all(d.paired.get(r, True) for r in meta_ids)
    how = (f"paired by {', '.join(d.replicate_axes)}" if d.replicate_axes else "one pair per meta run") if paired \
        else "unpaired (no same-replicate vanilla run)"
    return f"{', '.join(labels)} ({how})", "; ".join(sorted(set(base_ids)))


def _tested(row: dict, t: stats.Paired, null: float, direction: int, alpha: float, notes: list[str],
            transform=None) -> dict:
    """Fill estimate / interval / n / p / verdict / note from a test result (`transform`: e.g. exp)."""
    f = transform or (lambda x: x)
    est = f(t.mean_diff) if _finite(t.mean_diff) else math.nan
    lo = f(t.lo) if _finite(t.lo) else math.nan
    hi = f(t.hi) if _finite(t.hi) else math.nan
    word = verdict(est, null, t.p, t.n, direction, alpha)
    reason = verdict_reason(est, null, t.p, t.n, direction, alpha)
    name = row.pop("test_name", None) or t.test
    row |= {"null": null, "claimed": (">" if direction > 0 else "<") + f" {null:g}", "estimate": est, "ci_lo": lo,
            "ci_hi": hi, "n": int(t.n), "p": t.p, "test": name if t.n >= 2 and _finite(t.p) else NO_TEST,
            "verdict": word, "note": "; ".join([reason, *notes])}
    return row


def speedup_rows(data: ExperimentData, d: Design, alpha: float) -> list[dict]:
    from metapretrain.figures import speedup

    if not d.baseline:
        return [_untestable("speedup", "no meta run in the grid")]
    if not any(b is not None for b in d.baseline.values()):
        return [_untestable("speedup", "no meta run has a vanilla baseline")]
    table = speedup.speedup_table(data, d)
    if table.empty:
        return [_untestable("speedup", "no validation losses to compare")]
    meta = table[table["run_id"] != table["baseline_run"]].copy()
    meta["_base_label"] = [d.label.get(b, b) for b in meta["baseline_run"]]
    rows = []
    level = 1 - alpha
    for unit, title in UNITS:
        fwd, rev = f"speedup_{unit}", f"reverse_{unit}"
        for (panel, method), rids in d.cells(meta["run_id"]).items():
            cell = meta[meta["run_id"].isin(rids)]
            for _, g in cell.groupby("_base_label", sort=True):
                ratios, n_rev, n_none = [], 0, 0
                for rec in g.to_dict("records"):
                    reached = bool(rec.get("reached"))
                    r = rec.get(fwd, math.nan) if reached else rec.get(rev, math.nan)
                    if _finite(r) and float(r) > 0:
                        ratios.append(float(r))
                        n_rev += not reached
                    else:
                        n_none += 1
                t = stats.one_sample([math.log(r) for r in ratios], 0.0, level)
                notes = []
                if n_rev:
                    notes.append(f"{n_rev} of {len(g)} pair(s) by the reverse ratio (the meta run never reached the "
                                 "baseline's final loss)")
                if n_none:
                    notes.append(f"{n_none} pair(s) without a ratio left out (not reached and no finite {rev})")
                first = int(g["at_first_eval"].astype(bool).sum()) if "at_first_eval" in g else 0
                if first:
                    notes.append(f"{first} pair(s) below the target at their first evaluation: r is a lower bound")
                if not all(d.paired.get(r, True) for r in g["run_id"]):
                    notes.append("not same-replicate: pairs may share a vanilla run and are then not independent")
                base, base_ids = _baseline_text(d, g["run_id"], g["baseline_run"])
                row = _row("speedup", panel=panel, method=method, baseline=base, baseline_runs=base_ids,
                           run_ids="; ".join(g["run_id"]), unit=unit, scope="validation loss",
                           statistic=(f"geometric mean over pairs of r = baseline {title} / meta {title} to the same "
                                      "validation loss (the baseline's final loss; reverse ratio where the meta run "
                                      "never reaches it); t-test on log r vs 0"),
                           estimate_kind="ratio",
                           test_name="one-sample t-test on log r vs 0 over pairs, two-sided")
                rows.append(_tested(row, t, 1.0, 1, alpha, notes, transform=math.exp))
    return rows


READING_TITLES = {"final": "final checkpoints of both runs"}


def _reading_title(reading: str) -> str:
    if reading.startswith("matched-"):
        return f"vanilla at the meta run's final {reading[len('matched-'):]}"
    return READING_TITLES.get(reading, reading)


def ner_rows(data: ExperimentData, d: Design, alpha: float) -> list[dict]:
    from metapretrain.figures import ner

    if data.ner is None:
        return [_untestable("ner", "no ner/results.csv (fine-tuning disabled or not run)")]
    if not any(b is not None for b in d.baseline.values()):
        return [_untestable("ner", "no meta run has a vanilla baseline")]
    dt = ner.delta_table(data, d)
    if dt.empty or "entity" not in dt:
        return [_untestable("ner", "no meta run has a baseline with matching NER results")]
    dt = dt[(dt["entity"] == "micro") & dt["scope"].isin(ner.KINDS)].copy()
    if dt.empty:
        return [_untestable("ner", "no micro-F1 rows in any eval group")]
    if "reading" not in dt:
        dt["reading"] = "final"
    dt["reading"] = dt["reading"].fillna("final").astype(str)
    dt["_base_label"] = [d.label.get(b, b) for b in dt["baseline_run"]]
    match = [f"matched-{u}" for u in data.compare.get("match") or []]  # the experiment's own matched units first
    readings = sorted(set(dt["reading"]), key=lambda r: (not r.startswith("matched"), r not in match,
                                                         match.index(r) if r in match else 0, r == "final", r))
    regimes = sorted(set(dt["regime"]), key=lambda r: (r != "head", r))
    level = 1 - alpha
    rows = []
    for reading in readings:
        rd = dt[dt["reading"] == reading]
        for (panel, method), rids in d.cells(rd["run_id"]).items():
            cell = rd[rd["run_id"].isin(rids)]
            for _, gb in cell.groupby("_base_label", sort=True):
                for regime in regimes:
                    for scope in ner.KINDS:
                        g = gb[(gb["regime"] == regime) & (gb["scope"] == scope)]
                        if g.empty:
                            continue
                        is_paired = all(d.paired.get(r, True) for r in g["run_id"])
                        if is_paired:
                            t = stats.one_sample(g["delta_f1"], 0.0, level)
                            test = "paired t-test over pairs (ΔF1 vs 0), two-sided"
                        else:
                            t = stats.unpaired(g["meta_f1"], g.drop_duplicates("baseline_run")["vanilla_f1"], level)
                            test = stats.UNPAIRED_TEST
                        notes = []
                        if reading == "final":
                            notes.append("final checkpoints: equal steps, not necessarily equal compute")
                        base, base_ids = _baseline_text(d, g["run_id"], g["baseline_run"])
                        row = _row("ner", panel=panel, method=method, baseline=base, baseline_runs=base_ids,
                                   run_ids="; ".join(g["run_id"]), unit=reading,
                                   scope=f"{regime} fine-tuning, {ner.KIND_TITLES[scope]} eval sets",
                                   statistic=(f"mean over pairs of ΔF1 = meta − vanilla micro-F1 ({_reading_title(reading)}), "
                                              "each pair's ΔF1 averaged over the group's train × eval sets"),
                                   estimate_kind="delta_f1", test_name=test)
                        rows.append(_tested(row, t, 0.0, 1, alpha, notes))
    return rows


_FAMILIES = (("effective rank", "effective_rank"), ("head entropy", "head_entropy"))


def _family(metric: str) -> str | None:
    from metapretrain.figures import dynamics

    if dynamics.is_per(metric) or metric.startswith("effective_rank") or metric == "er":
        return "effective rank"
    if dynamics.is_entropy(metric) or "entropy" in metric:
        return "head entropy"
    return None


def _rise_fall(v) -> bool:
    return str(v).lower() in ("true", "1", "1.0", "yes")


OPPOSITE = "fall-then-rise (opposite of the paper's shape)"  # unit suffix of the fall-and-rise rows
RF_WORDS, FR_WORDS = ("rise then fall", "rises then falls"), ("fall then rise", "falls then rises")


def dynamics_rows(data: ExperimentData, d: Design, alpha: float) -> list[dict]:
    """Rise-and-fall rows (the claim), and beside them the same statistics for the opposite shape,
    fall-then-rise (`is_fall_and_rise`): marked descriptive, so they never count as a verdict on the claim."""
    if data.peaks is None:
        why = ("no dynamics/peaks.csv (dynamics disabled or not run)" if data.dynamics is None
               else "no dynamics/peaks.csv next to dynamics.csv (rerun the dynamics stage)")
        return [_untestable("rise_and_fall", why, unit=f) for f, _ in _FAMILIES]
    p = data.peaks[data.peaks["run_id"].isin(d.panel)].copy()
    p["metric"] = p["metric"].astype(str)
    p["_family"] = [_family(m) for m in p["metric"]]
    p["_layer"] = ["" if not _finite(x) else str(int(float(x))) for x in p["layer"]]
    p["_rf"] = [_rise_fall(v) for v in p.get("is_rise_and_fall", [False] * len(p))]
    has_fr = "is_fall_and_rise" in p.columns
    p["_fr"] = [_rise_fall(v) for v in p["is_fall_and_rise"]] if has_fr else False
    level = 1 - alpha
    rows = []
    for family, _ in _FAMILIES:
        fam = p[p["_family"] == family]
        if fam.empty:
            rows.append(_untestable("rise_and_fall", f"no {family} metric in peaks.csv (has "
                                    f"{sorted(set(p['metric']))})", unit=family))
            continue
        for metric in sorted(set(fam["metric"])):
            m = fam[fam["metric"] == metric]
            if (m["_layer"] != "").any():
                m = m[m["_layer"] != ""]
            unit = f"{family} ({metric})"
            rows += _shape_rows(d, m, "_rf", unit, metric, RF_WORDS, "is_rise_and_fall", level, alpha, opposite=False)
            if has_fr:
                rows += _shape_rows(d, m, "_fr", f"{unit} · {OPPOSITE}", metric, FR_WORDS, "is_fall_and_rise", level,
                                    alpha, opposite=True)
            else:
                why = ("peaks.csv has no is_fall_and_rise column (written before troughs were detected; rerun the "
                       "dynamics stage)")
                rows.append(_untestable("rise_and_fall", why, unit=f"{unit} · {OPPOSITE}"))
    return rows


def _shape_rows(d: Design, m, col: str, unit: str, metric: str, what: tuple[str, str], flag: str, level: float,
                alpha: float, opposite: bool) -> list[dict]:
    """The paired Δ-fraction test and the per-method descriptive rows for one shape (`col`: per-curve flag;
    `what`: the shape as 'curves that …' and 'a curve …')."""
    rows = []
    frac = m.groupby("run_id")[col].mean().to_dict()
    anyrf = m.groupby("run_id")[col].any().to_dict()
    curves = m.groupby("run_id").size().to_dict()
    pairs = [(r, b) for r, b in d.baseline.items() if b is not None and r in frac and b in frac]
    if not pairs:
        rows.append(_untestable("rise_and_fall", f"no meta run with a vanilla baseline has {metric} peaks",
                                unit=unit))
    for (panel, method), rids in d.cells([r for r, _ in pairs]).items():
        g = [(r, d.baseline[r]) for r in rids]
        deltas = [frac[r] - frac[b] for r, b in g]
        t = stats.one_sample(deltas, 0.0, level)
        base, base_ids = _baseline_text(d, rids, [b for _, b in g])
        n_curves = sorted({curves[r] for r, _ in g})
        notes = [f"meta {sum(frac[r] for r, _ in g) / len(g):.0%} vs vanilla "
                 f"{sum(frac[b] for _, b in g) / len(g):.0%} of curves {what[0]} "
                 f"({'/'.join(map(str, n_curves))} curves per run)"]
        row = _row("rise_and_fall", panel=panel, method=method, baseline=base, baseline_runs=base_ids,
                   run_ids="; ".join(rids), unit=unit, scope="per (layer, component) curve",
                   statistic=(f"mean over pairs of (fraction of the meta run's {metric} curves that {what[0]}) "
                              f"− (the same fraction for its vanilla baseline); peaks.csv {flag}"),
                   estimate_kind="delta_fraction", test_name="paired t-test over pairs (Δ fraction vs 0), "
                                                             "two-sided")
        row = _tested(row, t, 0.0, 1, alpha, notes)
        if opposite:  # the same numbers, no verdict: this shape is not the paper's claim
            row["note"] = "; ".join([f"opposite of the paper's shape, no verdict on the claim: meta − vanilla "
                                     f"{fmt_estimate('delta_fraction', row['estimate'])}, p = {stats.fmt_p(row['p'])}",
                                     *notes])
            row["verdict"] = DESCRIPTIVE
        rows.append(row)
    for (panel, method), rids in d.cells(list(frac)).items():
        k = sum(bool(anyrf[r]) for r in rids)
        mean_frac = sum(frac[r] for r in rids) / len(rids)
        rows.append(_row("rise_and_fall", panel=panel, method=method, baseline="–", run_ids="; ".join(rids),
                         unit=unit, scope="per run", estimate=k / len(rids), n=len(rids),
                         statistic=f"fraction of runs (seeds) in which at least one {metric} curve {what[1]}",
                         verdict=DESCRIPTIVE, estimate_kind="fraction",
                         note=f"{k} of {len(rids)} runs; mean {mean_frac:.0%} of curves per run"))
    return rows


def claims_table(data: ExperimentData, d: Design | None):
    """Every claim row (COLUMNS) as a DataFrame; a claim that cannot be tested gets one row saying why."""
    import pandas as pd

    alpha = float(data.compare.get("alpha", 0.05))
    if d is None or not data.runs:
        rows = [_untestable(c, "no finished run in the experiment") for c in CLAIMS]
    else:
        rows = []
        for fn in (speedup_rows, ner_rows, dynamics_rows):
            rows += fn(data, d, alpha)
    return pd.DataFrame(rows, columns=list(COLUMNS))


# --------------------------------------------------------------------------- the report


def fmt_estimate(kind: str, v) -> str:
    if not _finite(v):
        return "–"
    v = float(v)
    return {"ratio": f"{v:.2f}×", "delta_f1": f"{v:+.3f}", "delta_fraction": f"{v:+.2f}",
            "fraction": f"{v:.0%}"}.get(kind, f"{v:.3g}")


def _interval(row) -> str:
    if not (_finite(row["ci_lo"]) and _finite(row["ci_hi"])):
        return "–"
    k = row["estimate_kind"]
    return f"[{fmt_estimate(k, row['ci_lo'])}, {fmt_estimate(k, row['ci_hi'])}]"


def pairing_text(data: ExperimentData, d: Design | None) -> str:
    if d is None:
        return "no runs, no pairing"
    bt = getattr(d, "baseline_text", None)
    if callable(bt):
        base = str(bt())
    elif getattr(d, "baselines", None):
        base = f"baselines {d.baselines}"
    else:
        base = ("each meta run against the vanilla run with the same facet-axis values "
                "(metapretrain.figures.pairing)")
    metas = [r for r, b in d.baseline.items() if b is not None]
    n_paired = sum(bool(d.paired.get(r)) for r in metas)
    if d.replicate_axes:
        text = (f"{base}; paired by replicate axes {', '.join(d.replicate_axes)}: {n_paired} of {len(metas)} meta "
                "runs have a same-replicate vanilla run"
                + (" (the others are compared unpaired)" if n_paired < len(metas) else ""))
    else:
        text = f"{base}; no replicate axes: one pair per meta run, {len(metas)} pairs"
    declared = data.compare.get("baselines") or {}
    if declared:
        text += "; declared baselines (compare.baselines): " + json.dumps(declared, sort_keys=True)
    if data.compare.get("match"):
        text += "; matched units (compare.match): " + ", ".join(data.compare["match"])
    without = [r for r, b in d.baseline.items() if b is None]
    if without:
        text += f"; {len(without)} meta run(s) without a baseline: {', '.join(sorted(without))}"
    return text


def _short(r) -> str:
    what = f"{r['method']} on {r['panel']}, {r['unit']}" + (f", {r['scope']}" if r["claim_id"] == "ner" else "")
    est = fmt_estimate(r["estimate_kind"], r["estimate"])
    ci = _interval(r)
    return f"{what}: {est}" + (f" {ci}, p = {stats.fmt_p(r['p'])}" if ci != "–" else "")


def reading_line(claim_id: str, rows) -> str:
    """One sentence per claim: verdict counts, the range of estimates, every row that passed the test (never
    just the best one), and what could not be tested."""
    sub = rows[rows["claim_id"] == claim_id]
    title = CLAIMS[claim_id]
    untestable = sub["note"].astype(str).str.startswith("not testable")
    tested = sub[(sub["verdict"] != DESCRIPTIVE) & ~untestable]
    if tested.empty:
        why = "; ".join(sorted(set(sub.loc[untestable, "note"]))) or "no rows"
        return f"**{title}**: not tested here ({why}). {PAPER[claim_id]}."
    counts = {w: int((tested["verdict"] == w).sum()) for w in (SUPPORTED, CONTRADICTED, INCONCLUSIVE)}
    parts = [f"{counts[w]} {w}" for w in (SUPPORTED, CONTRADICTED, INCONCLUSIVE) if counts[w]]
    ns = sorted({int(n) for n in tested["n"]})
    line = f"**{title}**: {', '.join(parts)} of {len(tested)} rows (n = {'/'.join(map(str, ns))} pairs per row)"
    finite = tested[[_finite(e) for e in tested["estimate"]]]
    if len(finite):
        kind = finite["estimate_kind"].iloc[0]
        lo, hi = fmt_estimate(kind, finite["estimate"].min()), fmt_estimate(kind, finite["estimate"].max())
        line += f"; estimate {lo}" if lo == hi else f"; estimates from {lo} to {hi}"
    for word in (SUPPORTED, CONTRADICTED):
        hit = tested[tested["verdict"] == word]
        if len(hit):
            shown = "; ".join(_short(r) for r in hit.head(3).to_dict("records"))
            line += f"; {word}: {shown}" + (f"; and {len(hit) - 3} more" if len(hit) > 3 else "")
    if max(ns) == 0:
        line += "; no row has a value (see the notes)"
    elif max(ns) < 2:
        line += "; at most one pair per row, so nothing can be concluded across seeds"
    if claim_id == "ner" and not tested["unit"].astype(str).str.startswith("matched").any():
        line += "; final checkpoints only, so not a compute-matched comparison"
    desc = sub[sub["verdict"] == DESCRIPTIVE]
    if len(desc):
        line += "; runs showing it in at least one curve: " + ", ".join(
            f"{r['method']} on {r['panel']} ({r['unit']}) {r['note'].split(';')[0]}" for r in desc.to_dict("records"))
    if untestable.any():
        line += "; " + "; ".join(sorted(set(sub.loc[untestable, "unit"].astype(str) + ": "
                                            + sub.loc[untestable, "note"].astype(str))))
    return line + f". {PAPER[claim_id]}."


def _md_cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(data: ExperimentData, d: Design | None, rows) -> str:
    alpha = float(data.compare.get("alpha", 0.05))
    about = f" ({data.description})" if data.description else ""
    lines = [f"# Claims: experiment `{data.name}`{about}", "",
             "Does this experiment support the paper's claims? One row per claim it can test "
             "(metapretrain.figures.claims explains each statistic).", "",
             rule_text(alpha), "", f"- alpha: {alpha:g} (interval level {1 - alpha:.0%})",
             f"- experiment: `{data.name}`", f"- pairing: {pairing_text(data, d)}", "", "## Reading", ""]
    lines += [f"- {reading_line(c, rows)}" for c in CLAIMS]
    lines += ["", "## Rows", ""]
    cols = ["claim", "panel", "method", "baseline", "unit / reading", "scope", "statistic", "estimate",
            f"{1 - alpha:.0%} CI", "n", "p", "test", "verdict", "note"]
    lines += ["| " + " | ".join(cols) + " |", "|" + "|".join(":---" for _ in cols) + "|"]
    for r in rows.to_dict("records"):
        # Seed-paired baselines are named by label (their run ids are in claims.json); others with their ids.
        ids = r["baseline_runs"] and "(paired by" not in r["baseline"]
        vals = [r["claim"], r["panel"], r["method"], r["baseline"] + (f" [{r['baseline_runs']}]" if ids else ""),
                r["unit"], r["scope"], r["statistic"], fmt_estimate(r["estimate_kind"], r["estimate"]),
                _interval(r), int(r["n"]), stats.fmt_p(r["p"]), r["test"], f"**{r['verdict']}**", r["note"]]
        lines.append("| " + " | ".join(_md_cell(v) for v in vals) + " |")
    lines += ["", "Run ids of each row are in claims.json (`run_ids`, `baseline_runs`)."]
    return "\n".join(lines) + "\n"


def _json_value(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if hasattr(v, "item"):  # numpy scalars
        return _json_value(v.item())
    return v


def to_json(data: ExperimentData, d: Design | None, rows) -> dict:
    alpha = float(data.compare.get("alpha", 0.05))
    return {"experiment": data.name, "alpha": alpha, "level": 1 - alpha, "rule": rule_text(alpha).replace("**", ""),
            "pairing": pairing_text(data, d), "columns": list(COLUMNS),
            "readings": {c: reading_line(c, rows).replace("**", "") for c in CLAIMS},
            "rows": [{k: _json_value(v) for k, v in r.items()} for r in rows.to_dict("records")]}


def _inputs(data: ExperimentData) -> list[str]:
    from metapretrain import paths

    found = ["grid.yaml"] if (data.exp_dir / "grid.yaml").exists() else []
    for run in data.runs:
        for rel in (paths.metrics_file(run.run_dir), run.run_dir / "dynamics" / "peaks.csv"):
            if rel.exists():
                found.append(str(rel.relative_to(data.exp_dir)))
    if (data.exp_dir / "ner" / "results.csv").exists():
        found.append("ner/results.csv")
    return found


CAPTION = ("The paper's claims tested on this experiment: per claim, panel, method and baseline, the statistic, its "
           "estimate with a 1 − alpha interval, n pairs, the two-sided p-value and the verdict (rule at the top).")


def render(data: ExperimentData, d: Design | None, out: Outputs) -> None:
    rows = claims_table(data, d)
    inputs = _inputs(data)
    out.report_file("claims.md", to_markdown(data, d, rows), CAPTION, inputs)
    out.report_file("claims.json", json.dumps(to_json(data, d, rows), indent=2, ensure_ascii=False) + "\n",
                    CAPTION + " Machine-readable (columns, rule, readings, rows).", inputs)


def render_failure(data: ExperimentData, out: Outputs, exc: BaseException) -> None:
    """claims.md / claims.json saying the claims report failed (so the workflow's declared outputs exist)."""
    alpha = float(data.compare.get("alpha", 0.05))
    why = f"{type(exc).__name__}: {exc}"
    text = (f"# Claims: experiment `{data.name}`\n\n{rule_text(alpha)}\n\n"
            f"The claims report failed ({_md_cell(why)}); see the figures log. No claim was evaluated.\n")
    doc = {"experiment": data.name, "alpha": alpha, "level": 1 - alpha, "rule": rule_text(alpha).replace("**", ""),
           "columns": list(COLUMNS), "rows": [], "error": why}
    inputs = _inputs(data)
    out.entries[:] = [e for e in out.entries if e["file"] not in ("claims.md", "claims.json")]
    out.report_file("claims.md", text, CAPTION + " (failed)", inputs)
    out.report_file("claims.json", json.dumps(doc, indent=2) + "\n", CAPTION + " (failed)", inputs)
