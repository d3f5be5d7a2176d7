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

**The other way round.** For every meta run, reached or not, the table also
gives `reverse_x` = (the baseline's x when it first reaches the meta run's
final validation loss, same rule) / (the meta run's x at its final
evaluation): the speedup at the meta run's final loss, < 1 when the meta
run is worse (NaN when the baseline never gets there), and `loss_gap_x` =
meta final val loss − the baseline's val loss linearly interpolated at the
meta run's final x (NaN beyond the baseline's evaluations; positive = meta
worse) for x in steps, tokens, FLOPs. Where runs count next-token tokens
(`tokens_ntp`), `tokens` is that count (`tokens` in metrics.jsonl also counts
episode windows of meta steps).

**Baselines.** One row per (meta run, baseline) of `Design.baselines` (a
declared list or the tuned/paired vanilla run: `Design.baseline_text()`).

**Over replicates.** Each meta run is one pair with its baseline (meta seed
s against vanilla seed s, `pairing`). Per cell (method, panel) the summary
reports how many pairs reached the target and the mean speedup over those
that did, with a 95% percentile-bootstrap interval over the pairs
(`stats.bootstrap_mean`, seeded: the same inputs give the same interval),
per baseline label; the mean reverse fraction over the pairs where it is
finite, with the same bootstrap interval, and the mean loss gap with a 95%
Student-t interval (`stats.summary`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from metapretrain.figures import stats
from metapretrain.figures.load import COORDS, ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design
from metapretrain.figures.style import NTP_TOKENS

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


GAP_COORDS = ("step", "tokens", "flops")


def final_coords(evals) -> dict[str, float]:
    """The coordinates of a run's last evaluation with a finite validation loss (NaN without one)."""
    if evals is None or "val_loss" not in evals:
        return {c: math.nan for c in COORDS}
    recs = [r for r in evals.sort_values("step").to_dict("records") if _finite(r.get("val_loss"))]
    return {c: float(recs[-1].get(c, math.nan)) for c in COORDS} if recs else {c: math.nan for c in COORDS}


def loss_at(evals, coord: str, x: float) -> float:
    """A run's validation loss linearly interpolated at `coord` = x; NaN outside its evaluations' range."""
    if evals is None or "val_loss" not in evals or not _finite(x):
        return math.nan
    pts = sorted((float(r[coord]), float(r["val_loss"])) for r in evals.to_dict("records")
                 if _finite(r.get("val_loss")) and _finite(r.get(coord)))
    if not pts or x < pts[0][0] or x > pts[-1][0]:
        return math.nan
    for (x0, y0), (x1, y1) in zip(pts, pts[1:], strict=False):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (x - x0) / (x1 - x0) * (y1 - y0)
    return pts[-1][1]


def reverse_and_gap(meta_evals, base_evals) -> dict[str, float]:
    """`reverse_x` and `loss_gap_x` of a meta run against a baseline (module docstring)."""
    final = final_val_loss(meta_evals)
    at = final_coords(meta_evals)
    back = first_crossing(base_evals, final)
    out = {}
    for c in COORDS:
        ok = back.reached and _finite(at[c]) and at[c] > 0
        out[f"reverse_{c}"] = back.coords[c] / at[c] if ok else math.nan
    for c in GAP_COORDS:
        base = loss_at(base_evals, c, at[c])
        out[f"loss_gap_{c}"] = final - base if _finite(base) and _finite(final) else math.nan
    return out


def _evals(data: ExperimentData, rid: str):
    from metapretrain.figures.style import with_ntp_tokens

    return with_ntp_tokens(data.run(rid).evals)


def _ntp_everywhere(data: ExperimentData, rids) -> bool:
    from metapretrain.figures.style import has_ntp_tokens

    return any(has_ntp_tokens(data.run(r).evals) for r in rids)


def speedup_table(data: ExperimentData, d: Design):
    """One row per (meta run, baseline) and one per baseline itself: coordinates to target, speedups, the
    reverse fraction and the loss gap (module docstring)."""
    import pandas as pd

    rows = []
    groups: dict[str, list[str]] = {}
    pairs = d.baselines or {r: [b] for r, b in d.baseline.items() if b is not None}
    for rid, bases in pairs.items():
        for base in bases:
            groups.setdefault(base, []).append(rid)
    panels = d.panels()
    for base_id in sorted(groups, key=lambda b: (panels.index(d.panel[b]), d.methods().index(d.label[b]), b)):
        base = data.run(base_id)
        base_ev = _evals(data, base_id)
        target = final_val_loss(base_ev)
        ref = first_crossing(base_ev, target)
        for rid in [base_id, *sorted(groups[base_id], key=lambda r: (d.label[r], r))]:
            run = data.run(rid)
            ev = base_ev if rid == base_id else _evals(data, rid)
            cross = ref if rid == base_id else first_crossing(ev, target)
            row = {"panel": d.panel[rid], "method": d.label[rid], "run_id": rid, "baseline": d.label[base_id],
                   "baseline_run": base_id, "paired": d.is_paired(rid, base_id),
                   "target_val_loss": target, "final_val_loss": final_val_loss(ev),
                   "reached": cross.reached, "at_first_eval": cross.at_first_eval}
            for c in COORDS:
                row[f"{c}_to_target"] = cross.coords[c]
            for c in COORDS:
                ok = cross.reached and ref.reached and _finite(ref.coords[c]) and cross.coords[c] > 0
                row[f"speedup_{c}"] = ref.coords[c] / cross.coords[c] if ok else math.nan
            row |= reverse_and_gap(ev, base_ev)
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
    ntp = _ntp_everywhere(data, table["run_id"])
    units = f" ({NTP_TOKENS})" if ntp else ""
    shown = table.copy()
    shown["reached"] = ["yes" if r else NOT_REACHED for r in shown["reached"]]
    shown["at_first_eval"] = ["yes" if r else "no" for r in shown["at_first_eval"]]
    shown["paired"] = ["yes" if r else "no" for r in shown["paired"]]
    for c in COORDS:
        shown[f"speedup_{c}"] = [NOT_REACHED if not r else (f"{v:.2f}×" if _finite(v) else "–")
                                 for r, v in zip(table["reached"], table[f"speedup_{c}"], strict=True)]
        shown[f"reverse_{c}"] = [f"{v:.2f}×" if _finite(v) else "–" for v in table[f"reverse_{c}"]]
    shown["wall_to_target"] = shown["wall_to_target"] / 3600.0
    shown = shown.rename(columns={"wall_to_target": "wall_h_to_target"})
    caption = ("Speedup to equal loss: steps, tokens, FLOPs and wall time each run needs to first reach its "
               "vanilla baseline's final validation loss (linear interpolation between evaluations; "
               "speedup = vanilla / method; 'not reached' = never reached within its budget); reverse = the "
               "baseline's x at the meta run's final validation loss / the meta run's final x (– = the baseline "
               "never gets there); loss gap = meta final val loss − baseline val loss at the meta run's final x "
               f"(positive = meta worse){units}. {_cap(d.baseline_text())}.")
    out.table(table, "speedup", caption, inputs, display=shown,
              latex_drop=("source", "baseline_run", "reached", "at_first_eval", "tokens_to_target", "flops_to_target",
                          "wall_h_to_target", "reverse_step", "reverse_tokens", "reverse_wall", "loss_gap_step",
                          "loss_gap_tokens", "final_val_loss"),
              formats={"target_val_loss": "{:.4f}", "final_val_loss": "{:.4f}", "step_to_target": "{:.0f}",
                       "wall_h_to_target": "{:.3g}", **{f"loss_gap_{c}": "{:+.4f}" for c in GAP_COORDS}})
    summ = speedup_summary(table, d)
    pairing = ("paired by replicate (" + ", ".join(d.replicate_axes) + ")" if d.replicate_axes
               else "one pair per meta run")
    meta = table[table["run_id"] != table["baseline_run"]]
    if not meta["paired"].astype(bool).all():
        pairing += "; some meta runs have no same-replicate vanilla run and are compared unpaired"
    boot = stats.bootstrap_mean([]).method
    scaption = ("Speedup to equal loss per method, baseline and panel over its meta run / vanilla baseline pairs "
                f"({pairing}): pairs that reached the target of n, and the mean speedup over those pairs with a "
                f"95% CI by {boot} (no interval for one pair); reverse (FLOPs): mean over pairs of the baseline's "
                "FLOPs to the meta run's final validation loss / the meta run's FLOPs, same bootstrap; loss gap "
                f"at equal FLOPs: mean meta − baseline validation loss, {stats.T_INTERVAL}{units}. "
                f"{_cap(d.baseline_text())}. Rule as in the speedup table.")
    out.table(summ, "speedup_summary", scaption, inputs, display=_shown_summary(summ),
              latex_drop=("source", "run_ids"))
    _bar_chart(summ, table, d, out, caption + " Bars: " + scaption + " " + _not_reached_text(summ), inputs)


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


def _not_reached_text(summ) -> str:
    """The cells that did not reach, said with their reverse fraction and loss gap (for the bar caption)."""
    parts = []
    for _, row in summ[summ["n_reached"] < summ["n_pairs"]].iterrows():
        rev = stats.fmt_interval(row["reverse_flops"], row["reverse_flops_lo"], row["reverse_flops_hi"],
                                 int(row["reverse_flops_n"]), "{:.2f}×")
        gap = stats.fmt_interval(row["loss_gap_flops"], row["loss_gap_flops_lo"], row["loss_gap_flops_hi"],
                                 int(row["loss_gap_flops_n"]), "{:+.3f}")
        parts.append(f"{row['method']} vs {row['baseline']} ({row['panel']}): {row['n_reached']} of "
                     f"{row['n_pairs']} pairs reached; reverse (FLOPs) {rev}, loss gap at equal FLOPs {gap}")
    if not parts:
        return ""
    return ("Hatched bars: reverse fraction where no pair reached the target (the speedup at the meta run's "
            "own final loss). Not reached: " + "; ".join(parts) + ".")


def speedup_summary(table, d: Design):
    """One row per meta cell and baseline label: pairs, pairs reached, mean speedup per coordinate with its
    bootstrap interval, mean reverse fraction (bootstrap) and mean loss gap (Student t)."""
    import pandas as pd

    meta = table[table["run_id"] != table["baseline_run"]]
    rows = []
    for (panel, method), rids in d.cells(list(dict.fromkeys(meta["run_id"]))).items():
        cell = meta[meta["run_id"].isin(rids)]
        for base_label in dict.fromkeys(cell["baseline"]):
            sub = cell[cell["baseline"] == base_label]
            reached = sub["reached"].astype(bool)
            row = {"panel": panel, "method": method, "baseline": base_label, "n_pairs": len(sub),
                   "n_reached": int(reached.sum()), "paired": bool(sub["paired"].astype(bool).all())}
            for c in COORDS:
                b = stats.bootstrap_mean(sub.loc[reached, f"speedup_{c}"])
                row |= {f"speedup_{c}": b.estimate, f"speedup_{c}_lo": b.lo, f"speedup_{c}_hi": b.hi,
                        f"speedup_{c}_n": b.n}
            for c in COORDS:
                b = stats.bootstrap_mean(sub[f"reverse_{c}"])
                row |= {f"reverse_{c}": b.estimate, f"reverse_{c}_lo": b.lo, f"reverse_{c}_hi": b.hi,
                        f"reverse_{c}_n": b.n}
            for c in GAP_COORDS:
                s = stats.summary(sub[f"loss_gap_{c}"])
                row |= {f"loss_gap_{c}": s.mean, f"loss_gap_{c}_lo": s.lo, f"loss_gap_{c}_hi": s.hi,
                        f"loss_gap_{c}_n": s.n}
            row["interval"] = stats.bootstrap_mean([]).method
            row["loss_gap_interval"] = stats.T_INTERVAL
            row["run_ids"] = "; ".join(sub["run_id"])
            row["baseline_runs"] = "; ".join(sub["baseline_run"])
            row["source"] = "; ".join(sorted({x for src in sub["source"] for x in src.split("; ")}))
            rows.append(row)
    return pd.DataFrame(rows)


def _shown_summary(summ):
    shown = summ[["panel", "method", "baseline"]].copy()
    shown["reached"] = [f"{k} of {n}" for k, n in zip(summ["n_reached"], summ["n_pairs"], strict=True)]
    shown["paired"] = ["yes" if p else "no" for p in summ["paired"]]
    for c in COORDS:
        shown[f"speedup_{c} [95% CI]"] = [
            NOT_REACHED if k == 0 else stats.fmt_interval(m, lo, hi, n, "{:.2f}×")
            for k, m, lo, hi, n in zip(summ["n_reached"], summ[f"speedup_{c}"], summ[f"speedup_{c}_lo"],
                                       summ[f"speedup_{c}_hi"], summ[f"speedup_{c}_n"], strict=True)]
    shown["reverse_flops [95% CI]"] = [
        stats.fmt_interval(m, lo, hi, int(n), "{:.2f}×") for m, lo, hi, n in
        zip(summ["reverse_flops"], summ["reverse_flops_lo"], summ["reverse_flops_hi"], summ["reverse_flops_n"],
            strict=True)]
    shown["loss_gap_flops [95% CI]"] = [
        stats.fmt_interval(m, lo, hi, int(n), "{:+.4f}") for m, lo, hi, n in
        zip(summ["loss_gap_flops"], summ["loss_gap_flops_lo"], summ["loss_gap_flops_hi"], summ["loss_gap_flops_n"],
            strict=True)]
    shown["run_ids"] = summ["run_ids"]
    shown["source"] = summ["source"]
    return shown


def _bar_chart(summ, table, d: Design, out: Outputs, caption: str, inputs: list[str]) -> None:
    import numpy as np

    from metapretrain.figures import style

    meta = table[table["run_id"] != table["baseline_run"]]
    panels = [p for p in d.panels() if p in set(summ["panel"])]
    order = {m: i for i, m in enumerate(d.methods())}
    series = sorted({(m, b) for m, b in zip(summ["method"], summ["baseline"], strict=True)},
                    key=lambda mb: (order.get(mb[0], 0), order.get(mb[1], 0)))
    multi = len({b for _, b in series}) > 1
    colors = style.method_colors(d.methods())
    fig, axes = style.subplots(len(COORDS), max_cols=2, w=max(2.6, 0.8 * len(panels) + 1.0), h=2.4, sharey=True)
    width = 0.8 / max(len(series), 1)
    cols = [f"{k}_{c}{x}" for k in ("speedup", "reverse") for c in COORDS for x in ("", "_hi")]
    top = np.nanmax(summ[cols].to_numpy(dtype=float), initial=1.0)
    top = max(top, np.nanmax(meta[[f"speedup_{c}" for c in COORDS]].to_numpy(dtype=float), initial=1.0))
    for ax, coord in zip(axes, COORDS, strict=True):
        ax.axhline(1.0, color=style.VANILLA_COLOR, lw=0.8, ls="--", zorder=1)
        for j, (m, base) in enumerate(series):
            name = f"{m} vs {base}" if multi else m
            for i, p in enumerate(panels):
                sel = summ[(summ["panel"] == p) & (summ["method"] == m) & (summ["baseline"] == base)]
                if sel.empty:
                    continue
                row = sel.iloc[0]
                x = i - 0.4 + width * (j + 0.5)
                kind = "speedup" if row["n_reached"] > 0 else "reverse"
                v = float(row[f"{kind}_{coord}"])
                if not math.isfinite(v):
                    if row["n_reached"] == 0:
                        ax.text(x, 0.02 * top, f"{name}: {NOT_REACHED}", rotation=90, ha="center", va="bottom",
                                fontsize=6.5, color=colors[m], fontweight="bold", zorder=3)
                    continue
                hatch = None if kind == "speedup" else "///"
                ax.bar(x, v, width=width * 0.9, color=colors[m], label=name if i == 0 else None, zorder=2,
                       hatch=hatch, alpha=1.0 if kind == "speedup" else 0.55, edgecolor=colors[m])
                lo, hi = float(row[f"{kind}_{coord}_lo"]), float(row[f"{kind}_{coord}_hi"])
                if math.isfinite(lo) and math.isfinite(hi):
                    ax.errorbar(x, v, yerr=[[v - lo], [hi - v]], color="black", lw=0.8, capsize=2, zorder=4)
                if row["n_pairs"] > 1:
                    pts = meta[meta["run_id"].isin(str(row["run_ids"]).split("; ")) & (meta["baseline"] == base)]
                    if kind == "speedup":
                        pts = pts[pts["reached"].astype(bool)]
                    ax.plot([x] * len(pts), pts[f"{kind}_{coord}"], ls="", marker="o", ms=2.5, mfc="white",
                            mec="black", mew=0.5, zorder=5)
                if kind == "speedup":
                    note = "" if row["n_reached"] == row["n_pairs"] else \
                        f"\n{row['n_reached']}/{row['n_pairs']} reached"
                else:
                    note = f"\n{NOT_REACHED}:\nat meta's loss"
                ax.text(x, v if not math.isfinite(hi) else hi, f"{v:.2f}×{note}", ha="center", va="bottom",
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
                                         "dots: pairs; hatched: not reached, speedup at the meta run's final loss")
    out.figure(fig, "speedup", "speedup_to_equal_loss", caption, inputs)
