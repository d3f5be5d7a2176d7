"""The checkpoint sweep: UNER micro-F1 against the pretraining step it was fine-tuned from.

The companion paper fine-tunes from every checkpoint of a run (its Figs 4–6: in-language F1 saturates
early while cross-lingual F1 keeps rising). Here the points are the `step-<N>` readings that
`finetune.checkpoints` adds (ner/results.csv) plus each run's `final` reading, at its
`checkpoint_step`.

**Aggregation** (as `ner.summary_table`): per run, regime, step and eval group, micro-F1 is averaged
over the group's eval sets per train set, then over the train sets; the curves and the table give each
cell's (method, panel) mean over its replicate runs with a 95% Student-t interval (none for n = 1).
Per entity type, `<TYPE>_f1` is averaged over every eval set the same way.
"""

from __future__ import annotations

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.ner import KIND_TITLES, KINDS, prepare
from metapretrain.figures.outputs import Outputs, safe_name
from metapretrain.figures.pairing import Design


def sweep_rows(df):
    """Test-split rows of the runs that have a sweep: their `step-<N>` and `final` readings, with `step`."""
    import pandas as pd

    swept = set(df.loc[df["reading"].str.startswith("step-"), "pretrain_run"])
    sub = df[df["pretrain_run"].isin(swept) & ((df["reading"] == "final") | df["reading"].str.startswith("step-"))]
    sub = sub.assign(step=pd.to_numeric(sub["checkpoint_step"], errors="coerce"))
    return sub.dropna(subset=["step"])


def per_run(rows, metric: str = "micro_f1", by_kind: bool = True):
    """{(run, regime, step, group): value}: the mean over train sets of the mean over the group's eval sets."""
    out: dict[tuple, float] = {}
    sel = rows[rows["metric"] == metric]
    for (rid, regime, step), g in sel.groupby(["pretrain_run", "regime", "step"]):
        groups = {k: [] for k in (*KINDS, "all")}
        for _, t in g.groupby("train_set"):
            for k in (*KINDS, "all") if by_kind else ("all",):
                vals = (t if k == "all" else t[t["eval_kind"] == k])["value"].dropna()
                if len(vals):
                    groups[k].append(float(vals.mean()))
        for k, vals in groups.items():
            if vals:
                out[(rid, regime, int(step), k)] = sum(vals) / len(vals)
    return out


def sweep_table(data: ExperimentData, d: Design):
    """One row per cell, regime, eval group and step: n runs, mean micro-F1 and its 95% interval."""
    import pandas as pd

    rows = sweep_rows(prepare(data.ner))
    if rows.empty:
        return pd.DataFrame()
    values = per_run(rows)
    out = []
    for (panel, method), rids in d.cells(sorted(set(rows["pretrain_run"]))).items():
        keys = sorted({(r, s, k) for (rid, r, s, k) in values if rid in rids},
                      key=lambda x: (x[0] != "head", x[0], (*KINDS, "all").index(x[2]), x[1]))
        for regime, step, kind in keys:
            s = stats.summary([values[(rid, regime, step, kind)] for rid in rids if (rid, regime, step, kind) in values])
            out.append({"panel": panel, "method": method, "regime": regime, "group": kind, "step": step, "n": s.n,
                        "micro_f1": s.mean, "micro_f1_lo": s.lo, "micro_f1_hi": s.hi, "run_ids": "; ".join(rids),
                        "source": "ner/results.csv"})
    return pd.DataFrame(out)


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    if data.ner is None:
        return
    table = sweep_table(data, d)
    if table.empty:
        data.skip("checkpoint sweep: no fine-tune from an earlier checkpoint (finetune.checkpoints is `final`)")
        return
    inputs = ["ner/results.csv"]
    ns = "/".join(map(str, sorted(set(table["n"]))))
    caption = ("UNER test micro-F1 against the pretraining step fine-tuned from (finetune.checkpoints; the last "
               "point of each run is its final checkpoint): per run the mean over each group's eval sets per train "
               f"set, then over train sets; per cell the mean over its runs (n = {ns}, replicate axes: "
               f"{d.replicates_text()}) with a {stats.T_INTERVAL} (none for n = 1).")
    shown = table.copy()
    shown["micro-F1 [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:.3f}") for m, lo, hi, n in
                                  zip(table["micro_f1"], table["micro_f1_lo"], table["micro_f1_hi"], table["n"],
                                      strict=True)]
    out.table(table, "ner_checkpoint_sweep", caption, inputs,
              display=shown.drop(columns=["micro_f1", "micro_f1_lo", "micro_f1_hi"]), latex_drop=("source", "run_ids"))
    _curves(table, d, out, caption, inputs, "group", "ner_f1_vs_step")
    entity = _entity_table(data, d)
    if not entity.empty:
        ecaption = caption.replace("UNER test micro-F1", "UNER test F1 per entity type (over every eval set)")
        _curves(entity, d, out, ecaption, inputs, "group", "ner_entity_f1_vs_step")


def _entity_table(data: ExperimentData, d: Design):
    """As `sweep_table`, one group per entity type (`<TYPE>_f1` over every eval set)."""
    import pandas as pd

    rows = sweep_rows(prepare(data.ner))
    metrics = sorted(m for m in set(rows["metric"]) if m.endswith("_f1") and m != "micro_f1")
    out = []
    for metric in metrics:
        values = per_run(rows, metric, by_kind=False)
        for (panel, method), rids in d.cells(sorted(set(rows["pretrain_run"]))).items():
            for regime, step in sorted({(r, s) for (rid, r, s, _) in values if rid in rids}):
                s = stats.summary([values[(rid, regime, step, "all")] for rid in rids
                                   if (rid, regime, step, "all") in values])
                out.append({"panel": panel, "method": method, "regime": regime, "group": metric[: -len("_f1")],
                            "step": step, "n": s.n, "micro_f1": s.mean, "micro_f1_lo": s.lo, "micro_f1_hi": s.hi})
    return pd.DataFrame(out)


def _curves(table, d: Design, out: Outputs, caption: str, inputs: list[str], col: str, name: str) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from metapretrain.figures import style

    methods = [m for m in d.methods() if m in set(table["method"])]
    colors, dashes = style.method_colors(methods), style.method_linestyles(methods)
    for panel in [p for p in d.panels() if p in set(table["panel"])]:
        for regime in sorted(set(table["regime"]), key=lambda r: (r != "head", r)):
            sub = table[(table["panel"] == panel) & (table["regime"] == regime)]
            groups = list(dict.fromkeys(sub[col]))
            if sub.empty:
                continue
            fig, axes = style.subplots(len(groups), max_cols=4, w=3.0, h=2.4, sharey=True)
            for ax, group in zip(axes, groups, strict=False):
                for method in methods:
                    g = sub[(sub[col] == group) & (sub["method"] == method)].sort_values("step")
                    if g.empty:
                        continue
                    x = g["step"].to_numpy(float)
                    ax.plot(x, g["micro_f1"], marker="o", ms=2.5, color=colors[method], ls=dashes[method],
                            label=method)
                    lo, hi = g["micro_f1_lo"].to_numpy(float), g["micro_f1_hi"].to_numpy(float)
                    ok = np.isfinite(lo) & np.isfinite(hi)
                    if ok.any():
                        ax.fill_between(x[ok], lo[ok], hi[ok], color=colors[method], alpha=0.18, lw=0)
                ax.set_xscale("symlog", linthresh=max(1.0, float(sub["step"][sub["step"] > 0].min() or 1)))
                ax.set_title(KIND_TITLES.get(group, group))
                ax.set_xlabel("pretraining step (symlog)")
                ax.set_ylabel("micro-F1" if col == "group" and group in KIND_TITLES else "F1")
            fig.suptitle(f"{panel} · {regime} fine-tuning")
            fig.tight_layout()
            style.figure_legend(fig, list(axes))
            out.figure(fig, "ner", safe_name(name, panel, regime), f"{caption} {panel}, {regime} fine-tuning.",
                       inputs)
            plt.close(fig)

