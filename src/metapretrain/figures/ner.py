"""Universal NER: micro-F1 heatmaps, the summary table, and ΔF1 (meta − vanilla) by entity type and size.

Only test-split rows are used when the table has an `eval_split` column with
test rows. Eval sets are grouped by `eval_kind`: `in_language` (eval set =
train set), `cross_lingual` (another treebank that has a train split) and
`test_only` (a treebank with no train split); a table without `eval_kind`
gets in_language/cross_lingual from the set names.

**Eval groups** (`eval_group`, `finetune.eval_groups`): the paper's In-Lang (the 9 treebanks with a
train split), PUD (6) and Other (3 low-resource sets), or whatever groups the config names; a table
without the column (or a row with it empty) gets the default groups by eval-set name. The summary gets
one column per group, ΔF1 one scope `group:<name>` per group, beside the eval kinds.

**F1 mode** (`f1_mode`, `finetune.f1_mode`): strict IOB2 or seqeval's default mode; rows written before
the column existed are strict. Every caption names the mode(s) of its rows.

**Summary aggregation** (as the paper's heatmap.py): for each run, regime and
train set, average micro-F1 over the eval sets of each kind (and over all
eval sets for `mean`), then average those over the train sets, each train
set weighing the same.

**ΔF1** pairs a meta run with its vanilla baseline (see `pairing`) on the same
train set, regime, eval set and split, and averages meta − vanilla over the
matched pairs of each eval kind (and over all of them).

**Readings** (`reading` in ner/results.csv; metapretrain.matching): `final` rows fine-tune each run's
final checkpoint; `matched-<unit>` rows fine-tune a vanilla run from its last checkpoint at or before
a meta run's (`matched_to`) final steps / next-token tokens / FLOPs. Heatmaps and the summary use
final readings; ΔF1 is reported per reading, the matched one comparing the meta run's final checkpoint
with the vanilla checkpoint matched to it (compute-matched: the paper's "under equal compute").

**Over replicates** (seeds, `pairing`): each run's summary value is one
replicate of its cell (method, panel): `ner_summary_cells` gives the mean and
95% Student-t interval. Each meta run's ΔF1 is one pair (meta seed s against
vanilla seed s); `ner_delta_f1_tests` gives per cell, regime, eval kind and
entity the mean ΔF1 over pairs, its 95% interval and the two-sided paired
t-test p-value (Welch's test when some pair is not same-replicate).
The heatmaps show each cell's mean over its replicates.
"""

from __future__ import annotations

import math

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs, safe_name
from metapretrain.figures.pairing import Design

KINDS = ("in_language", "cross_lingual", "test_only")
KIND_TITLES = {"in_language": "in-language", "cross_lingual": "cross-lingual", "test_only": "test-only",
               "all": "all eval sets"}
GROUP_TITLES = {"in_language": "In-Lang", "pud": "PUD", "other": "Other"}
GROUP_SCOPE = "group:"


def group_title(group: str) -> str:
    """How a group is named in column headers: In-Lang / PUD / Other for the default ones."""
    return GROUP_TITLES.get(group, group)


def scope_title(scope: str) -> str:
    """A ΔF1 scope for captions and panel titles: an eval kind, `all`, or `group:<name>`."""
    if scope.startswith(GROUP_SCOPE):
        return f"{group_title(scope[len(GROUP_SCOPE):])} group"
    return KIND_TITLES.get(scope, scope)


def groups_in(df) -> list[str]:
    """The eval groups of a prepared table, default ones first (in their order), `ungrouped` last."""
    from metapretrain.data.uner import DEFAULT_EVAL_GROUPS, UNGROUPED

    present = set(df["eval_group"])
    out = [g for g in DEFAULT_EVAL_GROUPS if g in present]
    return out + sorted(present - set(out) - {UNGROUPED}) + ([UNGROUPED] if UNGROUPED in present else [])


def f1_text(df) -> str:
    """The F1 mode(s) of a table's rows, for captions."""
    from metapretrain.finetune.evaluate import F1_MODE_TEXT

    modes = sorted(set(df["f1_mode"])) if "f1_mode" in df and len(df) else ["strict"]
    text = " and ".join(F1_MODE_TEXT.get(m, m) for m in modes)
    return f"F1 mode: {text}" + (" (mixed modes: values are not comparable across them)" if len(modes) > 1 else "")


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
    if "reading" not in df:  # a table written before compute-matched readings existed
        df["reading"] = "final"
    for col in ("matched_to", "checkpoint_step", "match_target", "checkpoint_flops", "checkpoint_tokens_ntp"):
        if col not in df:
            df[col] = math.nan
    df["reading"] = ["final" if _missing(v) else str(v) for v in df["reading"]]
    df["matched_to"] = ["" if _missing(v) else str(v) for v in df["matched_to"]]
    from metapretrain.data.uner import DEFAULT_EVAL_GROUPS, eval_group

    given = df["eval_group"] if "eval_group" in df else [math.nan] * len(df)
    df["eval_group"] = [eval_group(e, DEFAULT_EVAL_GROUPS) if _missing(g) or g == "" else str(g)
                        for e, g in zip(df["eval_set"], given, strict=True)]
    given = df["f1_mode"] if "f1_mode" in df else [math.nan] * len(df)
    df["f1_mode"] = ["strict" if _missing(m) or m == "" else str(m) for m in given]
    return df


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def finals(df):
    """The rows of final-checkpoint readings."""
    return df[df["reading"] == "final"]


def baselines_of(d: Design) -> dict[str, list[str]]:
    """Meta run id -> every vanilla run it is compared with (`Design.baselines`, else its one baseline)."""
    many = getattr(d, "baselines", None)
    if many:
        return {rid: list(bases) for rid, bases in many.items() if bases}
    return {rid: [base] for rid, base in d.baseline.items() if base is not None}


def _match_ratio(rows) -> float:
    """Mean over a reading's rows of the count read / the meta run's final count (1 = exact match)."""
    import pandas as pd

    unit = str(rows["reading"].iloc[0]).removeprefix("matched-")
    col = {"steps": "checkpoint_step", "tokens": "checkpoint_tokens_ntp", "flops": "checkpoint_flops"}.get(unit)
    if col is None:
        return math.nan
    ratio = pd.to_numeric(rows[col], errors="coerce") / pd.to_numeric(rows["match_target"], errors="coerce")
    return float(ratio.mean())


def summary_table(data: ExperimentData, d: Design):
    """Rows: method × panel (one per run); columns: `<regime> <kind>` and `<regime> <group title>` mean
    micro-F1 (module docstring)."""
    import pandas as pd

    df = finals(prepare(data.ner))
    df = df[df["metric"] == "micro_f1"]
    regimes = sorted(df["regime"].unique(), key=lambda r: (r != "head", r))
    rows = []
    order = {p: i for i, p in enumerate(d.panels())}
    runs = sorted(df["pretrain_run"].unique(), key=lambda r: (d.methods().index(d.label[r]), order[d.panel[r]], r))
    groups = groups_in(df)
    for rid in runs:
        row = {"method": d.label[rid], "panel": d.panel[rid], "run_id": rid}
        for regime in regimes:
            sub = df[(df["pretrain_run"] == rid) & (df["regime"] == regime)]
            per_train = {k: [] for k in (*KINDS, "mean")}
            per_group = {g: [] for g in groups}
            for _, g in sub.groupby("train_set"):
                for k in KINDS:
                    vals = g.loc[g["eval_kind"] == k, "value"].dropna()
                    if len(vals):
                        per_train[k].append(vals.mean())
                for grp in groups:
                    vals = g.loc[g["eval_group"] == grp, "value"].dropna()
                    if len(vals):
                        per_group[grp].append(vals.mean())
                vals = g["value"].dropna()
                if len(vals):
                    per_train["mean"].append(vals.mean())
            for k in (*KINDS, "mean"):
                name = KIND_TITLES.get(k, k)
                row[f"{regime} {name}"] = sum(per_train[k]) / len(per_train[k]) if per_train[k] else math.nan
            for grp in groups:
                vals = per_group[grp]
                row[f"{regime} {group_title(grp)}"] = sum(vals) / len(vals) if vals else math.nan
            row[f"{regime} train sets"] = sub["train_set"].nunique()
        row["source"] = "ner/results.csv"
        rows.append(row)
    table = pd.DataFrame(rows)
    # Drop kinds absent from every row (e.g. no test-only treebank in the data).
    return table[[c for c in table.columns if not table[c].isna().all()]]


def delta_table(data: ExperimentData, d: Design):
    """ΔF1 = meta − vanilla per (meta run, baseline, reading, regime, scope, entity); a scope is an eval kind,
    `group:<eval group>` or `all`; entity `micro` is micro-F1. Reading `final`: both final checkpoints; `matched-<unit>`: the meta run's final checkpoint
    against the vanilla checkpoint matched to it (`vanilla_step`, `match_ratio` = count read / target)."""
    import pandas as pd

    df = prepare(data.ner)
    df = df[df["metric"].astype(str).str.endswith("_f1")]
    key = ["train_set", "regime", "eval_set", "eval_split", "metric"]
    rows = []
    for rid, bases in baselines_of(d).items():
        a = finals(df[df["pretrain_run"] == rid])
        if a.empty:
            continue
        for base in bases:
            b_all = df[df["pretrain_run"] == base]
            readings = [("final", finals(b_all))]
            matched = b_all[(b_all["reading"] != "final") & (b_all["matched_to"] == rid)]
            readings += [(r, g) for r, g in matched.groupby("reading", sort=True)]
            for reading, b in readings:
                if b.empty:
                    continue
                vanilla_step = pd.to_numeric(b["checkpoint_step"], errors="coerce")
                ratio = 1.0 if reading == "final" else _match_ratio(b)
                m = a.merge(b[[*key, "value"]], on=key, suffixes=("", "_vanilla"))
                m["delta"] = m["value"] - m["value_vanilla"]
                m = m.dropna(subset=["delta"])
                scopes = (*KINDS, *(GROUP_SCOPE + grp for grp in groups_in(m)), "all")
                for (regime, metric), g in m.groupby(["regime", "metric"]):
                    entity = "micro" if metric == "micro_f1" else metric[: -len("_f1")]
                    for scope in scopes:
                        if scope == "all":
                            sel = g
                        elif scope.startswith(GROUP_SCOPE):
                            sel = g[g["eval_group"] == scope[len(GROUP_SCOPE):]]
                        else:
                            sel = g[g["eval_kind"] == scope]
                        if sel.empty:
                            continue
                        rows.append({"panel": d.panel[rid], "method": d.label[rid], "run_id": rid,
                                     "baseline": d.label[base], "baseline_run": base, "reading": reading,
                                     "vanilla_step": vanilla_step.max() if vanilla_step.notna().any() else math.nan,
                                     "match_ratio": ratio, "regime": regime, "scope": scope, "entity": entity,
                                     "meta_f1": sel["value"].mean(), "vanilla_f1": sel["value_vanilla"].mean(),
                                     "delta_f1": sel["delta"].mean(), "n_pairs": len(sel),
                                     "source": "ner/results.csv"})
    if not rows:
        return pd.DataFrame()
    t = pd.DataFrame(rows)
    order = {p: i for i, p in enumerate(d.panels())}
    t["_o"] = [(order[p], m, b, rd != "final", rd, r, s, e != "micro", e) for p, m, b, rd, r, s, e in
               zip(t["panel"], t["method"], t["baseline"], t["reading"], t["regime"], t["scope"], t["entity"],
                   strict=True)]
    # stable: rows that tie (one cell's replicates) keep the order they were made in (by run id)
    return t.sort_values("_o", kind="stable").drop(columns="_o").reset_index(drop=True)


def reading_text(reading: str, ratios=None) -> str:
    """How a reading is described in captions, with the matched fraction actually read."""
    if reading == "final":
        return "final checkpoints of both runs (step-matched when both ran the same steps)"
    unit = reading.removeprefix("matched-")
    what = {"steps": "steps", "tokens": "next-token tokens", "flops": "FLOPs"}.get(unit, unit)
    text = (f"compute-matched on {what}: the meta run's final checkpoint against the vanilla run's last checkpoint "
            f"at or before the meta run's final {what} (never beyond)")
    ratios = [r for r in (ratios if ratios is not None else []) if r == r]
    if ratios:
        text += f"; the vanilla checkpoints read had {min(ratios):.3f}–{max(ratios):.3f} of the meta runs' {what}"
    return text


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    if data.ner is None:
        return
    df = prepare(data.ner)
    if df.empty or not (df["metric"] == "micro_f1").any():
        data.skip("NER: ner/results.csv has no test-split micro_f1 rows")
        return
    inputs = ["ner/results.csv"]
    mode = f1_text(df)
    _heatmaps(finals(df), d, out, inputs, mode)
    table = summary_table(data, d)
    groups = ", ".join(group_title(g) for g in groups_in(finals(df)))
    out.table(table, "ner_summary",
              "UNER micro-F1 summary per method and model: mean over the eval sets of each kind (and of each eval "
              f"group: {groups}) per train set, then over train sets, per fine-tuning regime (head-only / full). "
              f"{mode}.", inputs,
              formats={c: "{:.3f}" for c in table.columns if not c.endswith("train sets")})
    cells = summary_cells(table, d)
    ns = "/".join(map(str, sorted(set(cells["n"]))))
    over = d.replicates_text()
    out.table(cells, "ner_summary_cells",
              f"UNER micro-F1 summary per method and {d.panel_title()} over the runs of each cell (n = {ns} per "
              f"cell, replicate axes: {over}): mean of the per-run values of ner_summary with a {stats.T_INTERVAL} "
              f"(none for n = 1). {mode}.", inputs, display=shown_cells(cells), latex_drop=("source", "run_ids"))
    deltas = delta_table(data, d)
    if deltas.empty:
        data.skip("NER ΔF1: no meta run has a vanilla baseline with matching NER results")
        return
    pairing = d.baseline_text() if hasattr(d, "baseline_text") else "baselines by the pairing rule"
    readings = list(dict.fromkeys(deltas["reading"]))
    how = "; ".join(f"reading {r}: {reading_text(r, deltas.loc[deltas['reading'] == r, 'match_ratio'])}"
                    for r in readings)
    caption = (f"ΔF1 = meta − vanilla ({pairing}), averaged over matched train set × eval set pairs, by reading, "
               f"entity type, scope (eval kind, eval group `group:<name>`, or all), regime and {d.panel_title()}. "
               f"{how}. {mode}.")
    out.table(deltas, "ner_delta_f1", caption, inputs,
              formats={"meta_f1": "{:.3f}", "vanilla_f1": "{:.3f}", "delta_f1": "{:+.3f}", "match_ratio": "{:.3f}"})
    tests = delta_tests(deltas, d)
    test_names = sorted({stats.PAIRED_TEST if p else stats.UNPAIRED_TEST for p in tests["paired"]})
    tcaption = ("ΔF1 = meta − vanilla per method, baseline, reading, " + d.panel_title() + ", regime, scope and "
                f"entity over the meta runs of each cell (one pair per run; n pairs = "
                f"{'/'.join(map(str, sorted(set(tests['n']))))}): mean ΔF1, its 95% CI and the p-value of the "
                f"{' / '.join(test_names)} (no interval and no test for n = 1). {pairing}. {how}. {mode}.")
    out.table(tests, "ner_delta_f1_tests", tcaption, inputs, display=_shown_tests(tests),
              latex_drop=("source", "run_ids"))
    for reading in readings:
        sub = tests[tests["reading"] == reading]
        name = "ner_delta_f1" if reading == "final" else safe_name("ner_delta_f1", reading)
        fcaption = (f"ΔF1 = meta − vanilla, reading {reading}: {reading_text(reading, sub['match_ratio'])}. "
                    f"{pairing}. Bars: mean ΔF1 over the pairs of each cell (n = "
                    f"{'/'.join(map(str, sorted(set(sub['n']))))}), whiskers: its 95% CI "
                    f"({' / '.join(test_names)}; none for n = 1). {mode}.")
        _delta_figure(sub, d, out, fcaption, inputs, name)


def summary_cells(table, d: Design):
    """`summary_table` rows grouped by cell: n, and mean with 95% Student-t interval of every value column."""
    import pandas as pd

    values = [c for c in table.columns if c not in ("method", "panel", "run_id", "source")
              and not c.endswith("train sets")]
    rows = []
    for (panel, method), rids in d.cells(table["run_id"]).items():
        sub = table.set_index("run_id").loc[rids]
        row = {"panel": panel, "method": method, "n": len(rids)}
        for col in values:
            s = stats.summary(sub[col])
            row |= {col: s.mean, f"{col} lo": s.lo, f"{col} hi": s.hi, f"{col} n": s.n}
        row["run_ids"] = "; ".join(rids)
        row["source"] = "ner/results.csv"
        rows.append(row)
    return pd.DataFrame(rows)


def shown_cells(cells, lead=("panel", "method")):
    """A table of cell means for display: the `lead` columns and n, then each value column with its
    `<col> lo` / `<col> hi` / `<col> n` as `mean [lo, hi]`, then run ids and sources."""
    shown = cells[[*lead, "n"]].copy()
    for col in cells.columns:
        if f"{col} lo" in cells.columns:
            shown[f"{col} [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:.3f}") for m, lo, hi, n in
                                        zip(cells[col], cells[f"{col} lo"], cells[f"{col} hi"], cells[f"{col} n"],
                                            strict=True)]
    shown["run_ids"] = cells["run_ids"]
    shown["source"] = cells["source"]
    return shown


def delta_tests(deltas, d: Design):
    """ΔF1 over a cell's pairs, per regime, scope and entity: mean, 95% interval, n, two-sided p-value."""
    import pandas as pd

    rows = []
    keys = ["panel", "method", "baseline", "reading", "regime", "scope", "entity"]
    for key, g in deltas.groupby(keys, sort=False):
        is_paired = all(d.paired.get(r, True) for r in g["run_id"])
        if is_paired:
            t = stats.paired(g["meta_f1"], g["vanilla_f1"])
        else:  # a baseline may serve several meta runs: each vanilla run counts once
            base = g.drop_duplicates("baseline_run")["vanilla_f1"]
            t = stats.unpaired(g["meta_f1"], base)
        rows.append(dict(zip(keys, key, strict=True)) | {
            "n": t.n, "meta_f1": g["meta_f1"].mean(), "vanilla_f1": g["vanilla_f1"].mean(),
            "delta_f1": t.mean_diff, "delta_f1_lo": t.lo, "delta_f1_hi": t.hi, "p": t.p, "paired": is_paired,
            "match_ratio": g["match_ratio"].mean(), "vanilla_steps": "; ".join(
                sorted({str(int(v)) for v in g["vanilla_step"] if v == v})),
            "test": t.test if t.n >= 2 else "none (n = 1)", "run_ids": "; ".join(g["run_id"]),
            "source": "ner/results.csv"})
    return pd.DataFrame(rows)


def _shown_tests(tests):
    shown = tests[["panel", "method", "baseline", "reading", "regime", "scope", "entity", "n", "meta_f1",
                   "vanilla_f1"]].copy()
    shown["ΔF1 [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:+.3f}") for m, lo, hi, n in
                             zip(tests["delta_f1"], tests["delta_f1_lo"], tests["delta_f1_hi"], tests["n"],
                                 strict=True)]
    shown["p"] = [stats.fmt_p(p) for p in tests["p"]]
    shown["test"] = tests["test"]
    shown["run_ids"] = tests["run_ids"]
    shown["source"] = tests["source"]
    return shown


def _eval_order(df) -> tuple[list[str], int]:
    test_only = sorted(set(df.loc[df["eval_kind"] == "test_only", "eval_set"]))
    trainable = sorted(set(df["eval_set"]) - set(test_only))
    return trainable + test_only, len(trainable)


def _heatmaps(df, d: Design, out: Outputs, inputs: list[str], mode: str = "") -> None:
    import seaborn as sns

    from metapretrain.figures import style

    f1 = df[df["metric"] == "micro_f1"]
    cols, n_trainable = _eval_order(f1)
    rows = sorted(set(f1["train_set"]), key=lambda s: (s == "all", s))
    for panel in d.panels():
        for regime in sorted(f1["regime"].unique()):
            has = set(f1.loc[f1["regime"] == regime, "pretrain_run"])
            cells = [(m, members) for (p, m), members in d.cells(has).items() if p == panel]
            if not cells:
                continue
            longest = max(len(str(r)) for r in rows)
            w = 0.5 * len(cols) + 0.06 * longest + 1.6
            # Many eval sets: stack the methods vertically so each heatmap keeps readable cells.
            fig, axes = style.subplots(len(cells), max_cols=2 if len(cols) <= 6 else 1, w=w,
                                       h=0.4 * len(rows) + 2.3)
            for k, (ax, (method, members)) in enumerate(zip(axes, cells, strict=True)):
                sub = f1[f1["pretrain_run"].isin(members) & (f1["regime"] == regime)]
                # Per run first, then over runs: each replicate weighs the same.
                grid = (sub.groupby(["pretrain_run", "train_set", "eval_set"])["value"].mean()
                        .groupby(["train_set", "eval_set"]).mean().unstack("eval_set"))
                grid = grid.reindex(index=rows, columns=cols)
                sns.heatmap(grid, ax=ax, vmin=0, vmax=1, cmap=style.SEQ_CMAP, annot=len(cols) <= 20,
                            fmt=".2f", annot_kws={"fontsize": 6}, cbar=False, linewidths=0.3, linecolor="white")
                if 0 < n_trainable < len(cols):
                    ax.axvline(n_trainable, color="black", lw=1.5)
                ax.set_title(method + (f" (mean of {len(members)})" if len(members) > 1 else ""))
                ax.set_xlabel("eval set (test split)")
                ax.set_ylabel("train set" if k == 0 else "")
                ax.tick_params(axis="y", rotation=0)
            fig.suptitle(f"{panel} · {regime} fine-tuning")
            fig.tight_layout()
            fig.colorbar(axes[0].collections[0], ax=axes, fraction=0.03, pad=0.02, label="micro-F1")
            ns = "/".join(map(str, sorted({len(m) for _, m in cells})))
            word = "/".join(sorted({"strict" if m == "strict" else f"{m}-mode" for m in f1["f1_mode"]}))
            caption = (f"UNER {word} entity-level micro-F1 on each test set (columns; test-only treebanks right of "
                       f"the black line) after {regime} fine-tuning on each train set (rows), {d.panel_title()} "
                       f"{panel}; n = {ns} run(s) per method" + (", cells are means over them" if ns != "1" else "")
                       + f". {mode or f1_text(df)}.")
            out.figure(fig, "ner", safe_name("ner_f1_heatmap", panel, regime), caption, inputs)


def _delta_figure(tests, d: Design, out: Outputs, caption: str, inputs: list[str], name: str = "ner_delta_f1") -> None:
    import numpy as np

    from metapretrain.figures import style

    scopes = [s for s in (*KINDS, "all") if (tests["scope"] == s).any()]
    regimes = sorted(tests["regime"].unique(), key=lambda r: (r != "head", r))
    entities = sorted(tests["entity"].unique(), key=lambda e: (e != "micro", e))
    xs = list(dict.fromkeys(zip(tests["panel"], tests["method"], tests["baseline"], strict=True)))
    multi = len({(m, b) for _, m, b in xs}) > 1
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
                vals, lo, hi = [], [], []
                for p, m, b in xs:
                    sel = tests[(tests["panel"] == p) & (tests["method"] == m) & (tests["baseline"] == b)
                                & (tests["regime"] == regime)
                                & (tests["scope"] == scope) & (tests["entity"] == ent)]
                    row = sel.iloc[0] if len(sel) else None
                    vals.append(float(row["delta_f1"]) if row is not None else np.nan)
                    lo.append(float(row["delta_f1_lo"]) if row is not None else np.nan)
                    hi.append(float(row["delta_f1_hi"]) if row is not None else np.nan)
                pos = np.arange(len(xs)) - 0.4 + width * (k + 0.5)
                v = np.array(vals) * 100
                ax.bar(pos, v, width=width * 0.9, color=colors[ent],
                       label="micro-F1" if ent == "micro" else f"{ent} F1")
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    err = np.vstack([v - np.array(lo) * 100, np.array(hi) * 100 - v])
                    ax.errorbar(pos[ok], v[ok], yerr=err[:, ok], ls="", color="black", lw=0.7, capsize=1.5)
            ax.set_xticks(range(len(xs)), [f"{p}\n{m} vs {b}" if multi else p for p, m, b in xs], fontsize=7)
            ax.set_title(f"{regime} fine-tuning · {KIND_TITLES[scope]}")
            if j == 0:
                ax.set_ylabel("ΔF1, meta − vanilla (pp)")
            if i == len(scopes) - 1:
                ax.set_xlabel(d.panel_title())
    flat = [a for row in axes for a in row]
    fig.tight_layout()
    style.figure_legend(fig, flat, ncol=len(entities))
    out.figure(fig, "ner", name, caption, inputs)
