"""Pretraining loss (train and validation) against steps, tokens and FLOPs: one panel per model/facet.

A cell with several replicates (seeds) is drawn as its mean with a 95% Student-t band, each replicate's
curve linearly interpolated onto x values common to all of them (their overlap); one replicate is a plain line.
"""

from __future__ import annotations

import math

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design
from metapretrain.metrics_log import final_train_loss

X_AXES = ("step", "tokens", "flops")


def smoothing_window(n: int) -> int:
    """Moving-average window for the (noisy) per-update train loss: ~2.5% of the logged updates."""
    return max(1, round(n / 40))


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    runs = [r for r in data.runs if r.train is not None or r.evals is not None]
    if not runs:
        data.skip("loss curves: no run has metrics.jsonl records")
        return
    inputs = [r.rel(data.exp_dir, "pretrain", "metrics.jsonl") for r in runs]
    for coord in X_AXES:
        _loss_figure(runs, d, out, coord, inputs)
    _final_table(data, runs, d, out, inputs)


def _loss_figure(runs, d: Design, out: Outputs, coord: str, inputs: list[str]) -> None:
    import numpy as np

    from metapretrain.figures import style

    panels = [p for p in d.panels() if any(d.panel[r.run_id] == p for r in runs)]
    colors = style.method_colors(d.methods())
    dashes = style.method_linestyles(d.methods())
    fig, axes = style.subplots(len(panels), max_cols=4, w=3.0, h=2.4)
    for ax, panel in zip(axes, panels, strict=True):
        values = []
        for (_, m), rids in d.cells(r.run_id for r in runs if d.panel[r.run_id] == panel).items():
            members = [r for r in runs if r.run_id in rids]
            c = colors[m]
            tr = [_series(r.train, "loss", coord, smooth=True) for r in members]
            values += _draw(ax, [t for t in tr if t is not None], c, f"{m} (train)", lw=0.9, alpha=0.55,
                            ls=dashes[m])
            ev = [_series(r.evals, "val_loss", coord) for r in members]
            values += _draw(ax, [e for e in ev if e is not None], c, f"{m} (validation)", lw=1.5, marker="o",
                            ms=2.5, ls=dashes[m])
        finite = [v for v in values if math.isfinite(v)]
        if finite:  # the first updates' loss (~ln V) would squash the curves: clip at the 99th percentile
            lo, hi = min(finite), float(np.percentile(finite, 99))
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.08 * (hi - lo + 1e-9))
        ax.set_title(panel)
        ax.set_xlabel(style.AXIS_LABELS[coord])
    axes[0].set_ylabel(style.LOSS_LABEL)
    fig.tight_layout()
    style.figure_legend(fig, axes, ncol=4)
    ns = sorted({len(rids) for rids in d.cells(r.run_id for r in runs).values()})
    caption = (f"Pretraining loss vs {style.COORD_TITLES[coord]}: validation loss (markers, at each evaluation) and "
               "train loss (thin, moving average over ~2.5% of logged updates), vanilla vs meta-learning, "
               f"one panel per {d.panel_title()}; " + _n_phrase(ns, d)
               + (f"; {style.NTP_TOKENS}" if coord == "tokens" and any(style.has_ntp_tokens(r.train)
                                                                       for r in runs) else "")
               + (f"; {d.baseline_text()}" if d.tuning_axes or d.declared else "") + ".")
    out.figure(fig, "loss", f"loss_vs_{coord}", caption, inputs)


def _n_phrase(ns: list[int], d: Design) -> str:
    """How many replicates each curve is, and what its band is."""
    if ns == [1]:
        return "n = 1 run per curve, no interval"
    over = d.replicates_text()
    return (f"n = {'/'.join(map(str, ns))} runs per curve ({over}): mean with a {stats.T_INTERVAL} band, "
            "curves interpolated onto their common x")


def _series(df, col: str, coord: str, smooth: bool = False):
    """(x, y) numpy arrays of a run's `col` against `coord`, sorted by x; None without data."""
    import numpy as np

    from metapretrain.figures import style

    if df is None or col not in df:
        return None
    df = df.dropna(subset=[col])
    if not len(df):
        return None
    y = df[col].rolling(smoothing_window(len(df)), min_periods=1).mean() if smooth else df[col]
    x = np.asarray(style.coord_values(df, coord), dtype=float)
    y = np.asarray(y, dtype=float)
    keep = np.isfinite(x)
    order = np.argsort(x[keep], kind="stable")
    return x[keep][order], y[keep][order]


MAX_POINTS = 400  # points of an interpolated mean curve


def common_x(xs: list):
    """x values shared by every replicate: their own when identical, else their overlap's union (≤ MAX_POINTS)."""
    import numpy as np

    if all(len(x) == len(xs[0]) and np.array_equal(x, xs[0]) for x in xs):
        return xs[0]
    lo, hi = max(float(x[0]) for x in xs), min(float(x[-1]) for x in xs)
    if not lo < hi:
        return np.array([])
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x in xs]))
    return grid if len(grid) <= MAX_POINTS else np.linspace(lo, hi, MAX_POINTS)


def replicate_band(series: list):
    """(x, mean, lo, hi) of replicate curves [(x, y)] on their common x (Student-t band, `stats.band`)."""
    import numpy as np

    x = common_x([s[0] for s in series])
    ys = np.vstack([np.interp(x, sx, sy) for sx, sy in series]) if len(x) else np.empty((len(series), 0))
    mean, lo, hi = stats.band(ys)
    return x, mean, lo, hi


def _draw(ax, series: list, color: str, label: str, **kw) -> list[float]:
    """One curve, or the mean and band of several; returns the y values drawn (for the y limits)."""
    if not series:
        return []
    if len(series) == 1:
        x, y = series[0]
        ax.plot(x, y, color=color, label=label, **kw)
        return y.tolist()
    x, mean, lo, hi = replicate_band(series)
    ax.plot(x, mean, color=color, label=f"{label}, mean of {len(series)}", **kw)
    ax.fill_between(x, lo, hi, color=color, alpha=0.18, lw=0)
    return mean.tolist()


def _final_table(data: ExperimentData, runs, d: Design, out: Outputs, inputs: list[str]) -> None:
    import pandas as pd

    from metapretrain.figures.speedup import final_val_loss

    rows = []
    order = {p: i for i, p in enumerate(d.panels())}
    for r in sorted(runs, key=lambda r: (order[d.panel[r.run_id]], d.methods().index(d.label[r.run_id]))):
        last = r.train.iloc[-1] if r.train is not None and len(r.train) else None
        # the mean next-token loss of the last logging interval (`loss_interval`), not one update's `loss`
        rows.append({
            "panel": d.panel[r.run_id], "method": d.label[r.run_id], "run_id": r.run_id,
            "final_train_loss": final_train_loss(r.train.to_dict("records")) if r.train is not None else math.nan,
            "final_val_loss": final_val_loss(r.evals),
            "steps": int(last["step"]) if last is not None else math.nan,
            "tokens": float(last["tokens"]) if last is not None else math.nan,
            "tokens_ntp": float(last["tokens_ntp"]) if last is not None and "tokens_ntp" in last
            and _num(last["tokens_ntp"]) else math.nan,
            "flops": float(last["flops"]) if last is not None else math.nan,
            "wall_h": float(last["wall"]) / 3600 if last is not None else math.nan,
            "meta_fraction": _meta_fraction(r.train),
            "source": r.rel(data.exp_dir, "pretrain", "metrics.jsonl"),
        })
    caption = ("Final pretraining state of every run: train loss (mean next-token loss over the last logging "
               "interval), last validation loss, budget used (steps, tokens, of them next-token tokens "
               "(tokens_ntp; tokens also counts meta steps' episode windows), FLOPs, wall time) and the fraction "
               "of micro-batches that were meta steps (summed per-interval micro-batch counts n_meta / "
               "(n_meta + n_next_token), not the fraction of records)."
               + (f" {d.baseline_text()[:1].upper()}{d.baseline_text()[1:]}." if d.tuning_axes or d.declared
                  else ""))
    table = pd.DataFrame(rows)
    out.table(table, "pretrain_final", caption, inputs,
              formats={"final_train_loss": "{:.4f}", "final_val_loss": "{:.4f}", "meta_fraction": "{:.2f}"})
    _final_summary(table, d, out, inputs)


SUMMARISED = ("final_val_loss", "final_train_loss")
MEANS = ("steps", "tokens", "tokens_ntp", "flops", "wall_h", "meta_fraction")


def final_summary(table, d: Design):
    """One row per cell (panel, method): n, and mean with 95% Student-t interval of each final loss."""
    import pandas as pd

    rows = []
    for (panel, method), rids in d.cells(table["run_id"]).items():
        sub = table.set_index("run_id").loc[rids]
        row = {"panel": panel, "method": method, "n": len(rids)}
        for col in SUMMARISED:
            s = stats.summary(sub[col])
            row |= {col: s.mean, f"{col}_lo": s.lo, f"{col}_hi": s.hi, f"{col}_sd": s.sd, f"{col}_n": s.n}
        row |= {col: float(sub[col].mean()) for col in MEANS}
        row["run_ids"] = "; ".join(rids)
        row["source"] = "; ".join(sub["source"])
        rows.append(row)
    return pd.DataFrame(rows)


def _final_summary(table, d: Design, out: Outputs, inputs: list[str]) -> None:
    summ = final_summary(table, d)
    shown = summ[["panel", "method", "n"]].copy()
    for col in SUMMARISED:
        shown[f"{col} [95% CI]"] = [stats.fmt_interval(m, lo, hi, n) for m, lo, hi, n in
                                    zip(summ[col], summ[f"{col}_lo"], summ[f"{col}_hi"], summ[f"{col}_n"],
                                        strict=True)]
    for col in MEANS:
        shown[col] = summ[col]
    shown["source"] = summ["source"]
    ns = sorted(set(summ["n"]))
    over = d.replicates_text()
    caption = ("Final pretraining state per method and panel, over the runs of each cell "
               f"(n = {'/'.join(map(str, ns))} per cell, replicate axes: {over}): mean final validation and train "
               f"loss with a {stats.T_INTERVAL} (none for n = 1); budget and meta fraction are means.")
    out.table(summ, "pretrain_final_summary", caption, inputs, display=shown,
              formats={"meta_fraction": "{:.2f}"})


def _num(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def _meta_fraction(train) -> float:
    """The fraction of a run's micro-batches that were meta steps.

    Each train record carries `n_<slot>`: how many micro-batches each slot (`next_token`, `meta`) ran since
    the record before (train/loop.py), so the sums over the records count every micro-batch once."""
    if train is None or "n_meta" not in train or "n_next_token" not in train:
        return math.nan
    meta, ntp = train["n_meta"].fillna(0).sum(), train["n_next_token"].fillna(0).sum()
    return float(meta / (meta + ntp)) if meta + ntp else math.nan
