"""Speedup to equal loss: how much sooner a method reaches its vanilla baseline's final validation loss.

**Rule.** The target is the baseline vanilla run's *final* validation loss
(its last finite `val_loss` in metrics.jsonl). A run *reaches* the target at
the first evaluation whose `val_loss` is ≤ the target. Between that
evaluation and the one before it, loss is taken to change linearly, and the
crossing point's steps, tokens, FLOPs and wall time are interpolated with the
same fraction f = (L_prev − target) / (L_prev − L_hit). When the very first
evaluation is already at or below the target there is nothing to interpolate
from, and its coordinates are used (an upper bound; flagged `at_first_eval`).
A run whose evaluations never reach the target is reported as "not reached",
never extrapolated. The same rule applies to the vanilla run itself (a noisy
curve may dip below its own final loss earlier), and

    speedup_x = x_vanilla / x_method        for x in steps, tokens, FLOPs, wall time

so 1.6× means the method needed 1/1.6 of the vanilla run's x.
Wall-time speedups compare runs only if they ran on the same hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metapretrain.figures.load import COORDS, ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design

NOT_REACHED = "not reached"


@dataclass
class Crossing:
    reached: bool
    coords: dict[str, float]  # step/tokens/flops/wall at the crossing; NaN when not reached
    at_first_eval: bool = False


def final_val_loss(evals) -> float:
    """The last finite validation loss of a run (NaN without one)."""
    if evals is None or "val_loss" not in evals:
        return math.nan
    vals = [v for v in evals.sort_values("step")["val_loss"].tolist() if _finite(v)]
    return float(vals[-1]) if vals else math.nan


def first_crossing(evals, target: float) -> Crossing:
    """Where a run's validation loss first reaches `target` (module docstring: the rule)."""
    nan = {c: math.nan for c in COORDS}
    if evals is None or "val_loss" not in evals or not _finite(target):
        return Crossing(False, nan)
    recs = [r for r in evals.sort_values("step").to_dict("records") if _finite(r.get("val_loss"))]
    for i, rec in enumerate(recs):
        if rec["val_loss"] <= target:
            if i == 0:
                return Crossing(True, {c: float(rec.get(c, math.nan)) for c in COORDS}, at_first_eval=True)
            prev = recs[i - 1]
            drop = prev["val_loss"] - rec["val_loss"]
            f = (prev["val_loss"] - target) / drop if drop > 0 else 1.0
            return Crossing(True, {c: float(prev[c] + f * (rec[c] - prev[c])) for c in COORDS})
    return Crossing(False, nan)


def _finite(v) -> bool:
    try:
        return math.isfinite(float(v))
    except (TypeError, ValueError):
        return False


def speedup_table(data: ExperimentData, d: Design):
    """One row per run that has a baseline (and one per baseline itself): coordinates to target and speedups."""
    import pandas as pd

    rows = []
    groups: dict[str, list[str]] = {}
    for rid, base in d.baseline.items():
        if base is not None:
            groups.setdefault(base, []).append(rid)
    for base_id in sorted(groups, key=lambda b: (d.panels().index(d.panel[b]), b)):
        base = data.run(base_id)
        target = final_val_loss(base.evals)
        ref = first_crossing(base.evals, target)
        for rid in [base_id, *sorted(groups[base_id], key=lambda r: (d.label[r], r))]:
            run = data.run(rid)
            cross = ref if rid == base_id else first_crossing(run.evals, target)
            row = {"panel": d.panel[rid], "method": d.label[rid], "run_id": rid, "baseline_run": base_id,
                   "target_val_loss": target, "reached": cross.reached, "at_first_eval": cross.at_first_eval}
            for c in COORDS:
                row[f"{c}_to_target"] = cross.coords[c]
            for c in COORDS:
                ok = cross.reached and ref.reached and _finite(ref.coords[c]) and cross.coords[c] > 0
                row[f"speedup_{c}"] = ref.coords[c] / cross.coords[c] if ok else math.nan
            row["source"] = "; ".join(sorted({run.rel(data.exp_dir, "pretrain", "metrics.jsonl"),
                                              base.rel(data.exp_dir, "pretrain", "metrics.jsonl")}))
            rows.append(row)
    return pd.DataFrame(rows)


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    if not d.baseline:
        data.skip("speedup: no meta run in the grid (nothing to compare with vanilla)")
        return
    if not any(b is not None for b in d.baseline.values()):
        data.skip("speedup: no meta run has a vanilla baseline (pairing: " + "; ".join(d.notes) + ")")
        return
    table = speedup_table(data, d)
    if table.empty:
        return
    inputs = sorted({s for src in table["source"] for s in src.split("; ")})
    shown = table.copy()
    shown["reached"] = ["yes" if r else NOT_REACHED for r in shown["reached"]]
    shown["at_first_eval"] = ["yes" if r else "no" for r in shown["at_first_eval"]]
    for c in COORDS:
        shown[f"speedup_{c}"] = [NOT_REACHED if not r else (f"{v:.2f}×" if _finite(v) else "–")
                                 for r, v in zip(table["reached"], table[f"speedup_{c}"], strict=True)]
    shown["wall_to_target"] = shown["wall_to_target"] / 3600.0
    shown = shown.rename(columns={"wall_to_target": "wall_h_to_target"})
    caption = ("Speedup to equal loss: steps, tokens, FLOPs and wall time each run needs to first reach its "
               "vanilla baseline's final validation loss (linear interpolation between evaluations; "
               "speedup = vanilla / method; 'not reached' = never reached within its budget).")
    out.table(table, "speedup", caption, inputs, display=shown,
              latex_drop=("source", "baseline_run", "reached", "at_first_eval", "tokens_to_target", "flops_to_target",
                          "wall_h_to_target"),
              formats={"target_val_loss": "{:.4f}", "step_to_target": "{:.0f}", "wall_h_to_target": "{:.3g}"})
    _bar_chart(table, d, out, caption, inputs)


def _bar_chart(table, d: Design, out: Outputs, caption: str, inputs: list[str]) -> None:
    import numpy as np

    from metapretrain.figures import style

    meta = table[table["run_id"] != table["baseline_run"]]
    panels = [p for p in d.panels() if p in set(meta["panel"])]
    methods = [m for m in d.methods() if m in set(meta["method"])]
    colors = style.method_colors(d.methods())
    fig, axes = style.subplots(len(COORDS), max_cols=2, w=max(2.6, 0.8 * len(panels) + 1.0), h=2.4, sharey=True)
    width = 0.8 / max(len(methods), 1)
    top = np.nanmax(meta[[f"speedup_{c}" for c in COORDS]].to_numpy(dtype=float), initial=1.0)
    for ax, coord in zip(axes, COORDS, strict=True):
        ax.axhline(1.0, color=style.VANILLA_COLOR, lw=0.8, ls="--", zorder=1)
        for j, m in enumerate(methods):
            for i, p in enumerate(panels):
                sel = meta[(meta["panel"] == p) & (meta["method"] == m)]
                if sel.empty:
                    continue
                x = i - 0.4 + width * (j + 0.5)
                v = float(sel[f"speedup_{coord}"].iloc[0])
                if not bool(sel["reached"].iloc[0]):
                    ax.text(x, 0.02 * top, f"{m}: {NOT_REACHED}", rotation=90, ha="center", va="bottom", fontsize=6.5,
                            color=colors[m], fontweight="bold", zorder=3)
                    continue
                if not math.isfinite(v):
                    continue
                ax.bar(x, v, width=width * 0.9, color=colors[m], label=m if i == 0 else None, zorder=2)
                ax.text(x, v, f"{v:.2f}×", ha="center", va="bottom", fontsize=6, zorder=3,
                        bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5, "alpha": 0.8})
        ax.set_xticks(range(len(panels)), panels, rotation=30 if len(panels) > 3 else 0)
        ax.set_xlim(-0.5, len(panels) - 0.5)
        ax.set_title(f"to equal loss: {style.COORD_TITLES[coord]}")
        ax.set_xlabel("model")
        ax.set_ylim(0, top * 1.18)
        ax.set_ylabel("speedup vs vanilla (×)")
    fig.tight_layout()
    style.figure_legend(fig, axes, title="dashed line: vanilla = 1×")
    out.figure(fig, "speedup", "speedup_to_equal_loss", caption, inputs)
