"""Fine-tuning speed (the companion paper's Table 2): t90, area under the loss curve, initial slope.

Read per finished fine-tune (`finetune/<train set>~<regime>/done.json`, reading `final` only) from
`curve.csv` (`finetune.log_every`: the train loss averaged over each interval of optimizer steps and
the dev micro-F1 at its end), else from `history.csv` (one point per epoch, at the epoch's last
optimizer step = epoch × ceil(train sentences / batch size), the train sentences from done.json's
data report and the cap `finetune.max_train_sentences`; when that cannot be read, the x axis is the
epoch and the row says so).

Measures on the points (x = optimizer step, L = train loss, F = dev micro-F1):

* **t90** (the companion's `finetuning_ld.py`): the first logged step with L ≤ L0 − 0.9 (L0 − L_final),
  L0 and L_final the first and last logged losses;
* **t90_f1**: the first logged step with F ≥ 0.9 × the best logged F (the best, not the final, since
  early stopping restores the best epoch); NaN without dev F1 or when the best is 0;
* **AUC**: the trapezoidal area under L over x divided by the span x_last − x_first (the mean loss
  over the span; the loss itself for a single point);
* **slope**: the least-squares slope of L against x over the points with x ≤ x_first + 0.1 (x_last − x_first)
  (the first 10% of steps), at least the first two points; NaN with fewer than two points.

Over replicates: each measure's mean and 95% Student-t interval per cell (panel, method), regime and
train set, and ΔX = meta − vanilla per pair (the pairing rule, `pairing`) with the paired t-test (Welch's
test when some pair is not same-replicate), as `ner.delta_tests`; with several train sets also their mean
per run (`train_set` = `mean`), each train set weighing the same. Figures: the train-loss curves of
every cell, mean and 95% band over its replicates, per panel and regime, one subplot per train set.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from metapretrain import paths
from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs, safe_name
from metapretrain.figures.pairing import Design

GROUP = "finetune_speed"
MEASURES = ("t90", "t90_f1", "auc", "slope")
MEASURE_TEXT = {
    "t90": "t90: first logged step with train loss ≤ L0 − 0.9 (L0 − L_final) (L0, L_final: first and last logged "
           "train loss; the companion's definition)",
    "t90_f1": "t90_f1: first logged step with dev micro-F1 ≥ 0.9 × its best logged value",
    "auc": "AUC: trapezoidal area under the train-loss curve over optimizer steps divided by the step span "
           "(last − first logged step)",
    "slope": "slope: least-squares slope of the train loss against the optimizer step over the first 10% of "
             "the step span (at least the first two points)",
}
INITIAL_FRACTION = 0.1


# --- the measures ------------------------------------------------------------------------------------------

def _finite_pairs(x, y) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for a, b in zip(x, y, strict=True):
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            continue
        if math.isfinite(fa) and math.isfinite(fb):
            xs.append(fa)
            ys.append(fb)
    order = sorted(range(len(xs)), key=lambda i: xs[i])
    return [xs[i] for i in order], [ys[i] for i in order]


def t90_loss(steps, losses) -> float:
    """First step with loss ≤ L0 − 0.9 (L0 − L_final); NaN without points."""
    x, y = _finite_pairs(steps, losses)
    if not x:
        return math.nan
    target = y[0] - 0.9 * (y[0] - y[-1])
    return next(s for s, v in zip(x, y, strict=True) if v <= target + 1e-12 * max(1.0, abs(target)))


def t90_f1(steps, f1s) -> float:
    """First step with dev F1 ≥ 0.9 × its best; NaN without dev F1 or when the best is not positive."""
    x, y = _finite_pairs(steps, f1s)
    if not x or max(y) <= 0:
        return math.nan
    target = 0.9 * max(y)
    return next(s for s, v in zip(x, y, strict=True) if v >= target - 1e-12)


def auc(steps, losses) -> float:
    """Trapezoidal area under the loss over the steps divided by the span (the loss itself for one point)."""
    x, y = _finite_pairs(steps, losses)
    if not x:
        return math.nan
    span = x[-1] - x[0]
    if span <= 0:
        return sum(y) / len(y)
    area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
    return area / span


def initial_slope(steps, losses, fraction: float = INITIAL_FRACTION) -> float:
    """Least-squares slope of the loss over the points in the first `fraction` of the span (≥ 2 points)."""
    x, y = _finite_pairs(steps, losses)
    if len(x) < 2:
        return math.nan
    edge = x[0] + fraction * (x[-1] - x[0])
    n = max(2, sum(1 for s in x if s <= edge + 1e-9))
    xs, ys = x[:n], y[:n]
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((a - mx) ** 2 for a in xs)
    if sxx == 0:
        return math.nan
    return sum((a - mx) * (b - my) for a, b in zip(xs, ys, strict=True)) / sxx


def measures(steps, losses, f1s=None) -> dict[str, float]:
    """t90, t90_f1, auc and slope of one fine-tuning curve (module docstring)."""
    return {"t90": t90_loss(steps, losses), "t90_f1": t90_f1(steps, f1s) if f1s is not None else math.nan,
            "auc": auc(steps, losses), "slope": initial_slope(steps, losses)}


# --- reading the curves ------------------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(io.StringIO(fh.read())))


def _num(v) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _steps_per_epoch(done: dict, cfg: dict) -> float:
    """Optimizer steps of one epoch: ceil(train sentences / batch size), from done.json and the run config."""
    ft = cfg.get("finetune") or {}
    batch = ft.get("batch_size")
    sources = [done.get("train_set")] if done.get("train_set") not in (None, "all") else None
    report = done.get("data") or {}
    n = sum(int(v.get("sentences", 0)) for k, v in report.items() if k.endswith("/train")
            and (sources is None or k.split("/", 1)[0] in sources))
    cap = ft.get("max_train_sentences")
    if cap:
        n = min(n, int(cap))
    if not batch or n <= 0:
        return math.nan
    return float(math.ceil(n / int(batch)))


def curves(data: ExperimentData) -> tuple[list[dict], list[str]]:
    """One entry per finished final-reading fine-tune: run_id, train_set, regime, source, unit, step, loss, f1
    lists; and the files read (relative to the experiment)."""
    out, inputs = [], []
    for r in data.runs:
        for ddir in sorted((r.run_dir / "finetune").glob("*~*")):
            parts = ddir.name.split("~")
            if len(parts) != 2 or not paths.done_file(ddir).is_file():  # matched readings have a third part
                continue
            train_set, regime = parts
            try:
                done = json.loads(paths.done_file(ddir).read_text(encoding="utf-8"))
            except (OSError, ValueError):
                done = {}
            entry = {"run_id": r.run_id, "train_set": train_set, "regime": regime}
            if (ddir / "curve.csv").is_file():
                rows = _read_rows(ddir / "curve.csv")
                entry |= {"source": "curve.csv", "unit": "step", "step": [_num(x.get("step")) for x in rows],
                          "loss": [_num(x.get("train_loss")) for x in rows],
                          "f1": [_num(x.get("dev_micro_f1")) for x in rows]}
                inputs.append(r.rel(data.exp_dir, "finetune", ddir.name, "curve.csv"))
            elif (ddir / "history.csv").is_file():
                rows = _read_rows(ddir / "history.csv")
                per = _steps_per_epoch(done, r.config)
                epochs = [_num(x.get("epoch")) for x in rows]
                entry |= {"source": "history.csv", "unit": "step" if per == per else "epoch",
                          "step": [e * per if per == per else e for e in epochs],
                          "loss": [_num(x.get("train_loss")) for x in rows],
                          "f1": [_num(x.get("dev_micro_f1")) for x in rows]}
                inputs.append(r.rel(data.exp_dir, "finetune", ddir.name, "history.csv"))
            else:
                continue
            if any(v == v for v in entry["loss"]):
                out.append(entry)
    return out, inputs


def speed_table(entries: list[dict], d: Design):
    """One row per fine-tune: panel, method, run_id, train_set, regime, source, unit, points, steps, measures."""
    import pandas as pd

    rows = []
    for e in entries:
        if e["run_id"] not in d.panel:
            continue
        m = measures(e["step"], e["loss"], e["f1"])
        steps = [s for s in e["step"] if s == s]
        rows.append({"panel": d.panel[e["run_id"]], "method": d.label[e["run_id"]], "run_id": e["run_id"],
                     "train_set": e["train_set"], "regime": e["regime"], "source": e["source"], "unit": e["unit"],
                     "points": len(steps), "steps": max(steps) if steps else math.nan, **m})
    return pd.DataFrame(rows)


def _with_means(table):
    """The table plus, for runs with several train sets, a `mean` row per run and regime (each set weighs the same)."""
    import pandas as pd

    if table.empty or table["train_set"].nunique() < 2:
        return table
    extra = []
    for _, g in table.groupby(["run_id", "regime"], sort=False):
        row = g.iloc[0].to_dict() | {"train_set": "mean", "points": int(g["points"].sum()),
                                     "steps": g["steps"].mean(), "source": "; ".join(sorted(set(g["source"])))}
        row |= {m: stats.summary(g[m]).mean for m in MEASURES}
        row["n_train_sets"] = len(g)
        extra.append(row)
    return pd.concat([table, pd.DataFrame(extra)], ignore_index=True)


def delta_tests(table, d: Design):
    """Per meta cell, baseline, regime, train set and measure: meta and vanilla mean ± 95% CI over seeds, and the
    paired Δ = meta − vanilla with its 95% CI and p (Welch's test when some pair is not same-replicate)."""
    import pandas as pd

    from metapretrain.figures.ner import baselines_of

    if table.empty:
        return pd.DataFrame()
    t = _with_means(table)
    key = ["run_id", "train_set", "regime"]
    indexed = t.set_index(key)
    pairs = []
    for rid, bases in baselines_of(d).items():
        mine = t[t["run_id"] == rid]
        for base in bases:
            for _, row in mine.iterrows():
                k = (base, row["train_set"], row["regime"])
                if k not in indexed.index:
                    continue
                b = indexed.loc[[k]].iloc[0]
                pairs.append({"panel": d.panel[rid], "method": d.label[rid], "baseline": d.label[base],
                              "run_id": rid, "baseline_run": base, "train_set": row["train_set"],
                              "regime": row["regime"], "paired": d.paired.get(rid, True),
                              "source": "; ".join(sorted({row["source"], b["source"]})),
                              **{f"{m}_meta": row[m] for m in MEASURES},
                              **{f"{m}_vanilla": b[m] for m in MEASURES}})
    if not pairs:
        return pd.DataFrame()
    p = pd.DataFrame(pairs)
    rows = []
    for (panel, method, baseline, regime, train_set), g in p.groupby(
            ["panel", "method", "baseline", "regime", "train_set"], sort=False):
        is_paired = bool(g["paired"].all())
        for m in MEASURES:
            meta = stats.summary(g[f"{m}_meta"])
            van_vals = g.drop_duplicates("baseline_run")[f"{m}_vanilla"]
            van = stats.summary(van_vals)
            test = (stats.paired(g[f"{m}_meta"], g[f"{m}_vanilla"]) if is_paired
                    else stats.unpaired(g[f"{m}_meta"], van_vals))
            rows.append({"panel": panel, "method": method, "baseline": baseline, "regime": regime,
                         "train_set": train_set, "measure": m, "n": test.n,
                         "meta": meta.mean, "meta_lo": meta.lo, "meta_hi": meta.hi, "meta_n": meta.n,
                         "vanilla": van.mean, "vanilla_lo": van.lo, "vanilla_hi": van.hi, "vanilla_n": van.n,
                         "delta": test.mean_diff, "delta_lo": test.lo, "delta_hi": test.hi, "p": test.p,
                         "paired": is_paired, "test": test.test if test.n >= 2 else "none (n = 1)",
                         "run_ids": "; ".join(g["run_id"]), "source": "; ".join(sorted(set(g["source"])))})
    out = pd.DataFrame(rows)
    order = {pn: i for i, pn in enumerate(d.panels())}
    out["_o"] = [(order.get(pn, 0), me, b, r != "head", r, ts == "mean", ts, MEASURES.index(ms)) for pn, me, b, r, ts, ms
                 in zip(out["panel"], out["method"], out["baseline"], out["regime"], out["train_set"],
                        out["measure"], strict=True)]
    return out.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)


def _spec(measure: str) -> str:
    return {"t90": "{:.1f}", "t90_f1": "{:.1f}", "auc": "{:.4f}", "slope": "{:.2e}"}[measure]


def _shown(tests):
    shown = tests[["panel", "method", "baseline", "regime", "train_set", "measure", "n"]].copy()
    for col in ("meta", "vanilla", "delta"):
        shown[f"{col} [95% CI]"] = [
            stats.fmt_interval(v, lo, hi, n, ("{:+" + _spec(m)[2:]) if col == "delta" else _spec(m))
            for v, lo, hi, n, m in zip(tests[col], tests[f"{col}_lo"], tests[f"{col}_hi"],
                                       tests["n"] if col == "delta" else tests[f"{col}_n"], tests["measure"],
                                       strict=True)]
    shown["p"] = [stats.fmt_p(p) for p in tests["p"]]
    shown["test"] = tests["test"]
    shown["run_ids"] = tests["run_ids"]
    shown["source"] = tests["source"]
    return shown


def _fresh_group(out: Outputs, group: str) -> None:
    """This module's figure folder, emptied (as Outputs.prepare does for its groups): no stale figure stays."""
    folder = out.root / group
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()


def _source_text(table) -> str:
    sources = set(table["source"])
    if sources == {"curve.csv"}:
        return "Every point from curve.csv (finetune.log_every: train loss averaged over each interval of steps)"
    n_hist = int((table["source"] == "history.csv").sum())
    text = (f"{n_hist} of {len(table)} fine-tune(s) have no curve.csv (finetune.log_every unset) and fall back to "
            "history.csv: one point per epoch (the epoch's mean train loss at its last optimizer step), so their "
            "measures are as coarse as an epoch")
    if (table["unit"] == "epoch").any():
        text += "; where steps per epoch could not be read the x axis is the epoch (column unit)"
    return text


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    _fresh_group(out, GROUP)
    entries, inputs = curves(data)
    if not entries:
        data.skip("fine-tuning speed: no finished final-reading fine-tune with curve.csv or history.csv")
        return
    table = speed_table(entries, d)
    if table.empty:
        data.skip("fine-tuning speed: no fine-tune of a run in the grid")
        return
    defs = "; ".join(MEASURE_TEXT[m] for m in MEASURES)
    source = _source_text(table)
    out.table(table, "finetune_speed",
              f"Fine-tuning speed per fine-tune (reading final: each run's final checkpoint). {defs}. "
              f"Steps are optimizer steps of the fine-tune. {source}.", inputs,
              formats={"t90": "{:.1f}", "t90_f1": "{:.1f}", "auc": "{:.4f}", "slope": "{:.2e}"})
    tests = delta_tests(table, d)
    if tests.empty:
        data.skip("fine-tuning speed Δ: no meta run has a vanilla baseline with the same fine-tune")
    else:
        pairing = d.baseline_text()
        test_names = sorted({stats.PAIRED_TEST if p else stats.UNPAIRED_TEST for p in tests["paired"]})
        ns = "/".join(map(str, sorted(set(tests["n"]))))
        caption = (f"Fine-tuning speed, Δ = meta − vanilla (the companion's Table 2), per {d.panel_title()}, "
                   f"method vs baseline, regime and train set (reading final; train_set mean: each run's mean over "
                   f"its train sets, each weighing the same): each measure's mean and {stats.T_INTERVAL} for meta "
                   f"and vanilla, and the mean Δ over pairs with its 95% CI and the p-value of the "
                   f"{' / '.join(test_names)} (n pairs = {ns}; no interval and no test for n = 1). {defs}. {pairing}. "
                   f"{source}.")
        out.table(tests, "finetune_speed_tests", caption, inputs, display=_shown(tests),
                  latex_drop=("source", "run_ids"))
    _curve_figures(entries, table, d, out, inputs, source)


def _curve_figures(entries, table, d: Design, out: Outputs, inputs: list[str], source: str) -> None:
    import numpy as np

    from metapretrain.figures import style
    from metapretrain.figures.loss import replicate_band

    by_key = {(e["run_id"], e["train_set"], e["regime"]): e for e in entries}
    colors = style.method_colors(d.methods())
    dashes = style.method_linestyles(d.methods())
    for panel in d.panels():
        sub = table[table["panel"] == panel]
        for regime in sorted(sub["regime"].unique(), key=lambda r: (r != "head", r)):
            rs = sub[sub["regime"] == regime]
            sets = sorted(rs["train_set"].unique(), key=lambda s: (s == "all", s))
            fig, axes = style.subplots(len(sets), max_cols=3, w=3.4, h=2.6)
            ns = set()
            for ax, ts in zip(axes, sets, strict=True):
                cells = d.cells(rs.loc[rs["train_set"] == ts, "run_id"])
                units = set()
                for (_, method), rids in cells.items():
                    series = []
                    for rid in rids:
                        e = by_key[(rid, ts, regime)]
                        x, y = (np.asarray(v, dtype=float) for v in (e["step"], e["loss"]))
                        ok = np.isfinite(x) & np.isfinite(y)
                        if ok.any():
                            series.append((x[ok], y[ok]))
                            units.add(e["unit"])
                    if not series:
                        continue
                    ns.add(len(series))
                    kw = {"color": colors[method], "ls": dashes[method], "lw": 1.2}
                    if len(series) == 1:
                        ax.plot(*series[0], label=method, **kw)
                    else:
                        x, mean, lo, hi = replicate_band(series)
                        ax.plot(x, mean, label=f"{method}, mean of {len(series)}", **kw)
                        ax.fill_between(x, lo, hi, color=colors[method], alpha=0.18, lw=0)
                ax.set_title(f"{panel} · {regime} · {ts}")
                ax.set_xlabel("fine-tuning step" if units <= {"step"} else "fine-tuning epoch")
                ax.set_ylabel("train loss")
            fig.tight_layout()
            style.figure_legend(fig, axes)
            caption = (f"Fine-tuning train loss against the optimizer step, {d.panel_title()} {panel}, {regime} "
                       f"fine-tuning, one panel per train set (reading final): each cell's mean over its replicates "
                       f"(n = {'/'.join(map(str, sorted(ns)))}) with a 95% Student-t band (none for n = 1). {source}. "
                       "Measures: table finetune_speed_tests.")
            out.figure(fig, GROUP, safe_name("finetune_loss", panel, regime), caption, inputs)
