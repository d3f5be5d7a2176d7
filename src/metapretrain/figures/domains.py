"""Per-domain held-out loss and perplexity (Paloma-style): tables and curves from `val_loss/<domain>`.

Every evaluation record of `metrics.jsonl` carries `val_loss/<domain>` for each evaluation domain of the
run's tokenize output (`corpus.domains`, docs/architecture.md). From those:

* **`domains_final`** (table): per cell (panel, method) and domain, the final validation loss (each run's
  last finite `val_loss/<domain>`) and perplexity (exp of it, per run), mean and 95% Student-t interval
  over the replicates (`stats.summary`).
* **`domains_delta`** (table): per meta cell, baseline label (`Design.baselines`) and domain, Δ = meta −
  vanilla loss over the (meta run, baseline) pairs, at two points:
  - `final`: both runs' final losses (the same budget: step-matched when the budget is in steps);
  - `flops_matched`: the meta run's final loss against the baseline's loss linearly interpolated at the
    meta run's final FLOPs (`speedup.loss_at`; NaN, and left out, when the baseline's evaluations do not
    reach that far).
  Mean Δ with its 95% interval and two-sided p: the paired t-test when every pair shares its replicate
  values, else Welch's test between the meta runs and their baselines (`stats.paired` / `stats.unpaired`);
  `ppl_ratio` = exp(mean Δ), the geometric-mean perplexity ratio (> 1: meta worse).
* **`domains/domain_loss_vs_<coord>`** (figures, coord step and FLOPs): one panel per (model panel,
  domain), each method's mean curve with a 95% band over its replicates (`loss.replicate_band`).

Without any `val_loss/<domain>` the module is skipped with a reason.
"""

from __future__ import annotations

import math

from metapretrain.figures import stats
from metapretrain.figures.load import COORDS, ExperimentData
from metapretrain.figures.outputs import Outputs
from metapretrain.figures.pairing import Design

PREFIX = "val_loss/"
GROUP = "domains"
POINTS = ("final", "flops_matched")
CURVE_COORDS = ("step", "flops")


def domain_names(runs) -> list[str]:
    """Every domain any run's eval records name, in first-seen order."""
    out: dict[str, None] = {}
    for r in runs:
        if r.evals is not None:
            for col in r.evals.columns:
                if str(col).startswith(PREFIX):
                    out.setdefault(str(col)[len(PREFIX):], None)
    return list(out)


def domain_evals(evals, domain: str):
    """A run's eval records as `speedup` reads them: the coordinates and `val_loss` = that domain's loss."""
    col = PREFIX + domain
    if evals is None or col not in evals:
        return None
    df = evals[[c for c in COORDS if c in evals]].copy()
    df["val_loss"] = evals[col]
    return df


def _final(evals, domain: str) -> float:
    from metapretrain.figures.speedup import final_val_loss

    return final_val_loss(domain_evals(evals, domain))


def _ppl(loss: float) -> float:
    return math.exp(loss) if math.isfinite(loss) and loss < 700 else math.nan


def final_table(data: ExperimentData, d: Design, domains: list[str]):
    """One row per (panel, method, domain): n and mean [95% CI] of final loss and perplexity."""
    import pandas as pd

    rows = []
    for (panel, method), rids in d.cells([r.run_id for r in data.runs]).items():
        for dom in domains:
            losses = [_final(data.run(rid).evals, dom) for rid in rids]
            have = [rid for rid, x in zip(rids, losses, strict=True) if math.isfinite(x)]
            if not have:
                continue
            s = stats.summary(losses)
            p = stats.summary([_ppl(x) for x in losses])
            rows.append({"panel": panel, "method": method, "domain": dom, "n": s.n,
                         "loss": s.mean, "loss_lo": s.lo, "loss_hi": s.hi,
                         "ppl": p.mean, "ppl_lo": p.lo, "ppl_hi": p.hi,
                         "run_ids": "; ".join(have),
                         "source": "; ".join(data.run(r).rel(data.exp_dir, "pretrain", "metrics.jsonl") for r in have)})
    return pd.DataFrame(rows)


def pair_values(meta_evals, base_evals, domain: str) -> dict[str, tuple[float, float]]:
    """(meta loss, baseline loss) of one pair and domain at each point (module docstring)."""
    from metapretrain.figures.speedup import final_coords, loss_at

    m, b = domain_evals(meta_evals, domain), domain_evals(base_evals, domain)
    meta_final = _final(meta_evals, domain)
    at = final_coords(m)["flops"] if m is not None else math.nan
    return {"final": (meta_final, _final(base_evals, domain)),
            "flops_matched": (meta_final, loss_at(b, "flops", at))}


def delta_table(data: ExperimentData, d: Design, domains: list[str]):
    """One row per (meta cell, baseline label, domain, point): pairs, mean Δ [95% CI], p, test."""
    import pandas as pd

    pairs = d.baselines or {r: [b] for r, b in d.baseline.items() if b is not None}
    meta_ids = [r for r, bs in pairs.items() if bs]
    rows = []
    for (panel, method), rids in d.cells(meta_ids).items():
        by_label: dict[str, list[tuple[str, str]]] = {}
        for rid in rids:
            for base in pairs[rid]:
                by_label.setdefault(d.label[base], []).append((rid, base))
        for base_label, members in by_label.items():
            for dom in domains:
                vals = {(rid, base): pair_values(data.run(rid).evals, data.run(base).evals, dom)
                        for rid, base in members}
                for point in POINTS:
                    ok = [(k, v[point]) for k, v in vals.items() if all(math.isfinite(x) for x in v[point])]
                    if not ok:
                        continue
                    meta = [mv for _, (mv, _) in ok]
                    base = [bv for _, (_, bv) in ok]
                    is_paired = all(d.is_paired(rid, b) for (rid, b), _ in ok)
                    if is_paired:
                        t = stats.paired(meta, base)
                    else:  # each run once: the same baseline may serve several meta runs
                        t = stats.unpaired(list({rid: mv for (rid, _), (mv, _) in ok}.values()),
                                           list({b: bv for (_, b), (_, bv) in ok}.values()))
                    runs = sorted({x for (rid, b), _ in ok for x in (rid, b)})
                    rows.append({"panel": panel, "method": method, "baseline": base_label, "domain": dom,
                                 "point": point, "n_pairs": len(ok), "meta_loss": sum(meta) / len(meta),
                                 "baseline_loss": sum(base) / len(base), "delta": t.mean_diff,
                                 "delta_lo": t.lo, "delta_hi": t.hi, "p": t.p,
                                 "ppl_ratio": math.exp(t.mean_diff) if math.isfinite(t.mean_diff) else math.nan,
                                 "test": t.test, "paired": is_paired,
                                 "run_ids": "; ".join(rid for (rid, _), _ in ok),
                                 "baseline_runs": "; ".join(b for (_, b), _ in ok),
                                 "source": "; ".join(data.run(r).rel(data.exp_dir, "pretrain", "metrics.jsonl")
                                                     for r in runs)})
    return pd.DataFrame(rows)


def _prepare_dir(out: Outputs) -> None:
    """figures/domains/, emptied (a rerun leaves no stale figure behind)."""
    folder = out.root / GROUP
    folder.mkdir(parents=True, exist_ok=True)
    for p in folder.iterdir():
        if p.is_file():
            p.unlink()


def render(data: ExperimentData, d: Design, out: Outputs) -> None:
    _prepare_dir(out)
    runs = [r for r in data.runs if r.evals is not None]
    domains = domain_names(runs)
    if not domains:
        data.skip("per-domain loss: no eval record has val_loss/<domain> (corpus.domains off, "
                  "train.domain_eval_batches 0, or runs trained before evaluation domains existed)")
        return
    inputs = sorted({r.rel(data.exp_dir, "pretrain", "metrics.jsonl") for r in runs})
    over = d.replicates_text()
    final = final_table(data, d, domains)
    shown = final[["panel", "method", "domain", "n"]].copy()
    shown["loss [95% CI]"] = [stats.fmt_interval(m, lo, hi, n) for m, lo, hi, n in
                              zip(final["loss"], final["loss_lo"], final["loss_hi"], final["n"], strict=True)]
    shown["ppl [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:.2f}") for m, lo, hi, n in
                             zip(final["ppl"], final["ppl_lo"], final["ppl_hi"], final["n"], strict=True)]
    shown["source"] = final["source"]
    out.table(final, "domains_final",
              "Per-domain held-out loss (Paloma-style): each run's final validation loss on every evaluation "
              "domain (corpus.domains; val_loss/<domain> in metrics.jsonl) and its perplexity exp(loss), per "
              f"method and panel: mean over the replicates ({over}) with a {stats.T_INTERVAL} (none for n = 1).",
              inputs, display=shown)
    if not any(bs for bs in (d.baselines or {}).values()) and not any(b for b in d.baseline.values()):
        data.skip("per-domain Δ: no meta run has a vanilla baseline")
    else:
        delta = delta_table(data, d, domains)
        if len(delta):
            dshown = delta[["panel", "method", "baseline", "domain", "point", "n_pairs"]].copy()
            dshown["Δ loss [95% CI]"] = [stats.fmt_interval(m, lo, hi, n, "{:+.4f}") for m, lo, hi, n in
                                         zip(delta["delta"], delta["delta_lo"], delta["delta_hi"],
                                             delta["n_pairs"], strict=True)]
            dshown["p"] = [stats.fmt_p(p) for p in delta["p"]]
            dshown["ppl ratio"] = [f"{v:.3f}" if math.isfinite(v) else "–" for v in delta["ppl_ratio"]]
            dshown["test"] = delta["test"]
            dshown["source"] = delta["source"]
            out.table(delta, "domains_delta",
                      "Per-domain Δ = meta − vanilla validation loss (nats/token; positive = meta worse) over the "
                      "meta run / baseline pairs, at the final evaluation (final) and at equal compute "
                      "(flops_matched: the baseline's loss linearly interpolated at the meta run's final FLOPs; "
                      "pairs beyond the baseline's evaluations left out): mean with 95% CI and two-sided p "
                      f"(paired t-test over the replicates, {over}; Welch where unpaired); ppl ratio = exp(mean Δ). "
                      f"{d.baseline_text()[:1].upper()}{d.baseline_text()[1:]}.",
                      inputs, display=dshown, latex_drop=("source", "test"))
    for coord in CURVE_COORDS:
        _curves(runs, d, out, domains, coord, inputs)


def _curves(runs, d: Design, out: Outputs, domains: list[str], coord: str, inputs: list[str]) -> None:
    from metapretrain.figures import style
    from metapretrain.figures.loss import _series, replicate_band

    panels = [p for p in d.panels() if any(d.panel[r.run_id] == p for r in runs)]
    colors = style.method_colors(d.methods())
    dashes = style.method_linestyles(d.methods())
    slots = [(p, dom) for p in panels for dom in domains]
    fig, axes = style.subplots(len(slots), max_cols=4, w=2.8, h=2.2)
    by_id = {r.run_id: r for r in runs}
    for ax, (panel, dom) in zip(axes, slots, strict=True):
        for (_, m), rids in d.cells(r.run_id for r in runs if d.panel[r.run_id] == panel).items():
            series = [s for rid in rids if (s := _series(domain_evals(by_id[rid].evals, dom), "val_loss", coord))
                      is not None]
            if not series:
                continue
            if len(series) == 1:
                ax.plot(*series[0], color=colors[m], ls=dashes[m], lw=1.3, marker="o", ms=2, label=m)
            else:
                x, mean, lo, hi = replicate_band(series)
                ax.plot(x, mean, color=colors[m], ls=dashes[m], lw=1.3, label=f"{m}, mean of {len(series)}")
                ax.fill_between(x, lo, hi, color=colors[m], alpha=0.18, lw=0)
        ax.set_title(dom if len(panels) == 1 else f"{dom} · {panel}", fontsize=8)
        ax.set_xlabel(style.AXIS_LABELS[coord])
    axes[0].set_ylabel(style.LOSS_LABEL)
    fig.tight_layout()
    style.figure_legend(fig, axes, ncol=4)
    ns = sorted({len(rids) for rids in d.cells(r.run_id for r in runs).values()})
    band = ("one run per curve, no band" if ns == [1] else
            f"n = {'/'.join(map(str, ns))} runs per curve ({d.replicates_text()}): mean with a {stats.T_INTERVAL} "
            "band on their common x")
    out.figure(fig, GROUP, f"domain_loss_vs_{coord}",
               f"Per-domain held-out validation loss vs {style.COORD_TITLES[coord]}, one panel per evaluation "
               f"domain (corpus.domains) and {d.panel_title()}, vanilla vs meta-learning; {band}.", inputs)
