"""Learning dynamics from `dynamics/dynamics.csv` and `dynamics/peaks.csv`.

Metric names are whatever the dynamics stage wrote. Two families get
per-layer plots: effective rank (the proportional effective rank `per` where
there is one, else another PER or `effective_rank`; the activation
components, i.e. representations) and attention-head entropy (`head_entropy`,
else `head_entropy_norm`). Per panel: per-layer curves (colour = depth,
vanilla vs meta columns, interior peaks and troughs from peaks.csv marked)
and a layer × step heatmap of each family, and one overview of every metric
(mean over layers, components and heads per checkpoint); once per
experiment, episodic accuracy against PER. The other components and metrics
are in the overview and in the peaks tables. Steps are drawn on a log scale
of step + 1: checkpoints are log-spaced early and step 0 is the init.

Tables: `dynamics_peaks` (csv/md/tex/html) has one row per cell (panel ×
method, replicates pooled by `Design.cells`), metric and layer, for one
component per metric (`summary_component`): the fraction of the cell's runs
whose curve has each shape (phases.SHAPES) and the mean step of the phase
boundary (the peak over the rise-and-fall runs, the trough over the
fall-and-rise runs) with its 95% Student-t interval over those runs.
`dynamics_peaks_curves.csv` (CSV only) is every curve's row of peaks.csv.
"""

from __future__ import annotations

import math

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs, safe_name
from metapretrain.figures.pairing import Design

MAX_ROWS = 8  # components (rows) per figure; a group with more is split into parts
STEP_LABEL = "optimizer steps + 1 (log scale)"  # x of every dynamics figure: log10(step + 1)
# The one component per metric in the dynamics_peaks summary, first present wins; else the first in data-flow order.
SUMMARY_COMPONENTS = ("resid.act", "attn", "episode", "")
FIGURE_SOURCE = "act"  # the component group (SOURCES) of the effective-rank figures: representations
SHAPE_TITLES = {"rise_fall": "rise→fall", "fall_rise": "fall→rise", "monotone_up": "monotone ↑",
                "monotone_down": "monotone ↓", "flat": "flat"}
# dynamics_peaks column of each shape's fraction (rise_and_fall_fraction: the name older readers use)
FRACTION_COLUMNS = {"rise_fall": "rise_and_fall_fraction", "fall_rise": "fall_and_rise_fraction",
                    "monotone_up": "monotone_up_fraction", "monotone_down": "monotone_down_fraction",
                    "flat": "flat_fraction"}

_PER_PREFIXES = ("per", "proportional_effective_rank", "effective_rank_proportional")
_ENTROPY = ("head_entropy", "head_entropy_norm", "attention_entropy", "attention_entropy_norm")
_EPISODIC = ("query_acc", "episodic_accuracy", "episodic_query_accuracy", "query_accuracy")

TITLES = {"head_entropy": "head entropy (nats)", "head_entropy_norm": "head entropy / log(context)",
          "effective_rank": "effective rank", "frobenius_norm": "Frobenius norm", "weight_norm": "weight norm",
          "cka_final": "CKA to the final checkpoint", "cka": "CKA to the final checkpoint",
          "query_acc": "episodic query accuracy"}


def is_per(metric: str) -> bool:
    return any(metric == p or metric.startswith(p + "_") or metric.startswith(p + "/") for p in _PER_PREFIXES)


def is_entropy(metric: str) -> bool:
    return metric in _ENTROPY


def metric_title(metric: str) -> str:
    if is_per(metric):
        rest = metric.split("_", 1)[1] if "_" in metric and metric.startswith("per_") else ""
        return "proportional effective rank" + (f" ({rest})" if rest else "")
    return TITLES.get(metric, metric.replace("_", " "))


def _key(v) -> str:
    """A component/layer value as a join key: NaN and empty read the same."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def layer_curves(dyn, run_id: str, metric: str):
    """{component: DataFrame(step, layer, value)} for one run and metric, heads averaged."""
    sub = dyn[(dyn["run_id"] == run_id) & (dyn["metric"] == metric)].dropna(subset=["layer", "value", "step"])
    if sub.empty:
        return {}
    sub = sub.assign(component=[_key(c) for c in sub["component"]], layer=sub["layer"].astype(float).astype(int))
    g = sub.groupby(["component", "layer", "step"], as_index=False)["value"].mean()
    return {c: part.drop(columns="component") for c, part in g.groupby("component", sort=True)}


def cell_curves(dyn, run_ids: list[str], metric: str):
    """`layer_curves` averaged over a cell's replicates at each step (one run: its own curves)."""
    import pandas as pd

    per_run = [layer_curves(dyn, r, metric) for r in run_ids]
    if len(per_run) == 1:
        return per_run[0]
    out = {}
    for comp in sorted({c for curves in per_run for c in curves}):
        both = pd.concat([curves[comp] for curves in per_run if comp in curves], ignore_index=True)
        out[comp] = both.groupby(["layer", "step"], as_index=False)["value"].mean()
    return out


def _columns(d: Design, rids: list[str]) -> list[tuple[str, list[str]]]:
    """One figure column per cell of the panel: (title, its runs); replicates share a column (their mean)."""
    return [(f"{m} (mean of {len(members)})" if len(members) > 1 else d.run_title(members[0]), members)
            for (_, m), members in d.cells(rids).items()]


def figure_metrics(metrics: list[str]) -> list[str]:
    """The per-layer figure metrics: one effective-rank metric (per, another PER, effective_rank) and one
    head-entropy metric (head_entropy, else another of _ENTROPY), those present."""
    out = []
    rank = ["per"] if "per" in metrics else [m for m in metrics if is_per(m)] or (
        ["effective_rank"] if "effective_rank" in metrics else [])
    out += rank[:1]
    out += [m for m in _ENTROPY if m in metrics][:1]
    return out


def step_axis(ax, label: bool = True) -> None:
    """Log x axis for values plotted at step + 1 (`_x`)."""
    ax.set_xscale("log")
    if label:
        ax.set_xlabel(STEP_LABEL)


def _x(steps):
    import numpy as np

    return np.asarray(steps, dtype=float) + 1.0


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    if data.dynamics is None:
        return
    dyn = data.dynamics
    metrics = sorted(set(dyn["metric"].astype(str)))
    log_peaks = data.peaks is not None
    if not log_peaks:
        data.skip("dynamics: no dynamics/peaks.csv: per-layer curves drawn without peak markers")
    special = figure_metrics(metrics)
    if not special:
        data.skip(f"dynamics: no PER or head-entropy metric among {metrics}: only the overview is drawn")
    for panel in d.panels():
        rids = sorted({r for r in set(dyn["run_id"]) if d.panel.get(r) == panel},
                      key=lambda r: (d.methods().index(d.label[r]), r))
        if not rids:
            continue
        inputs = sorted(set(dyn.loc[dyn["run_id"].isin(rids), "source"]))
        if log_peaks:
            inputs += [data.run(r).rel(data.exp_dir, "dynamics", "peaks.csv") for r in rids
                       if (data.peaks["run_id"] == r).any()]
        for metric in special:
            _layer_lines(data, d, out, panel, rids, metric, inputs)
            _layer_heatmap(data, d, out, panel, rids, metric, inputs)
        _overview(data, d, out, panel, rids, metrics, inputs)
    _episodic_vs_per(data, d, out, metrics)
    if log_peaks:
        _peaks_table(data, d, out)


def _flag(v) -> bool:
    return str(v).lower() in ("true", "1", "1.0", "yes")


def _peaks_for(data: ExperimentData, run_id: str, metric: str, component: str):
    """[(layer, step, value, kind)] of one run's detected phase boundaries: kind 'peak' (a rise-and-fall)
    or 'trough' (a fall-and-rise). Monotone and flat curves have none (their extremes sit at the ends)."""
    if data.peaks is None:
        return []
    p = data.peaks[(data.peaks["run_id"] == run_id) & (data.peaks["metric"].astype(str) == metric)]
    p = p[[_key(c) == component for c in p["component"]]] if len(p) else p
    out = []
    for rec in p.to_dict("records"):
        if _key(rec.get("layer")) == "":
            continue
        layer = int(float(rec["layer"]))
        for kind, flag, step, value in (("peak", "is_rise_and_fall", "peak_step", "peak_value"),
                                        ("trough", "is_fall_and_rise", "trough_step", "trough_value")):
            if _flag(rec.get(flag, "")) and math.isfinite(float(rec.get(step, math.nan))):
                out.append((layer, float(rec[step]), float(rec.get(value, math.nan)), kind))
    return out


MARKERS = {"peak": "v", "trough": "^"}


def _components(data, rids, metric) -> list[str]:
    comps: set[str] = set()
    for r in rids:
        comps |= set(layer_curves(data.dynamics, r, metric))
    return sorted(comps)


SOURCES = {"weight": "weights", "grad": "gradients", "act": "activations"}


def component_groups(comps: list[str]) -> list[tuple[str, list[str]]]:
    """[(group, components)]: components `<module>.<source>` grouped by source (weight / grad / act), each
    group split into figures of at most MAX_ROWS components; other names form one group ''."""
    groups: dict[str, list[str]] = {}
    for c in sorted(comps, key=_module_order):
        src = c.rsplit(".", 1)[-1] if "." in c else ""
        groups.setdefault(src if src in SOURCES else "", []).append(c)
    out = []
    for g in sorted(groups, key=lambda g: (list(SOURCES).index(g) if g in SOURCES else -1, g)):
        items = groups[g]
        parts = [items[i:i + MAX_ROWS] for i in range(0, len(items), MAX_ROWS)]
        for i, part in enumerate(parts):
            out.append((SOURCES.get(g, g) + (f"-part{i + 1}" if len(parts) > 1 else ""), part))
    return out


MODULE_ORDER = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "ffn.gate_proj", "ffn.up_proj",
                "ffn.down_proj", "resid")


def _module_order(comp: str):
    """Components in the order data flows through a block (q, k, v, o, gate, up, down, residual), others after."""
    mod = _short_comp(comp)
    return (MODULE_ORDER.index(mod), comp) if mod in MODULE_ORDER else (len(MODULE_ORDER), comp)


def _short_comp(comp: str) -> str:
    src = comp.rsplit(".", 1)[-1] if "." in comp else ""
    return comp[: -len(src) - 1] if src in SOURCES else comp


def figure_groups(comps: list[str]) -> list[tuple[str, list[str]]]:
    """The component groups drawn per layer: the activation group (and its parts) when there is one, else
    every group (e.g. head entropy's one component `attn`)."""
    groups = component_groups(comps)
    src = SOURCES[FIGURE_SOURCE]
    chosen = [(g, c) for g, c in groups if g == src or g.startswith(src + "-part")]
    return chosen or groups


def _layer_lines(data, d: Design, out: Outputs, panel: str, rids: list[str], metric: str, inputs) -> None:
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from metapretrain.figures import style

    comps = _components(data, rids, metric)
    if not comps:
        return
    columns = _columns(d, rids)
    curves = [cell_curves(data.dynamics, members, metric) for _, members in columns]
    layers = sorted({int(x) for c in curves for part in c.values() for x in part["layer"]})
    colors = style.depth_colors(layers)
    for group, chunk in figure_groups(comps):
        fig, axes = plt.subplots(len(chunk), len(columns), squeeze=False, sharex=True, sharey="row",
                                 figsize=(3.0 * len(columns) + 0.6, 1.9 * len(chunk) + 0.4))
        for i, comp in enumerate(chunk):
            for j, (title, members) in enumerate(columns):
                ax = axes[i][j]
                part = curves[j].get(comp)
                if part is not None:
                    for layer, g in part.groupby("layer"):
                        ax.plot(_x(g["step"]), g["value"], color=colors[int(layer)], lw=1.0)
                    for layer, step, value, kind in (pk for r in members for pk in _peaks_for(data, r, metric, comp)):
                        if layer in colors:
                            ax.plot([step + 1], [value], marker=MARKERS[kind], ms=5, mec="black", mew=0.6,
                                    mfc=colors[layer], zorder=5)
                step_axis(ax, label=i == len(chunk) - 1)
                ax.set_title(title + (f" · {_short_comp(comp)}" if comp else ""))
                if j == 0:
                    ax.set_ylabel("PER" if is_per(metric) else metric_title(metric))
        fig.tight_layout(rect=(0, 0, 0.93, 0.97))
        style.depth_colorbar(fig, [a for row in axes for a in row], colors)
        marks = [Line2D([], [], marker="v", ls="", mec="black", mfc="grey", label="peak of a rise-and-fall"),
                 Line2D([], [], marker="^", ls="", mec="black", mfc="grey", label="trough of a fall-and-rise")]
        if data.peaks is not None:
            fig.legend(handles=marks, loc="lower center", bbox_to_anchor=(0.5, 0.975), ncol=2, frameon=False)
        what = f"{metric_title(metric)}" + (f" of {group}" if group else "")
        fig.suptitle(f"{what} per layer · {panel}", y=1.0 + 0.25 / fig.get_figheight())
        caption = (f"{what.capitalize()} ({metric}) of each layer over training, one line per layer "
                   f"(colour = depth), vanilla vs meta (columns), one row per component, model {panel}; x axis: "
                   "step + 1 on a log scale (step 0 = the init). ▼: the peak of a curve the dynamics stage found "
                   "to rise then fall; ▲: the trough of one that falls then rises, each at its smoothed value "
                   "(monotone and flat curves are unmarked; only the activation components are drawn); a column of several runs (replicates) shows their mean curve and every run's marks.")
        out.figure(fig, "dynamics", safe_name("dynamics_layers", metric, group, panel), caption, inputs)


def _layer_heatmap(data, d: Design, out: Outputs, panel: str, rids: list[str], metric: str, inputs) -> None:
    import matplotlib.pyplot as plt
    import numpy as np

    from metapretrain.figures import style

    comps = _components(data, rids, metric)
    if not comps:
        return
    columns = _columns(d, rids)
    curves = [cell_curves(data.dynamics, members, metric) for _, members in columns]
    for group, chunk in figure_groups(comps):
        vals = [p["value"] for cc in curves for c in chunk if (p := cc.get(c)) is not None]
        vmin, vmax = float(min(v.min() for v in vals)), float(max(v.max() for v in vals))
        fig, axes = plt.subplots(len(chunk), len(columns), squeeze=False, sharex=True, sharey=True,
                                 figsize=(3.0 * len(columns) + 0.8, 1.7 * len(chunk) + 0.3))
        mesh = None
        for i, comp in enumerate(chunk):
            for j, (title, members) in enumerate(columns):
                ax = axes[i][j]
                part = curves[j].get(comp)
                if part is not None:
                    grid = part.pivot_table(index="layer", columns="step", values="value")
                    steps = np.asarray(grid.columns, dtype=float)
                    layers = np.asarray(grid.index, dtype=float)
                    mesh = ax.pcolormesh(_log_edges(_x(steps)), _edges(layers), grid.to_numpy(), cmap=style.SEQ_CMAP,
                                         vmin=vmin, vmax=vmax, shading="flat")
                    for layer, step, _, kind in (pk for r in members for pk in _peaks_for(data, r, metric, comp)):
                        ax.plot([step + 1], [layer], marker=MARKERS[kind], mfc="none", mec="white", ms=4, mew=1.0)
                    ax.set_yticks(layers[:: max(1, len(layers) // 12)])
                ax.grid(False)
                step_axis(ax, label=i == len(chunk) - 1)
                ax.set_title(title + (f" · {_short_comp(comp)}" if comp else ""))
                if j == 0:
                    ax.set_ylabel("layer")
        what = f"{metric_title(metric)}" + (f" of {group}" if group else "")
        fig.suptitle(f"{what} · {panel}")
        fig.tight_layout()
        if mesh is not None:
            fig.colorbar(mesh, ax=[a for row in axes for a in row], fraction=0.03, pad=0.02,
                         label=metric_title(metric))
        caption = (f"{what.capitalize()} ({metric}) as a layer × step heatmap (heads averaged), vanilla vs meta "
                   f"(columns; several replicates: their mean), one row per component, model {panel}; x axis: step + 1 "
                   "on a log scale. ▼ marks the peak of a rise-and-fall, ▲ the trough of a fall-and-rise.")
        out.figure(fig, "dynamics", safe_name("dynamics_heatmap", metric, group, panel), caption, inputs)


def _edges(centres):
    """Cell edges around sorted centres (midpoints; the outer cells mirror their neighbour)."""
    import numpy as np

    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def _log_edges(centres):
    """`_edges` in log space: cell edges for positive centres drawn on a log axis."""
    import numpy as np

    return np.exp(_edges(np.log(np.asarray(centres, dtype=float))))


def _overview(data, d: Design, out: Outputs, panel: str, rids: list[str], metrics: list[str], inputs) -> None:
    from metapretrain.figures import style

    dyn = data.dynamics[data.dynamics["run_id"].isin(rids)].dropna(subset=["value", "step"])
    metrics = [m for m in metrics if (dyn["metric"] == m).any()]
    if not metrics:
        return
    colors = style.method_colors(d.methods())
    fig, axes = style.subplots(len(metrics), max_cols=4, w=2.8, h=2.2)
    for ax, metric in zip(axes, metrics, strict=True):
        for rid in rids:
            g = dyn[(dyn["run_id"] == rid) & (dyn["metric"] == metric)].groupby("step")["value"].mean()
            if len(g):
                ax.plot(_x(g.index), g.values, color=colors[d.label[rid]], marker="o", ms=2, label=d.label[rid])
        ax.set_title(metric_title(metric))
        step_axis(ax)
    fig.tight_layout()
    style.figure_legend(fig, axes)
    caption = (f"Every learning-dynamics metric of model {panel} over training, averaged over layers, "
               "components and heads, vanilla vs meta, one line per run; x axis: step + 1 on a log scale.")
    out.figure(fig, "dynamics", safe_name("dynamics_overview", panel), caption, inputs)


def _episodic_series(data: ExperimentData, rid: str, metrics: list[str], steps):
    """Episodic query accuracy at each checkpoint step: from dynamics.csv, else metrics.jsonl `meta/query_acc`
    averaged over the train records since the previous checkpoint."""
    import pandas as pd

    name = next((m for m in _EPISODIC if m in metrics), None)
    dyn = data.dynamics
    if name is not None:
        s = dyn[(dyn["run_id"] == rid) & (dyn["metric"] == name)].groupby("step")["value"].mean()
        if len(s):
            return s, f"{name} (dynamics.csv)"
    run = data.run(rid)
    tr = run.train if run is not None else None
    if tr is None or "meta/query_acc" not in tr:
        return None, None
    tr = tr.dropna(subset=["meta/query_acc"])
    vals, prev = {}, -math.inf
    for step in sorted(steps):
        w = tr[(tr["step"] > prev) & (tr["step"] <= step)]["meta/query_acc"]
        if len(w):
            vals[step] = float(w.mean())
        prev = step
    return (pd.Series(vals), "meta/query_acc (metrics.jsonl)") if vals else (None, None)


def _episodic_vs_per(data: ExperimentData, d: Design, out: Outputs, metrics: list[str]) -> None:
    import matplotlib.pyplot as plt

    from metapretrain.figures import style

    per = next((m for m in metrics if is_per(m)), None)
    meta = [r for r in d.panel if d.label.get(r) and not data.run(r).is_vanilla and
            (data.dynamics["run_id"] == r).any()]
    if per is None or not meta:
        data.skip("episodic accuracy vs PER: " + ("no PER metric" if per is None else "no meta run with dynamics"))
        return
    order = {p: i for i, p in enumerate(d.panels())}
    meta.sort(key=lambda r: (order[d.panel[r]], d.label[r], r))
    series = []
    dyn = data.dynamics[data.dynamics["metric"] == per]
    # Representations are what "diversify then compress" is about: use activation PER when there is one.
    acts = dyn[dyn["component"].astype(str).str.endswith(".act")]
    what = "activations" if len(acts) else "all components"
    dyn = acts if len(acts) else dyn
    for rid in meta:
        x = dyn[dyn["run_id"] == rid].groupby("step")["value"].mean()
        y, src = _episodic_series(data, rid, metrics, x.index)
        if y is None:
            continue
        both = x.to_frame("per").join(y.rename("acc"), how="inner").dropna()
        if len(both):
            series.append((rid, both, src))
    if not series:
        data.skip("episodic accuracy vs PER: no meta run has episodic accuracy (dynamics.csv or meta/query_acc)")
        return
    fig, axes = style.subplots(len(series), max_cols=4, w=2.9, h=2.5)
    sc = None
    vmax = max(float(b.index.max()) for _, b, _ in series)
    for ax, (rid, both, _src) in zip(axes, series, strict=True):
        ax.plot(both["per"], both["acc"], color="0.7", lw=0.8, zorder=1)
        sc = ax.scatter(both["per"], both["acc"], c=both.index, cmap=style.SEQ_CMAP, vmin=0, vmax=vmax, s=14,
                        zorder=2)
        ax.set_title(f"{d.run_title(rid)} · {d.panel[rid]}")
        ax.set_xlabel(f"mean PER ({what})")
        ax.set_ylabel("episodic query accuracy")
    fig.tight_layout()
    if sc is not None:
        fig.colorbar(sc, ax=axes, fraction=0.03, pad=0.02, label=style.AXIS_LABELS["step"])
    inputs = sorted({src for rid, _, _ in series for src in (
        data.run(rid).rel(data.exp_dir, "dynamics", "dynamics.csv"),
        data.run(rid).rel(data.exp_dir, "pretrain", "metrics.jsonl"))})
    used = sorted({src for _, _, src in series})
    caption = (f"Episodic query accuracy against the mean {metric_title(per)} of {what} (over layers) at "
               "each checkpoint of the meta runs; colour = training step (correlational, not causal). "
               f"Accuracy from: {', '.join(used)}.")
    out.figure(fig, "dynamics", "episodic_accuracy_vs_per", caption, inputs)
    plt.close("all")


def _peaks_table(data: ExperimentData, d: Design, out: Outputs) -> None:
    from metapretrain.io import atomic_write_text

    p = data.peaks[data.peaks["run_id"].isin(d.panel)].copy()
    if p.empty:
        return
    p.insert(0, "method", [d.label[r] for r in p["run_id"]])
    p.insert(0, "panel", [d.panel[r] for r in p["run_id"]])
    p["source"] = [data.run(r).rel(data.exp_dir, "dynamics", "peaks.csv") for r in p["run_id"]]
    order = {x: i for i, x in enumerate(d.panels())}
    p["_o"] = [order[x] for x in p["panel"]]
    sort = [c for c in ("_o", "method", "metric", "component", "layer") if c in p]
    p = p.sort_values(sort, kind="stable").drop(columns="_o")
    cols = ["panel", "method", "run_id"] + [c for c in p.columns if c not in ("panel", "method", "run_id", "source")]
    sources = sorted(set(p["source"]))
    # Every curve's row: CSV only (thousands of rows are no table to read).
    path = out.root / "tables" / "dynamics_peaks_curves.csv"
    atomic_write_text(path, p[[*cols, "source"]].to_csv(index=False))
    out._entry(path, "table", "Phases of every learning-dynamics curve (peaks.csv of each run, with its cell): peak "
               "and trough step and value, their arms, is_rise_and_fall, is_fall_and_rise and the shape "
               "(metapretrain.dynamics.phases).", sources)
    summ = peaks_summary(p, d)
    legacy = "shape" not in p.columns
    if legacy:
        data.skip("dynamics: peaks.csv without a shape column (written before troughs were detected): only "
                  "rise-and-fall is known; rerun the dynamics stage to rewrite it")
    ns = "/".join(map(str, sorted(set(summ["n_runs"]))))
    caption = (f"Phases of each learning-dynamics curve per {d.panel_title()} × method cell (replicates pooled; "
               f"replicate axes: {d.replicates_text()}; n = {ns} runs per row), layer and metric, for one component "
               "per metric: resid.act (the residual stream after the layer) where the metric has it, attn for head "
               "entropy, else the metric's first component in data-flow order (the others: "
               "dynamics_peaks_curves.csv). Per shape (rise→fall: interior peak; fall→rise: interior trough; "
               "monotone ↑/↓; flat; rule in metapretrain.dynamics.phases) the fraction of the cell's runs whose "
               "curve has it; the paper's claim is rise→fall. Peak step: mean over the rise→fall runs, trough "
               f"step: mean over the fall→rise runs, each with a {stats.T_INTERVAL} (n = 1: none). Steps are "
               "optimizer steps; step 0 is the init."
               + (" Some peaks.csv predate trough detection: their other shapes are unknown (–)." if legacy else ""))
    out.table(summ, "dynamics_peaks", caption, sources, display=_shown_peaks(summ),
              latex_drop=("source", "run_ids"))


def summary_component(components) -> str:
    """The component a metric is summarised by (SUMMARY_COMPONENTS, else the first in data-flow order)."""
    comps = sorted(set(components), key=_module_order)
    return next((c for c in SUMMARY_COMPONENTS if c in comps), comps[0] if comps else "")


def peaks_summary(peaks, d: Design):
    """One row per cell, metric and layer (the metric's `summary_component`): the fraction of the cell's runs
    with each shape, peak step over the rise-and-fall runs and trough step over the fall-and-rise runs (mean,
    95% Student-t interval). peaks.csv files without `shape` (older rule): shape from is_rise_and_fall, the
    other fractions NaN."""
    import pandas as pd

    from metapretrain.dynamics.phases import FALL_RISE, RISE_FALL, SHAPES

    has_shape = "shape" in peaks.columns
    p = peaks.assign(component=[_key(c) for c in peaks.get("component", [math.nan] * len(peaks))],
                     layer=[_key(x) for x in peaks["layer"]], metric=peaks["metric"].astype(str))
    if has_shape:
        p["_shape"] = [str(v) if isinstance(v, str) else "" for v in p["shape"]]
    else:
        p["_shape"] = [RISE_FALL if _flag(v) else "" for v in p.get("is_rise_and_fall", [False] * len(p))]
    chosen = {m: summary_component(g["component"]) for m, g in p.groupby("metric")}
    p = p[[chosen[m] == c for m, c in zip(p["metric"], p["component"], strict=True)]]
    cells = d.cells(p["run_id"].unique())
    rows = []
    for (panel, method), rids in cells.items():
        sub = p[p["run_id"].isin(rids)]
        for (metric, layer), g in sorted(sub.groupby(["metric", "layer"], sort=False),
                                         key=lambda kv: (kv[0][0], _layer_order(kv[0][1]))):
            g = g.drop_duplicates("run_id")
            n = len(g)
            row = {"panel": panel, "method": method, "metric": metric, "component": chosen[metric], "layer": layer,
                   "n_runs": n}
            for shape in SHAPES:
                k = int((g["_shape"] == shape).sum())
                known = has_shape or shape == RISE_FALL
                row[FRACTION_COLUMNS[shape]] = k / n if known else math.nan
            pk = stats.summary(pd.to_numeric(g.loc[g["_shape"] == RISE_FALL, "peak_step"], errors="coerce"))
            tr = stats.summary(pd.to_numeric(g.loc[g["_shape"] == FALL_RISE, "trough_step"], errors="coerce")
                               if has_shape and "trough_step" in g else [])
            row |= {"n_peaks": pk.n, "peak_step": pk.mean, "peak_step_lo": pk.lo, "peak_step_hi": pk.hi,
                    "n_troughs": tr.n, "trough_step": tr.mean, "trough_step_lo": tr.lo, "trough_step_hi": tr.hi,
                    "run_ids": "; ".join(sorted(g["run_id"])), "source": "; ".join(sorted(set(g["source"])))}
            rows.append(row)
    return pd.DataFrame(rows)


def _layer_order(layer: str):
    return (0, float(layer)) if layer != "" else (1, math.inf)


def _frac_text(f, n) -> str:
    if not (isinstance(f, float | int) and math.isfinite(f)):
        return "–"
    return f"{f:.0%} ({round(f * n)}/{n})"


def _shown_peaks(summ):
    shown = summ[["panel", "method", "metric", "component", "layer", "n_runs"]].copy()
    for shape, title in SHAPE_TITLES.items():
        shown[title] = [_frac_text(f, n) for f, n in zip(summ[FRACTION_COLUMNS[shape]], summ["n_runs"], strict=True)]
    for what in ("peak", "trough"):
        shown[f"{what} step [95% CI]"] = [
            stats.fmt_interval(m, lo, hi, n, "{:.0f}") for m, lo, hi, n in
            zip(summ[f"{what}_step"], summ[f"{what}_step_lo"], summ[f"{what}_step_hi"], summ[f"n_{what}s"],
                strict=True)]
    shown["run_ids"] = summ["run_ids"]  # last: every row names its runs and files (tables.rst)
    shown["source"] = summ["source"]
    return shown
