"""Learning dynamics from `dynamics/dynamics.csv` and `dynamics/peaks.csv`.

Metric names are whatever the dynamics stage wrote. Known families get
special plots: proportional effective rank (`per`, `per_*`,
`proportional_effective_rank*`) and attention-head entropy (`head_entropy`,
`head_entropy_norm`) as per-layer curves (colour = depth, vanilla vs meta,
peaks from peaks.csv marked) and layer × step heatmaps; episodic accuracy
against PER. Every metric, known or not, appears in an overview figure
(mean over layers, components and heads per checkpoint).

Over replicates (seeds, `pairing`), `dynamics_peaks_summary` gives per cell,
metric, component and layer the mean peak step with its 95% Student-t
interval over the runs that have the peak, and the fraction of the cell's
runs in which that layer shows a rise-and-fall.
"""

from __future__ import annotations

import math

from metapretrain.figures import stats
from metapretrain.figures.load import ExperimentData
from metapretrain.figures.outputs import Outputs, safe_name
from metapretrain.figures.pairing import Design

MAX_ROWS = 8  # components (rows) per figure; a group with more is split into parts

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


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    if data.dynamics is None:
        return
    dyn = data.dynamics
    metrics = sorted(set(dyn["metric"].astype(str)))
    log_peaks = data.peaks is not None
    if not log_peaks:
        data.skip("dynamics: no dynamics/peaks.csv: per-layer curves drawn without peak markers")
    special = [m for m in metrics if is_per(m)] + [m for m in _ENTROPY if m in metrics]
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


def _peaks_for(data: ExperimentData, run_id: str, metric: str, component: str):
    if data.peaks is None:
        return []
    p = data.peaks[(data.peaks["run_id"] == run_id) & (data.peaks["metric"].astype(str) == metric)]
    p = p[[_key(c) == component for c in p["component"]]] if len(p) else p
    out = []
    for rec in p.to_dict("records"):
        if _key(rec.get("layer")) == "" or not math.isfinite(float(rec.get("peak_step", math.nan))):
            continue
        rise_fall = str(rec.get("is_rise_and_fall", "")).lower() in ("true", "1", "1.0", "yes")
        out.append((int(float(rec["layer"])), float(rec["peak_step"]), float(rec.get("peak_value", math.nan)),
                    rise_fall))
    return out


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
    for group, chunk in component_groups(comps):
        fig, axes = plt.subplots(len(chunk), len(columns), squeeze=False, sharex=True, sharey="row",
                                 figsize=(3.0 * len(columns) + 0.6, 1.9 * len(chunk) + 0.4))
        for i, comp in enumerate(chunk):
            for j, (title, members) in enumerate(columns):
                ax = axes[i][j]
                part = curves[j].get(comp)
                if part is not None:
                    for layer, g in part.groupby("layer"):
                        ax.plot(g["step"], g["value"], color=colors[int(layer)], lw=1.0)
                    for layer, step, value, rf in (pk for r in members for pk in _peaks_for(data, r, metric, comp)):
                        if layer in colors:
                            ax.plot([step], [value], marker="v", ms=5, mec="black", mew=0.6,
                                    mfc=colors[layer] if rf else "none", zorder=5)
                ax.set_title(title + (f" · {_short_comp(comp)}" if comp else ""))
                if j == 0:
                    ax.set_ylabel("PER" if is_per(metric) else metric_title(metric))
                if i == len(chunk) - 1:
                    ax.set_xlabel(style.AXIS_LABELS["step"])
        fig.tight_layout(rect=(0, 0, 0.93, 0.97))
        style.depth_colorbar(fig, [a for row in axes for a in row], colors)
        marks = [Line2D([], [], marker="v", ls="", mec="black", mfc="grey", label="peak, rise-and-fall"),
                 Line2D([], [], marker="v", ls="", mec="black", mfc="none", label="peak (monotone / no fall)")]
        if data.peaks is not None:
            fig.legend(handles=marks, loc="lower center", bbox_to_anchor=(0.5, 0.975), ncol=2, frameon=False)
        what = f"{metric_title(metric)}" + (f" of {group}" if group else "")
        fig.suptitle(f"{what} per layer · {panel}", y=1.0 + 0.25 / fig.get_figheight())
        caption = (f"{what.capitalize()} ({metric}) of each layer over training, one line per layer "
                   f"(colour = depth), vanilla vs meta (columns), one row per component, model {panel}; "
                   "triangles: the peak found by the dynamics stage (filled = a rise-and-fall); a column of several "
                   "runs (replicates) shows their mean curve and every run's peak.")
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
    for group, chunk in component_groups(comps):
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
                    mesh = ax.pcolormesh(_edges(steps), _edges(layers), grid.to_numpy(), cmap=style.SEQ_CMAP,
                                         vmin=vmin, vmax=vmax, shading="flat")
                    for layer, step, _, rf in (pk for r in members for pk in _peaks_for(data, r, metric, comp)):
                        ax.plot([step], [layer], marker="x" if rf else "+", color="white", ms=4, mew=1.0)
                    ax.set_yticks(layers[:: max(1, len(layers) // 12)])
                ax.grid(False)
                ax.set_title(title + (f" · {_short_comp(comp)}" if comp else ""))
                if j == 0:
                    ax.set_ylabel("layer")
                if i == len(chunk) - 1:
                    ax.set_xlabel(style.AXIS_LABELS["step"])
        what = f"{metric_title(metric)}" + (f" of {group}" if group else "")
        fig.suptitle(f"{what} · {panel}")
        fig.tight_layout()
        if mesh is not None:
            fig.colorbar(mesh, ax=[a for row in axes for a in row], fraction=0.03, pad=0.02,
                         label=metric_title(metric))
        caption = (f"{what.capitalize()} ({metric}) as a layer × step heatmap (heads averaged), vanilla vs meta "
                   f"(columns; several replicates: their mean), one row per component, model {panel}; × marks a "
                   "rise-and-fall peak, + another peak.")
        out.figure(fig, "dynamics", safe_name("dynamics_heatmap", metric, group, panel), caption, inputs)


def _edges(centres):
    """Cell edges around sorted centres (midpoints; the outer cells mirror their neighbour)."""
    import numpy as np

    c = np.asarray(centres, dtype=float)
    if len(c) == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


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
                ax.plot(g.index, g.values, color=colors[d.label[rid]], marker="o", ms=2, label=d.label[rid])
        ax.set_title(metric_title(metric))
        ax.set_xlabel(style.AXIS_LABELS["step"])
    fig.tight_layout()
    style.figure_legend(fig, axes)
    caption = (f"Every learning-dynamics metric of model {panel} over training, averaged over layers, "
               "components and heads, vanilla vs meta.")
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
    caption = ("Peak of every learning-dynamics curve (from the dynamics stage's phase detection): step and value "
               "of the peak, rise before and fall after it, and whether it counts as a rise-and-fall.")
    out.table(p[[*cols, "source"]], "dynamics_peaks", caption, sorted(set(p["source"])),
              formats={"peak_step": "{:.0f}", "layer": "{:.0f}"})
    summ = peaks_summary(p, d)
    ns = "/".join(map(str, sorted(set(summ["n_runs"]))))
    over = d.replicates_text()
    caption = (f"Peak step of each learning-dynamics curve per method and {d.panel_title()} over the runs of each "
               f"cell (n = {ns} runs per cell, replicate axes: {over}): mean peak step over the runs in which the curve rises and falls (n_peaks), "
               f"with a {stats.T_INTERVAL} (none for n = 1), and the fraction of the cell's runs in which the "
               "layer shows a rise-and-fall.")
    out.table(summ, "dynamics_peaks_summary", caption, sorted(set(p["source"])), display=_shown_peaks(summ),
              latex_drop=("source", "run_ids"))


def peaks_summary(peaks, d: Design):
    """One row per cell, metric, component and layer: peak step mean ± interval, rise-and-fall fraction."""
    import pandas as pd

    p = peaks.assign(component=[_key(c) for c in peaks.get("component", [math.nan] * len(peaks))],
                     layer=[_key(x) for x in peaks["layer"]],
                     rise_fall=[str(v).lower() in ("true", "1", "1.0", "yes")
                                for v in peaks.get("is_rise_and_fall", [False] * len(peaks))])
    cells = d.cells(p["run_id"].unique())  # each run once, however many curves it has
    rows = []
    for (panel, method), rids in cells.items():
        sub = p[p["run_id"].isin(rids)]
        for (metric, comp, layer), g in sub.groupby(["metric", "component", "layer"], sort=True):
            # The step of a detected rise-and-fall only: a monotone curve's maximum sits at an end of the run.
            s = stats.summary(pd.to_numeric(g.loc[g["rise_fall"], "peak_step"], errors="coerce"))
            rows.append({"panel": panel, "method": method, "metric": metric, "component": comp, "layer": layer,
                         "n_runs": len(rids), "n_peaks": s.n, "peak_step": s.mean, "peak_step_lo": s.lo,
                         "peak_step_hi": s.hi, "rise_and_fall_fraction": int(g.groupby("run_id")["rise_fall"].any().sum()) / len(rids),
                         "run_ids": "; ".join(rids), "source": "; ".join(sorted(set(g["source"])))})
    return pd.DataFrame(rows)


def _shown_peaks(summ):
    shown = summ[["panel", "method", "metric", "component", "layer", "n_runs"]].copy()
    shown["peak step [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:.0f}") for m, lo, hi, n in
                                   zip(summ["peak_step"], summ["peak_step_lo"], summ["peak_step_hi"], summ["n_peaks"],
                                       strict=True)]
    shown["rise-and-fall"] = [f"{f:.0%} of {n}" for f, n in zip(summ["rise_and_fall_fraction"], summ["n_runs"],
                                                                strict=True)]
    shown["run_ids"] = summ["run_ids"]
    shown["source"] = summ["source"]
    return shown
