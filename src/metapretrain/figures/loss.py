"""Pretraining loss (train and validation) against steps, tokens and FLOPs: one panel per model/facet."""

from __future__ import annotations

import math

from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design

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
    fig, axes = style.subplots(len(panels), max_cols=4, w=3.0, h=2.4)
    for ax, panel in zip(axes, panels, strict=True):
        values = []
        for r in sorted((r for r in runs if d.panel[r.run_id] == panel), key=lambda r: d.methods().index(d.label[r.run_id])):
            m, c = d.label[r.run_id], colors[d.label[r.run_id]]
            if r.train is not None and "loss" in r.train:
                tr = r.train.dropna(subset=["loss"])
                y = tr["loss"].rolling(smoothing_window(len(tr)), min_periods=1).mean()
                ax.plot(style.coord_values(tr, coord), y, color=c, lw=0.9, alpha=0.55, label=f"{m} (train)")
                values += y.tolist()
            if r.evals is not None and "val_loss" in r.evals:
                ev = r.evals.dropna(subset=["val_loss"])
                ax.plot(style.coord_values(ev, coord), ev["val_loss"], color=c, lw=1.5, marker="o", ms=2.5,
                        label=f"{m} (validation)")
                values += ev["val_loss"].tolist()
        finite = [v for v in values if math.isfinite(v)]
        if finite:  # the first updates' loss (~ln V) would squash the curves: clip at the 99th percentile
            lo, hi = min(finite), float(np.percentile(finite, 99))
            ax.set_ylim(lo - 0.05 * (hi - lo + 1e-9), hi + 0.08 * (hi - lo + 1e-9))
        ax.set_title(panel)
        ax.set_xlabel(style.AXIS_LABELS[coord])
    axes[0].set_ylabel(style.LOSS_LABEL)
    fig.tight_layout()
    style.figure_legend(fig, axes, ncol=4)
    caption = (f"Pretraining loss vs {style.COORD_TITLES[coord]}: validation loss (markers, at each evaluation) and "
               "train loss (thin, moving average over ~2.5% of logged updates), vanilla vs meta-learning, "
               "one panel per model.")
    out.figure(fig, "loss", f"loss_vs_{coord}", caption, inputs)


def _final_table(data: ExperimentData, runs, d: Design, out: Outputs, inputs: list[str]) -> None:
    import pandas as pd

    from metapretrain.figures.speedup import final_val_loss

    rows = []
    order = {p: i for i, p in enumerate(d.panels())}
    for r in sorted(runs, key=lambda r: (order[d.panel[r.run_id]], d.methods().index(d.label[r.run_id]))):
        last = r.train.iloc[-1] if r.train is not None and len(r.train) else None
        tr = r.train.dropna(subset=["loss"]) if r.train is not None and "loss" in r.train else None
        rows.append({
            "panel": d.panel[r.run_id], "method": d.label[r.run_id], "run_id": r.run_id,
            "final_train_loss": float(tr["loss"].iloc[-1]) if tr is not None and len(tr) else math.nan,
            "final_val_loss": final_val_loss(r.evals),
            "steps": int(last["step"]) if last is not None else math.nan,
            "tokens": float(last["tokens"]) if last is not None else math.nan,
            "flops": float(last["flops"]) if last is not None else math.nan,
            "wall_h": float(last["wall"]) / 3600 if last is not None else math.nan,
            "meta_fraction": _meta_fraction(r.train),
            "source": r.rel(data.exp_dir, "pretrain", "metrics.jsonl"),
        })
    caption = ("Final pretraining state of every run: last train loss, last validation loss, budget used "
               "(steps, tokens, FLOPs, wall time) and the fraction of micro-batches that were meta steps.")
    out.table(pd.DataFrame(rows), "pretrain_final", caption, inputs,
              formats={"final_train_loss": "{:.4f}", "final_val_loss": "{:.4f}", "meta_fraction": "{:.2f}"})


def _meta_fraction(train) -> float:
    if train is None or "n_meta" not in train or "n_next_token" not in train:
        return math.nan
    meta, ntp = train["n_meta"].fillna(0).sum(), train["n_next_token"].fillna(0).sum()
    return float(meta / (meta + ntp)) if meta + ntp else math.nan
