"""Per-step episodic curves of the meta runs (the companion's appendix Figs 12–15).

From every meta run's `pretrain/metrics.jsonl` train records (every `train.log_every` updates, not
sampled at checkpoints; each value is the logged update's meta micro-batches, `docs/architecture.md`):
query accuracy, support accuracy before and after the inner loop, and, where recorded, the episode
head's weight mean and standard deviation (over its weight matrices) and norm. A record of an update
without a meta micro-batch has no episodic accuracy and is left out of those curves.

Figures (`figures/episodic/`): one panel per metric against the pretraining step, one curve per cell
(panel, method): the mean over its replicates (seeds) with a 95% Student-t band. Table
`episodic_final`: per cell and metric the mean over each run's final interval (its records in the
last 10% of its logged steps, at least the last record), then the mean and 95% interval over the
cell's runs.
"""

from __future__ import annotations

import math

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design

GROUP = "episodic"
# metrics.jsonl column -> what captions and axes call it, in display order (Figs 12–15 first)
METRICS = {
    "meta/query_acc": "query accuracy",
    "meta/support_acc_before": "support accuracy (before adaptation)",
    "meta/support_acc_after": "support accuracy (after adaptation)",
    "meta/head_weight_mean": "head weight mean",
    "meta/head_weight_std": "head weight std",
    "meta/head_weight_norm": "head weight norm",
    "meta/query_loss": "query loss",
}
FINAL_FRACTION = 0.1


def _meta_runs(data: ExperimentData, d: Design) -> list:
    return [r for r in data.runs if not r.is_vanilla and r.run_id in d.panel and r.train is not None
            and any(c in r.train.columns for c in METRICS)]


def series(train, column: str):
    """(steps, values) of one metric, finite values only, sorted by step; None when there are none."""
    import numpy as np

    if train is None or column not in train.columns:
        return None
    x = np.asarray(train["step"], dtype=float)
    y = np.asarray(train[column].astype(float), dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    if not ok.any():
        return None
    order = np.argsort(x[ok], kind="stable")
    return x[ok][order], y[ok][order]


def final_value(train, column: str, fraction: float = FINAL_FRACTION) -> float:
    """Mean of a metric over the records in the last `fraction` of the run's logged steps (≥ the last record)."""
    s = series(train, column)
    if s is None:
        return math.nan
    x, y = s
    lo = float(x[-1]) - fraction * float(x[-1] - x[0])
    keep = x >= lo - 1e-9
    return float(y[keep].mean())


def final_table(runs, d: Design, columns: list[str]):
    """Per cell and metric: n, the mean over the cell's runs of each run's final-interval mean, its 95% CI."""
    import pandas as pd

    by_id = {r.run_id: r for r in runs}
    rows = []
    for (panel, method), rids in d.cells(by_id).items():
        for col in columns:
            vals = [final_value(by_id[rid].train, col) for rid in rids]
            s = stats.summary(vals)
            if s.n == 0:
                continue
            rows.append({"panel": panel, "method": method, "metric": col, "what": METRICS[col], "n": s.n,
                         "final": s.mean, "final_lo": s.lo, "final_hi": s.hi,
                         "run_ids": "; ".join(rids), "source": "pretrain/metrics.jsonl"})
    return pd.DataFrame(rows)


def _shown(table):
    shown = table[["panel", "method", "what", "n"]].copy()
    shown["final [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:.4g}") for m, lo, hi, n in
                               zip(table["final"], table["final_lo"], table["final_hi"], table["n"], strict=True)]
    shown["metric"] = table["metric"]
    shown["run_ids"] = table["run_ids"]
    shown["source"] = table["source"]
    return shown


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    from metapretrain.figures.finetune_speed import _fresh_group

    _fresh_group(out, GROUP)
    runs = _meta_runs(data, d)
    if not runs:
        data.skip("episodic curves: no meta run has episodic fields (meta/query_acc, ...) in metrics.jsonl")
        return
    columns = [c for c in METRICS if any(series(r.train, c) is not None for r in runs)]
    if not columns:
        data.skip("episodic curves: the meta runs' episodic fields have no finite value")
        return
    inputs = sorted(r.rel(data.exp_dir, "pretrain", "metrics.jsonl") for r in runs)
    missing = [METRICS[c] for c in ("meta/head_weight_mean", "meta/head_weight_std") if c not in columns]
    note = (f" Not recorded by these runs: {', '.join(missing)} (metrics.jsonl written before the field "
            "existed)." if missing else "")
    table = final_table(runs, d, columns)
    ns = "/".join(map(str, sorted(set(table["n"]))))
    out.table(table, "episodic_final",
              f"Episodic metrics of the meta runs at the end of pretraining, per {d.panel_title()} and method: each "
              f"run's mean over its final interval (its train records in the last {FINAL_FRACTION:.0%} of its logged "
              f"steps, at least the last record), then the mean over the cell's runs (n = {ns}, replicate axes: "
              f"{d.replicates_text()}) with a {stats.T_INTERVAL} (none for n = 1). Values are the logged updates' "
              f"meta micro-batches (not sampled at checkpoints).{note}", inputs, display=_shown(table),
              latex_drop=("source", "run_ids", "metric"))
    _figure(runs, d, columns, out, inputs, note)


def _figure(runs, d: Design, columns: list[str], out: Outputs, inputs: list[str], note: str) -> None:
    from metapretrain.figures import style
    from metapretrain.figures.loss import replicate_band

    by_id = {r.run_id: r for r in runs}
    cells = d.cells(by_id)
    multi_panel = len({p for p, _ in cells}) > 1
    labels = {c: (f"{p} · {m}" if multi_panel else m) for c in cells for p, m in [c]}
    palette = style.OKABE_ITO
    colors = {c: palette[i % len(palette)] for i, c in enumerate(cells)}
    fig, axes = style.subplots(len(columns), max_cols=3, w=3.4, h=2.6)
    ns = set()
    for ax, col in zip(axes, columns, strict=True):
        for cell, rids in cells.items():
            curves = [s for s in (series(by_id[rid].train, col) for rid in rids) if s is not None]
            if not curves:
                continue
            ns.add(len(curves))
            if len(curves) == 1:
                ax.plot(*curves[0], color=colors[cell], lw=1.0, label=labels[cell])
            else:
                x, mean, lo, hi = replicate_band(curves)
                ax.plot(x, mean, color=colors[cell], lw=1.0, label=f"{labels[cell]}, mean of {len(curves)}")
                ax.fill_between(x, lo, hi, color=colors[cell], alpha=0.18, lw=0)
        ax.set_title(METRICS[col])
        ax.set_xlabel("pretraining step")
        ax.set_ylabel(METRICS[col].split(" (")[0])
    fig.tight_layout()
    style.figure_legend(fig, axes)
    caption = (f"Episodic metrics of the meta runs against the pretraining step (the companion's Figs 12–15), from "
               f"every train record of pretrain/metrics.jsonl (each the logged update's meta micro-batches): "
               f"{', '.join(METRICS[c] for c in columns)}. One curve per {d.panel_title()} and method: the mean over "
               f"its replicates (n = {'/'.join(map(str, sorted(ns)))}) with a 95% Student-t band (none for n = 1)."
               f"{note}")
    out.figure(fig, GROUP, "episodic_curves", caption, inputs)
