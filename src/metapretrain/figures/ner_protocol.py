"""The paper's UNER tables (notes/paper.md M-T-1..M-T-4), over replicates, from ner/results.csv.

* **M-T-1** `ner_mt1_summary`: summary micro-F1 per cell (method × panel) and regime, one column per eval
  group (In-Lang / PUD / Other by default, `finetune.eval_groups`) and `Mean` (every grouped eval set):
  for each run, regime and train set the mean over the group's eval sets, then the mean over train sets
  (each weighing the same, `all` included: the paper's heatmap.py), then mean ± 95% CI over the cell's runs.
* **M-T-2** `ner_mt2_diagonal`: the diagonal, train set = eval set, per language × regime.
* **M-T-3** `ner_mt3_per_tag`: absolute per-tag F1 (PER / LOC / ORG ...) on the diagonal, per language.
* **M-T-4** `ner_mt4_zero_shot`: zero-shot F1 on the `other` group after fine-tuning on `all`: the mean
  over the group's sets (overall) and per set.

Only test-split rows of final readings (`figures.ner.prepare`, `finals`). Each run gives one value per
table entry; a cell's entry is the mean over its runs with a Student-t 95% interval (`figures.stats`; no
interval for n = 1). A table whose inputs are missing is skipped with the reason (`data.skip`).
Every caption names the F1 mode of its rows.
"""

from __future__ import annotations

from metapretrain.figures import ner, stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design

MEAN = "Mean"
ZERO_SHOT_GROUP = "other"
ZERO_SHOT_TRAIN = "all"
INPUTS = ["ner/results.csv"]


def _regimes(df) -> list[str]:
    return sorted(df["regime"].unique(), key=lambda r: (r != "head", r))


def _rows(data: ExperimentData):
    """Test-split final-reading rows of ner/results.csv (prepared), or None without any."""
    if data.ner is None:
        return None
    df = ner.finals(ner.prepare(data.ner))
    return df if len(df) else None


def run_group_means(df):
    """Per run, regime and eval group (and `Mean` over every grouped set): mean over train sets of the mean
    micro-F1 over the group's eval sets. Columns pretrain_run, regime, group, value."""
    import pandas as pd

    from metapretrain.data.uner import UNGROUPED

    f1 = df[df["metric"] == "micro_f1"].dropna(subset=["value"])
    groups = [g for g in ner.groups_in(f1) if g != UNGROUPED]
    rows = []
    for (rid, regime), sub in f1.groupby(["pretrain_run", "regime"]):
        per = {g: [] for g in (*groups, MEAN)}
        for _, g in sub.groupby("train_set"):
            for grp in groups:
                vals = g.loc[g["eval_group"] == grp, "value"]
                if len(vals):
                    per[grp].append(vals.mean())
            vals = g.loc[g["eval_group"].isin(groups), "value"]
            if len(vals):
                per[MEAN].append(vals.mean())
        for grp, vals in per.items():
            if vals:
                rows.append({"pretrain_run": rid, "regime": regime, "group": grp, "value": sum(vals) / len(vals)})
    return pd.DataFrame(rows, columns=["pretrain_run", "regime", "group", "value"])


def cell_table(long, d: Design, row_keys: list[str], col_key: str, columns: list[str], col_name=str):
    """`long` (pretrain_run, *row_keys, col_key, value: one value per run) -> one row per cell × row keys,
    with `<col>`, `<col> lo`, `<col> hi`, `<col> n` per column (mean and 95% interval over the cell's runs)."""
    import pandas as pd

    rows = []
    keys = [()]
    if row_keys:  # head-only regime first, as in the paper
        keys = sorted(set(long[row_keys].itertuples(index=False, name=None)),
                      key=lambda k: tuple((str(v) != "head", str(v)) for v in k))
    for (panel, method), rids in d.cells(long["pretrain_run"].unique()).items():
        mine = long[long["pretrain_run"].isin(rids)]
        for key in keys:
            sel = mine
            for k, v in zip(row_keys, key, strict=True):
                sel = sel[sel[k] == v]
            if sel.empty:
                continue
            row = {"panel": panel, "method": method, **dict(zip(row_keys, key, strict=True)),
                   "n": sel["pretrain_run"].nunique()}
            for col in columns:
                s = stats.summary(sel.loc[sel[col_key] == col, "value"])
                name = col_name(col)
                row |= {name: s.mean, f"{name} lo": s.lo, f"{name} hi": s.hi, f"{name} n": s.n}
            row["run_ids"] = "; ".join(sorted(sel["pretrain_run"].unique()))
            row["source"] = "ner/results.csv"
            rows.append(row)
    return pd.DataFrame(rows)


def mt1_summary(df, d: Design):
    """M-T-1: rows cell × regime; columns the eval groups (titles) and Mean."""
    long = run_group_means(df)
    if long.empty:
        return long
    groups = [g for g in dict.fromkeys(long["group"]) if g != MEAN]
    groups = [g for g in ner.groups_in(df) if g in groups] + [MEAN]
    return cell_table(long, d, ["regime"], "group", groups, lambda g: g if g == MEAN else ner.group_title(g))


def diagonal_runs(df, metric: str = "micro_f1"):
    """Per run, regime and language: the test F1 of fine-tuning on that language's train set."""
    sel = df[(df["metric"] == metric) & (df["train_set"] == df["eval_set"])].dropna(subset=["value"])
    return (sel.groupby(["pretrain_run", "regime", "eval_set"], as_index=False)["value"].mean()
            .rename(columns={"eval_set": "language"}))


def mt2_diagonal(df, d: Design):
    """M-T-2: rows cell × regime; columns each language with its own train set, and their mean."""
    long = diagonal_runs(df)
    if long.empty:
        return long
    import pandas as pd

    langs = sorted(long["language"].unique())
    mean = long.groupby(["pretrain_run", "regime"], as_index=False)["value"].mean().assign(language=MEAN)
    return cell_table(pd.concat([long, mean], ignore_index=True), d, ["regime"], "language", [*langs, MEAN])


def mt3_per_tag(df, d: Design):
    """M-T-3: rows cell × regime × entity type; columns each diagonal language and their mean (absolute F1)."""
    import pandas as pd

    tags = sorted({m[: -len("_f1")] for m in df["metric"].astype(str)
                   if m.endswith("_f1") and not m.startswith("micro")})
    parts = [diagonal_runs(df, f"{t}_f1").assign(entity=t) for t in tags]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return pd.DataFrame()
    long = pd.concat(parts, ignore_index=True)
    langs = sorted(long["language"].unique())
    mean = long.groupby(["pretrain_run", "regime", "entity"], as_index=False)["value"].mean().assign(language=MEAN)
    return cell_table(pd.concat([long, mean], ignore_index=True), d, ["regime", "entity"], "language",
                      [*langs, MEAN])


def mt4_zero_shot(df, d: Design, group: str = ZERO_SHOT_GROUP, train_set: str = ZERO_SHOT_TRAIN):
    """M-T-4: rows cell × regime; columns `overall` (mean over the group's sets) and each set of the group,
    after fine-tuning on `train_set`."""
    import pandas as pd

    sel = df[(df["metric"] == "micro_f1") & (df["train_set"] == train_set) & (df["eval_group"] == group)]
    sel = sel.dropna(subset=["value"])
    if sel.empty:
        return pd.DataFrame()
    per_set = (sel.groupby(["pretrain_run", "regime", "eval_set"], as_index=False)["value"].mean())
    overall = per_set.groupby(["pretrain_run", "regime"], as_index=False)["value"].mean().assign(eval_set="overall")
    sets = sorted(per_set["eval_set"].unique())
    return cell_table(pd.concat([overall, per_set], ignore_index=True), d, ["regime"], "eval_set",
                      ["overall", *sets])


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    df = _rows(data)
    if df is None or not (df["metric"] == "micro_f1").any():
        data.skip("NER protocol tables M-T-1..M-T-4: no test-split final-reading micro_f1 rows in ner/results.csv")
        return
    mode = ner.f1_text(df)
    over = (f"mean over the runs of each cell (replicate axes: {d.replicates_text()}) with a {stats.T_INTERVAL} "
            "(none for n = 1)")

    t1 = mt1_summary(df, d)
    if t1.empty:
        data.skip("M-T-1: no eval set of ner/results.csv is in an eval group (finetune.eval_groups)")
    else:
        groups = [c for c in t1.columns if f"{c} lo" in t1.columns]
        out.table(t1, "ner_mt1_summary",
                  f"M-T-1: UNER summary micro-F1 per {d.panel_title()}, method and fine-tuning regime, by eval "
                  f"group ({', '.join(groups)}; {MEAN} = every grouped eval set): per run, mean over the group's "
                  f"test sets per train set, then over train sets; {over}. {mode}.", INPUTS,
                  display=ner.shown_cells(t1, ["panel", "method", "regime"]), latex_drop=("source", "run_ids"))

    t2 = mt2_diagonal(df, d)
    if t2.empty:
        data.skip("M-T-2: no fine-tune was evaluated on its own train set's test split")
    else:
        out.table(t2, "ner_mt2_diagonal",
                  f"M-T-2: UNER micro-F1 when the eval set is the train set (the diagonal), per language, "
                  f"{d.panel_title()}, method and regime ({MEAN}: over the languages); {over}. {mode}.", INPUTS,
                  display=ner.shown_cells(t2, ["panel", "method", "regime"]), latex_drop=("source", "run_ids"))

    t3 = mt3_per_tag(df, d)
    if t3.empty:
        data.skip("M-T-3: ner/results.csv has no per-tag <TYPE>_f1 rows on the diagonal")
    else:
        out.table(t3, "ner_mt3_per_tag",
                  f"M-T-3: UNER absolute per-tag F1 on the diagonal (eval set = train set), per entity type, "
                  f"language, {d.panel_title()}, method and regime ({MEAN}: over the languages); {over}. {mode}.",
                  INPUTS, display=ner.shown_cells(t3, ["panel", "method", "regime", "entity"]),
                  latex_drop=("source", "run_ids"))

    t4 = mt4_zero_shot(df, d)
    if t4.empty:
        data.skip(f"M-T-4: no fine-tune on '{ZERO_SHOT_TRAIN}' was evaluated on an eval set of the "
                  f"'{ZERO_SHOT_GROUP}' group")
    else:
        out.table(t4, "ner_mt4_zero_shot",
                  f"M-T-4: zero-shot micro-F1 on the {ner.group_title(ZERO_SHOT_GROUP)} eval group (no train "
                  f"split) after fine-tuning on '{ZERO_SHOT_TRAIN}' (every train split), per {d.panel_title()}, "
                  f"method and regime: overall = mean over the group's sets, then each set; {over}. {mode}.",
                  INPUTS, display=ner.shown_cells(t4, ["panel", "method", "regime"]),
                  latex_drop=("source", "run_ids"))
