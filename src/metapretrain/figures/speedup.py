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

**Over replicates.** Each meta run is one pair with its baseline (meta seed
s against vanilla seed s, `pairing`). Per cell (method, panel) the summary
reports how many pairs reached the target and the mean speedup over those
that did, with a 95% percentile-bootstrap interval over the pairs
(`stats.bootstrap_mean`, seeded: the same inputs give the same interval).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metapretrain.figures import stats
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
    summ = speedup_summary(table, d)
    pairing = ("paired by replicate (" + ", ".join(d.replicate_axes) + ")" if d.replicate_axes
               else "one pair per meta run")
    if not all(d.paired.get(r, True) for r in table["run_id"]):
        pairing += "; some meta runs have no same-replicate vanilla run and are compared unpaired"
    boot = stats.bootstrap_mean([]).method
    scaption = ("Speedup to equal loss per method and panel over its meta run / vanilla baseline pairs "
                f"({pairing}): pairs that reached the target of n, and the mean speedup over those pairs with a "
                f"95% CI by {boot} (no interval for one pair). Rule as in the speedup table.")
    out.table(summ, "speedup_summary", scaption, inputs, display=_shown_summary(summ),
              latex_drop=("source", "run_ids"))
    _bar_chart(summ, table, d, out, caption + " Bars: " + scaption, inputs)


def speedup_summary(table, d: Design):
    """One row per meta cell: pairs, pairs reached, mean speedup per coordinate with its bootstrap interval."""
    import pandas as pd

    meta = table[table["run_id"] != table["baseline_run"]]
    rows = []
    for (panel, method), rids in d.cells(meta["run_id"]).items():
        sub = meta.set_index("run_id").loc[rids]
        reached = sub["reached"].astype(bool)
        row = {"panel": panel, "method": method, "n_pairs": len(rids), "n_reached": int(reached.sum()),
               "paired": all(d.paired.get(r, True) for r in rids)}
        for c in COORDS:
            b = stats.bootstrap_mean(sub.loc[reached, f"speedup_{c}"])
            row |= {f"speedup_{c}": b.estimate, f"speedup_{c}_lo": b.lo, f"speedup_{c}_hi": b.hi,
                    f"speedup_{c}_n": b.n}
        row["interval"] = stats.bootstrap_mean([]).method
        row["run_ids"] = "; ".join(rids)
        row["source"] = "; ".join(sorted({x for src in sub["source"] for x in src.split("; ")}))
        rows.append(row)
    return pd.DataFrame(rows)


def _shown_summary(summ):
    shown = summ[["panel", "method"]].copy()
    shown["reached"] = [f"{k} of {n}" for k, n in zip(summ["n_reached"], summ["n_pairs"], strict=True)]
    shown["paired"] = ["yes" if p else "no" for p in summ["paired"]]
    for c in COORDS:
        shown[f"speedup_{c} [95% CI]"] = [
            NOT_REACHED if k == 0 else stats.fmt_interval(m, lo, hi, n, "{:.2f}×")
            for k, m, lo, hi, n in zip(summ["n_reached"], summ[f"speedup_{c}"], summ[f"speedup_{c}_lo"],
                                       summ[f"speedup_{c}_hi"], summ[f"speedup_{c}_n"], strict=True)]
    shown["run_ids"] = summ["run_ids"]
    shown["source"] = summ["source"]
    return shown


def _bar_chart(summ, table, d: Design, out: Outputs, caption: str, inputs: list[str]) -> None:
    import numpy as np

    from metapretrain.figures import style

    meta = table[table["run_id"] != table["baseline_run"]]
    panels = [p for p in d.panels() if p in set(summ["panel"])]
    methods = [m for m in d.methods() if m in set(summ["method"])]
    colors = style.method_colors(d.methods())
    fig, axes = style.subplots(len(COORDS), max_cols=2, w=max(2.6, 0.8 * len(panels) + 1.0), h=2.4, sharey=True)
    width = 0.8 / max(len(methods), 1)
    cols = [f"speedup_{c}{x}" for c in COORDS for x in ("", "_hi")]
    top = np.nanmax(summ[cols].to_numpy(dtype=float), initial=1.0)
    top = max(top, np.nanmax(meta[[f"speedup_{c}" for c in COORDS]].to_numpy(dtype=float), initial=1.0))
    for ax, coord in zip(axes, COORDS, strict=True):
        ax.axhline(1.0, color=style.VANILLA_COLOR, lw=0.8, ls="--", zorder=1)
        for j, m in enumerate(methods):
            for i, p in enumerate(panels):
                sel = summ[(summ["panel"] == p) & (summ["method"] == m)]
                if sel.empty:
                    continue
                row = sel.iloc[0]
                x = i - 0.4 + width * (j + 0.5)
                if row["n_reached"] == 0:
                    ax.text(x, 0.02 * top, f"{m}: {NOT_REACHED}", rotation=90, ha="center", va="bottom", fontsize=6.5,
                            color=colors[m], fontweight="bold", zorder=3)
                    continue
                v = float(row[f"speedup_{coord}"])
                if not math.isfinite(v):
                    continue
                ax.bar(x, v, width=width * 0.9, color=colors[m], label=m if i == 0 else None, zorder=2)
                lo, hi = float(row[f"speedup_{coord}_lo"]), float(row[f"speedup_{coord}_hi"])
                if math.isfinite(lo) and math.isfinite(hi):
                    ax.errorbar(x, v, yerr=[[v - lo], [hi - v]], color="black", lw=0.8, capsize=2, zorder=4)
                if row["n_pairs"] > 1:
                    pts = meta[meta["run_id"].isin(str(row["run_ids"]).split("; ")) & meta["reached"].astype(bool)]
                    ax.plot([x] * len(pts), pts[f"speedup_{coord}"], ls="", marker="o", ms=2.5, mfc="white",
                            mec="black", mew=0.5, zorder=5)
                reached = "" if row["n_reached"] == row["n_pairs"] else f"\n{row['n_reached']}/{row['n_pairs']} reached"
                ax.text(x, v if not math.isfinite(hi) else hi, f"{v:.2f}×{reached}", ha="center", va="bottom",
                        fontsize=6, zorder=3, bbox={"facecolor": "white", "edgecolor": "none", "pad": 0.5,
                                                    "alpha": 0.8})
        ax.set_xticks(range(len(panels)), panels, rotation=30 if len(panels) > 3 else 0)
        ax.set_xlim(-0.5, len(panels) - 0.5)
        ax.set_title(f"to equal loss: {style.COORD_TITLES[coord]}")
        ax.set_xlabel(d.panel_title())
        ax.set_ylim(0, top * 1.25)
        ax.set_ylabel("speedup vs vanilla (×)")
    fig.tight_layout()
    style.figure_legend(fig, axes, title="dashed line: vanilla = 1×; bars: mean over pairs, whiskers: 95% CI, "
                                         "dots: pairs")
    out.figure(fig, "speedup", "speedup_to_equal_loss", caption, inputs)
