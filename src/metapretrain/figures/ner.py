"""Universal NER: micro-F1 heatmaps, the summary table, and ΔF1 (meta − vanilla) by entity type and size.

Only test-split rows are used when the table has an `eval_split` column with
test rows. Eval sets are grouped by `eval_kind`: `in_language` (eval set =
train set), `cross_lingual` (another treebank that has a train split) and
`test_only` (a treebank with no train split); a table without `eval_kind`
gets in_language/cross_lingual from the set names.

**Summary aggregation** (as the paper's heatmap.py): for each run, regime and
train set, average micro-F1 over the eval sets of each kind (and over all
eval sets for `mean`), then average those over the train sets, each train
set weighing the same.

**ΔF1** pairs a meta run with its vanilla baseline (see `pairing`) on the same
train set, regime, eval set and split, and averages meta − vanilla over the
matched pairs of each eval kind (and over all of them).
"""

from __future__ import annotations

import math

from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs, safe_name
from metapretrain.figures.pairing import Design

KINDS = ("in_language", "cross_lingual", "test_only")
KIND_TITLES = {"in_language": "in-language", "cross_lingual": "cross-lingual", "test_only": "test-only",
               "all": "all eval sets"}


def prepare(ner):
    """Test-split rows with an `eval_kind` column."""
    df = ner.copy()
    if "eval_split" in df and (df["eval_split"] == "test").any():
        df = df[df["eval_split"] == "test"]
    if "eval_kind" not in df:
        df["eval_kind"] = ["in_language" if t == e else "cross_lingual"
                           for t, e in zip(df["train_set"], df["eval_set"], strict=True)]
    if "eval_split" not in df:
        df["eval_split"] = "test"
    return df


def summary_table(data: ExperimentData, d: Design):
    """Rows: method × panel (one per run); columns: `<regime> <kind>` mean micro-F1 (module docstring)."""
    import pandas as pd

    df = prepare(data.ner)
    df = df[df["metric"] == "micro_f1"]
    regimes = sorted(df["regime"].unique(), key=lambda r: (r != "head", r))
    rows = []
    order = {p: i for i, p in enumerate(d.panels())}
    runs = sorted(df["pretrain_run"].unique(), key=lambda r: (d.methods().index(d.label[r]), order[d.panel[r]], r))
    for rid in runs:
        row = {"method": d.label[rid], "panel": d.panel[rid], "run_id": rid}
        for regime in regimes:
            sub = df[(df["pretrain_run"] == rid) & (df["regime"] == regime)]
            per_train = {k: [] for k in (*KINDS, "mean")}
            for _, g in sub.groupby("train_set"):
                for k in KINDS:
                    vals = g.loc[g["eval_kind"] == k, "value"].dropna()
                    if len(vals):
                        per_train[k].append(vals.mean())
                vals = g["value"].dropna()
                if len(vals):
                    per_train["mean"].append(vals.mean())
            for k in (*KINDS, "mean"):
                name = KIND_TITLES.get(k, k)
                row[f"{regime} {name}"] = sum(per_train[k]) / len(per_train[k]) if per_train[k] else math.nan
            row[f"{regime} train sets"] = sub["train_set"].nunique()
        row["source"] = "ner/results.csv"
        rows.append(row)
    table = pd.DataFrame(rows)
    # Drop kinds absent from every row (e.g. no test-only treebank in the data).
    return table[[c for c in table.columns if not table[c].isna().all()]]


def delta_table(data: ExperimentData, d: Design):
    """ΔF1 = meta − vanilla per (meta run, regime, eval kind, entity); entity `micro` is micro-F1."""
    import pandas as pd

    df = prepare(data.ner)
    df = df[df["metric"].astype(str).str.endswith("_f1")]
    key = ["train_set", "regime", "eval_set", "eval_split", "metric"]
    rows = []
    for rid, base in d.baseline.items():
        if base is None:
            continue
        a, b = df[df["pretrain_run"] == rid], df[df["pretrain_run"] == base]
        if a.empty or b.empty:
            continue
        m = a.merge(b[[*key, "value"]], on=key, suffixes=("", "_vanilla"))
        m["delta"] = m["value"] - m["value_vanilla"]
        m = m.dropna(subset=["delta"])
        for (regime, metric), g in m.groupby(["regime", "metric"]):
            entity = "micro" if metric == "micro_f1" else metric[: -len("_f1")]
            for scope in (*KINDS, "all"):
                s = g if scope == "all" else g[g["eval_kind"] == scope]
                if s.empty:
                    continue
                rows.append({"panel": d.panel[rid], "method": d.label[rid], "run_id": rid, "baseline_run": base,
                             "regime": regime, "scope": scope, "entity": entity,
                             "meta_f1": s["value"].mean(), "vanilla_f1": s["value_vanilla"].mean(),
                             "delta_f1": s["delta"].mean(), "n_pairs": len(s), "source": "ner/results.csv"})
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    order = {p: i for i, p in enumerate(d.panels())}
    t["_o"] = [(order[p], m, r, s, e != "micro", e) for p, m, r, s, e in
               zip(t["panel"], t["method"], t["regime"], t["scope"], t["entity"], strict=True)]
    return t.sort_values("_o").drop(columns="_o").reset_index(drop=True)


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    if data.ner is None:
        return
    df = prepare(data.ner)
    if df.empty or not (df["metric"] == "micro_f1").any():
        data.skip("NER: ner/results.csv has no test-split micro_f1 rows")
        return
    inputs = ["ner/results.csv"]
    _heatmaps(df, d, out, inputs)
    table = summary_table(data, d)
    out.table(table, "ner_summary",
              "UNER micro-F1 summary per method and model: mean over the eval sets of each kind per train set, "
              "then over train sets, per fine-tuning regime (head-only / full).", inputs,
              formats={c: "{:.3f}" for c in table.columns if not c.endswith("train sets")})
    deltas = delta_table(data, d)
    if deltas.empty:
        data.skip("NER ΔF1: no meta run has a vanilla baseline with matching NER results")
        return
    caption = ("ΔF1 = meta − vanilla (paired by the pairing rule), averaged over matched train set × eval set "
               "pairs, by entity type, eval kind, regime and model.")
    out.table(deltas, "ner_delta_f1", caption, inputs,
              formats={"meta_f1": "{:.3f}", "vanilla_f1": "{:.3f}", "delta_f1": "{:+.3f}"})
    _delta_figure(deltas, d, out, caption, inputs)


def _eval_order(df) -> tuple[list[str], int]:
    test_only = sorted(set(df.loc[df["eval_kind"] == "test_only", "eval_set"]))
    trainable = sorted(set(df["eval_set"]) - set(test_only))
    return trainable + test_only, len(trainable)


def _heatmaps(df, d: Design, out: Outputs, inputs: list[str]) -> None:
    import seaborn as sns

    from metapretrain.figures import style

    f1 = df[df["metric"] == "micro_f1"]
    cols, n_trainable = _eval_order(f1)
    rows = sorted(set(f1["train_set"]), key=lambda s: (s == "all", s))
    for panel in d.panels():
        for regime in sorted(f1["regime"].unique()):
            has = f1.loc[f1["regime"] == regime, "pretrain_run"]
            rids = sorted({rid for rid in has if d.panel[rid] == panel},
                          key=lambda rid: (d.methods().index(d.label[rid]), rid))
            if not rids:
                continue
            longest = max(len(str(r)) for r in rows)
            w = 0.5 * len(cols) + 0.06 * longest + 1.6
            # Many eval sets: stack the methods vertically so each heatmap keeps readable cells.
            fig, axes = style.subplots(len(rids), max_cols=2 if len(cols) <= 6 else 1, w=w,
                                       h=0.4 * len(rows) + 2.3)
            for k, (ax, rid) in enumerate(zip(axes, rids, strict=True)):
                sub = f1[(f1["pretrain_run"] == rid) & (f1["regime"] == regime)]
                grid = sub.pivot_table(index="train_set", columns="eval_set", values="value", aggfunc="mean")
                grid = grid.reindex(index=rows, columns=cols)
                sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap=style.SEQ_CMAP, annot=len(cols) <= 20,
                            fmt=".2f", annot_kws={"fontsize": 6}, cbar=False, linewidths=0.3, linecolor="white")
                if 0 < n_trainable < len(cols):
                    ax.axvline(n_trainable, color="black", lw=1.5)
                ax.set_title(d.label[rid])
                ax.set_xlabel("eval set (test split)")
                ax.set_ylabel("train set" if k == 0 else "")
                ax.tick_params(axis="y", rotation=0)
            fig.suptitle(f"{panel} · {regime} fine-tuning")
            fig.tight_layout()
            fig.colorbar(axes[0].collections[0], ax=axes, fraction=0.03, pad=0.02, label="micro-F1")
            caption = (f"UNER strict entity-level micro-F1 on each test set (columns; test-only treebanks right of "
                       f"the black line) after {regime} fine-tuning on each train set (rows), model {panel}.")
            out.figure(fig, "ner", safe_name("ner_f1_heatmap", panel, regime), caption, inputs)


def _delta_figure(deltas, d: Design, out: Outputs, caption: str, inputs: list[str]) -> None:
    import numpy as np

    from metapretrain.figures import style

    scopes = [s for s in (*KINDS, "all") if (deltas["scope"] == s).any()]
    regimes = sorted(deltas["regime"].unique(), key=lambda r: (r != "head", r))
    entities = sorted(deltas["entity"].unique(), key=lambda e: (e != "micro", e))
    xs = list(dict.fromkeys(zip(deltas["panel"], deltas["method"], strict=True)))
    multi = len({m for _, m in xs}) > 1
    colors = dict(zip(entities, style.OKABE_ITO, strict=False))
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(scopes), len(regimes), squeeze=False, sharey=True,
                             figsize=(max(2.8, 0.8 * len(xs) + 1.6) * len(regimes), 2.2 * len(scopes)))
    width = 0.8 / len(entities)
    for i, scope in enumerate(scopes):
        for j, regime in enumerate(regimes):
            ax = axes[i][j]
            ax.axhline(0, color="black", lw=0.8)
            for k, ent in enumerate(entities):
                vals = []
                for p, m in xs:
                    sel = deltas[(deltas["panel"] == p) & (deltas["method"] == m) & (deltas["regime"] == regime)
                                 & (deltas["scope"] == scope) & (deltas["entity"] == ent)]
                    vals.append(float(sel["delta_f1"].iloc[0]) if len(sel) else np.nan)
                pos = np.arange(len(xs)) - 0.4 + width * (k + 0.5)
                ax.bar(pos, np.array(vals) * 100, width=width * 0.9, color=colors[ent],
                       label="micro-F1" if ent == "micro" else f"{ent} F1")
            ax.set_xticks(range(len(xs)), [f"{p}\n{m}" if multi else p for p, m in xs], fontsize=7)
            ax.set_title(f"{regime} fine-tuning · {KIND_TITLES[scope]}")
            if j == 0:
                ax.set_ylabel("ΔF1, meta − vanilla (pp)")
            if i == len(scopes) - 1:
                ax.set_xlabel("model")
    flat = [a for row in axes for a in row]
    fig.tight_layout()
    style.figure_legend(fig, flat, ncol=len(entities))
    out.figure(fig, "ner", "ner_delta_f1", caption, inputs)
