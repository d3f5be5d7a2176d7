"""Which run is which method, which panel it belongs to, and which vanilla run it is compared with.

The grid's axes are split in two from the runs' resolved configs:

* a **method axis** changes `meta.learner`, or changes only `meta.*` keys
  (e.g. `method`, `meta.inner.steps`, `meta.hybrid_ratio`): it says *how* a
  run learns;
* a **replicate axis** is one the experiment declares (`replicates:`,
  default `[seed]`): its values repeat the same comparison, so runs differing
  only there share a *cell* (method label, panel) and figures aggregate over
  them;
* every other axis is a **facet axis** (`model.preset`, `train.lr`, ...): it
  says *what* is being compared, and figures get one panel per combination of
  facet-axis values.

What an axis changes is read from pairs of runs that differ on that axis only.

**Pairing rule.** The baseline of a meta run R (`meta.learner != none`) is
the vanilla run V (`meta.learner == none`) with the same value as R on every
facet axis and, where one exists, on every replicate axis (meta seed s against
vanilla seed s: a *paired* comparison). Without a same-replicate vanilla run
the pairing is *unpaired* (any vanilla run of the same facets) and the
comparison across seeds is a Welch test instead of a paired one. If several
vanilla runs qualify (a grid that also varies meta-only keys for vanilla runs,
which do not affect them), the one sharing the most method-axis values with R
wins, then the smallest run id. A meta run with no such vanilla run has no
baseline and is reported as such.

**Comparisons** (the experiment's `compare:` section, `design(..., compare=)`):

* a **tuning axis** (`compare.tuning`, e.g. `train.lr`) is neither a facet
  nor a method axis: no panel per value. Vanilla labels carry its value
  (`vanilla, lr=0.001`), so each value is its own cell; meta labels carry it
  only when meta runs themselves vary it. Per panel and vanilla label the
  *tuned* value is the one whose mean final validation loss over its
  replicates is lowest (runs without evals are ignored; a tie goes to the
  smaller natural-sorted value; with no evals at all, the smallest value, with
  a note), and every meta run is compared with the vanilla run of that value
  (same facet values, same replicate values where one exists).
* **declared baselines** (`compare.baselines`, meta label -> vanilla labels):
  such a meta run is compared with each listed label (its tuned value when
  the label is tuned), in order; `Design.baselines` holds all of them and
  `Design.baseline` the first. A label matching no vanilla run is a note.
* `Design.candidates`: every vanilla run that could be a meta run's baseline
  before any metric exists (same facets, any tuning value, same replicate
  values where such runs exist, declared labels only when declared), for
  planning compute-matched work; `design()` needs no evals.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

from metapretrain.config.overrides import flatten
from metapretrain.figures.load import RunData

PRESET_ORDER = ("micro", "mini", "tiny", "small", "medium", "large")
SIZE_AXES = ("model.preset", "size", "model")
VANILLA = "vanilla"


def changed_keys(runs: list[RunData], axis: str) -> set[str] | None:
    """Config keys that differ between runs differing only on `axis`; None when no such pair exists."""
    flat = {r.run_id: flatten(r.config) for r in runs}
    others = sorted({a for r in runs for a in r.axes} - {axis})
    groups: dict[tuple, list[RunData]] = {}
    for r in runs:
        if axis in r.axes:
            groups.setdefault(tuple(r.axes.get(a) for a in others), []).append(r)
    keys: set[str] = set()
    seen_pair = False
    for members in groups.values():
        for a, b in itertools.combinations(members, 2):
            if a.axes[axis] == b.axes[axis]:
                continue
            seen_pair = True
            fa, fb = flat[a.run_id], flat[b.run_id]
            keys |= {k for k in fa.keys() | fb.keys() if fa.get(k) != fb.get(k)}
    return keys if seen_pair else None


def _natural(value: str):
    try:
        return (0, float(value), "")
    except ValueError:
        return (1, 0.0, value)


@dataclass
class Design:
    method_axes: list[str]
    learner_axes: list[str]  # method axes that change meta.learner itself
    facet_axes: list[str]  # facet axes with more than one value among the runs
    replicate_axes: list[str] = field(default_factory=list)  # declared replicate axes the grid has
    label: dict[str, str] = field(default_factory=dict)  # run id -> method label
    panel: dict[str, str] = field(default_factory=dict)  # run id -> panel label
    replicate: dict[str, str] = field(default_factory=dict)  # run id -> 'seed=1' ('' without replicate axes)
    baseline: dict[str, str | None] = field(default_factory=dict)  # meta run id -> vanilla run id
    paired: dict[str, bool] = field(default_factory=dict)  # meta run id -> baseline has its replicate values
    notes: list[str] = field(default_factory=list)
    tuning_axes: list[str] = field(default_factory=list)  # compare.tuning axes the grid has
    # meta run id -> every vanilla run it is compared with (declared, or the one the rule picks); [] without one
    baselines: dict[str, list[str]] = field(default_factory=dict)
    # meta run id -> every vanilla run that could be a baseline once metrics exist (planning, no evals needed)
    candidates: dict[str, list[str]] = field(default_factory=dict)
    # panel -> vanilla base label (label without the tuning values) -> the tuned choice (see `_tune`)
    tuned: dict[str, dict[str, dict]] = field(default_factory=dict)
    declared: dict[str, list[str]] = field(default_factory=dict)  # compare.baselines as given
    _panel_key: dict[str, tuple] = field(default_factory=dict)
    _base_label: dict[str, str] = field(default_factory=dict)  # run id -> label without tuning values
    _tkey: dict[str, tuple] = field(default_factory=dict)  # run id -> its tuning-axis values

    def replicates_text(self) -> str:
        """The replicate axes as captions name them."""
        return ", ".join(self.replicate_axes) or "none in this grid"

    def panels(self) -> list[str]:
        """Panel labels in display order: by model size, then by the facet values."""
        order = sorted(self.panel, key=lambda rid: self._panel_key[rid])
        return list(dict.fromkeys(self.panel[rid] for rid in order))

    def methods(self) -> list[str]:
        """Method labels, vanilla first (a vanilla run's label always starts with 'vanilla')."""
        labels = sorted(set(self.label.values()), key=lambda s: (not s.startswith(VANILLA), s))
        return labels

    def cells(self, run_ids=None) -> dict[tuple[str, str], list[str]]:
        """(panel, method label) -> its runs (the replicates), in panel then method order; run ids sorted."""
        ids = self.panel if run_ids is None else [r for r in run_ids if r in self.panel]
        order = {p: i for i, p in enumerate(self.panels())}
        methods = self.methods()
        out: dict[tuple[str, str], list[str]] = {}
        for rid in sorted(ids, key=lambda r: (order[self.panel[r]], methods.index(self.label[r]), r)):
            out.setdefault((self.panel[rid], self.label[rid]), []).append(rid)
        return out

    def panel_title(self) -> str:
        """What a panel is, for axis labels: 'model' when panels are model sizes only, else the facet axes."""
        if all(a in SIZE_AXES for a in self.facet_axes):
            return "model"
        return ", ".join(self.facet_axes)

    def is_paired(self, rid: str, base: str) -> bool:
        """Whether vanilla run `base` has meta run `rid`'s replicate values (a paired comparison)."""
        return self.replicate.get(rid) == self.replicate.get(base)

    def tuned_run(self, rid: str) -> bool:
        """Whether a vanilla run has its panel's tuned value (True without tuning axes)."""
        if not self.tuning_axes:
            return True
        t = self.tuned.get(self.panel.get(rid, ""), {}).get(self._base_label.get(rid, ""))
        return t is not None and t["key"] == self._tkey.get(rid)

    def baseline_text(self) -> str:
        """The pairing as captions say it: which vanilla run each meta run meets, and how it was chosen."""
        parts = []
        if self.declared:
            parts.append("declared baselines: " + "; ".join(f"{m} vs {', '.join(v)}"
                                                            for m, v in self.declared.items()))
        if self.tuning_axes and self.tuned:
            by = {}
            for panel, labels in self.tuned.items():
                for base, t in labels.items():
                    by.setdefault((base, t["text"]), []).append(panel)
            values = sorted({v for labels in self.tuned.values() for t in labels.values() for v in t["values"]},
                            key=_natural_tuple)
            over = f"{{{', '.join(values)}}}"
            chosen = []
            panels = self.panels()
            multi = len(panels) > 1
            for (base, text), ps in by.items():
                where = f" ({', '.join(ps)})" if multi and len(ps) < len(panels) else ""
                chosen.append(f"{base} at {text}{where}")
            ns = sorted({t["n"] for labels in self.tuned.values() for t in labels.values()})
            unit = "seeds" if self.replicate_axes == ["seed"] else (
                f"replicates ({', '.join(self.replicate_axes)})" if self.replicate_axes else "runs")
            how = (f"the tuned value of {over} by mean final validation loss over "
                   f"{'/'.join(map(str, ns))} {unit}")
            if not any(t["from_evals"] for labels in self.tuned.values() for t in labels.values()):
                how = f"the smallest value of {over} (no run has validation loss yet)"
            parts.append(f"baseline: {'; '.join(chosen)}, {how}")
        elif not self.declared:
            parts.append("baseline: the vanilla run with the same facet values")
        if self.replicate_axes:
            unpaired = [r for r, bs in self.baselines.items() if any(not self.is_paired(r, b) for b in bs)]
            pairing = "paired by " + ", ".join(self.replicate_axes)
            if unpaired:
                pairing += f" ({len(unpaired)} meta run(s) without a same-replicate vanilla run: unpaired)"
        else:
            pairing = "one pair per meta run (no replicate axes)"
        return "; ".join([*parts, pairing])

    def run_title(self, rid: str) -> str:
        """A run's method label, with its replicate values when there are any ('fomaml · seed=2')."""
        return self.label[rid] + (f" · {self.replicate[rid]}" if self.replicate.get(rid) else "")


def _natural_tuple(value):
    return tuple(_natural(v) for v in value) if isinstance(value, tuple) else _natural(value)


def _short(axis: str) -> str:
    return axis[len("meta."):] if axis.startswith("meta.") else axis


def _tuning_short(axis: str) -> str:
    """A tuning axis as labels name it: its last dotted part (`train.lr` -> `lr`)."""
    return axis.rsplit(".", 1)[-1]


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def design(runs: list[RunData], axes: list[str], replicates=("seed",), compare: dict | None = None) -> Design:
    compare = compare or {}
    axes = [a for a in axes if any(a in r.axes for r in runs)] or sorted({a for r in runs for a in r.axes})
    replicate_axes = [a for a in axes if a in replicates]
    tuning_axes = [a for a in axes if a in (compare.get("tuning") or []) and a not in replicate_axes]
    method_axes, learner_axes, facet_axes = [], [], []
    for axis in (a for a in axes if a not in replicate_axes and a not in tuning_axes):
        keys = changed_keys(runs, axis)
        if keys is None:  # no two runs differ on this axis alone: decide by name
            is_method = axis in ("method", "learner", "meta.learner")
            is_learner = is_method
        else:
            is_learner = "meta.learner" in keys
            is_method = is_learner or (bool(keys) and all(k.startswith("meta.") for k in keys))
        if is_method:
            method_axes.append(axis)
            if is_learner:
                learner_axes.append(axis)
        elif len({r.axes.get(axis) for r in runs}) > 1:
            facet_axes.append(axis)
    d = Design(method_axes, learner_axes, facet_axes, replicate_axes, tuning_axes=tuning_axes)
    d.declared = {str(k): [str(x) for x in v] for k, v in (compare.get("baselines") or {}).items()}
    d._tkey = {r.run_id: tuple(r.axes.get(a, "-") for a in tuning_axes) for r in runs}
    meta_vary = [a for a in tuning_axes if len({r.axes.get(a) for r in runs if not r.is_vanilla}) > 1]

    for r in runs:
        parts = [r.axes[a] for a in learner_axes if a in r.axes]
        if not parts:
            parts = [VANILLA if r.is_vanilla else r.learner]
        elif r.is_vanilla and not parts[0].startswith(VANILLA):  # e.g. axis `meta.learner: [none, fomaml]`
            parts[0] = VANILLA if parts[0] == "none" else f"{VANILLA} ({parts[0]})"
        if not r.is_vanilla:  # meta-only settings do not change a vanilla run
            parts += [f"{_short(a)}={r.axes[a]}" for a in method_axes if a not in learner_axes and a in r.axes]
        d._base_label[r.run_id] = ", ".join(parts)
        shown = tuning_axes if r.is_vanilla else meta_vary
        parts += [f"{_tuning_short(a)}={r.axes[a]}" for a in shown if a in r.axes]
        d.label[r.run_id] = ", ".join(parts)
        d.replicate[r.run_id] = ", ".join(f"{a}={r.axes.get(a, '-')}" for a in replicate_axes)
        facets = [(a, r.axes.get(a, "-")) for a in facet_axes]
        if facets:
            d.panel[r.run_id] = ", ".join(v if a in SIZE_AXES else f"{a}={v}"
                                          for a, v in facets)
        else:
            d.panel[r.run_id] = r.preset
        rank = PRESET_ORDER.index(r.preset) if r.preset in PRESET_ORDER else len(PRESET_ORDER)
        d._panel_key[r.run_id] = (rank, tuple(_natural(v) for _, v in facets))

    vanilla = [r for r in runs if r.is_vanilla]
    _tune(d, vanilla)
    known = sorted({d.label[v.run_id] for v in vanilla} | {d._base_label[v.run_id] for v in vanilla})
    for m in d.declared:
        if not any(m in (d.label[r.run_id], d._base_label[r.run_id]) for r in runs if not r.is_vanilla):
            d.notes.append(f"compare.baselines: no meta run has the label {m!r}; its declared baselines are unused")
    for r in runs:
        if not r.is_vanilla:
            _pair(d, r, vanilla, known)
    return d


def _tune(d: Design, vanilla: list[RunData]) -> None:
    """Per panel and vanilla base label, the tuning value of lowest mean final validation loss (`d.tuned`)."""
    if not d.tuning_axes:
        return
    from metapretrain.figures.speedup import final_val_loss

    groups: dict[tuple[str, str], dict[tuple, list[RunData]]] = {}
    for v in vanilla:
        groups.setdefault((d.panel[v.run_id], d._base_label[v.run_id]), {}).setdefault(
            d._tkey[v.run_id], []).append(v)
    for (panel, base), by_value in groups.items():
        losses = {k: [x for x in (final_val_loss(v.evals) for v in members) if math.isfinite(x)]
                  for k, members in by_value.items()}
        scored = {k: _mean(xs) for k, xs in losses.items() if xs}
        keys = sorted(by_value, key=_natural_tuple)
        from_evals = bool(scored)
        key = min(scored, key=lambda k: (scored[k], _natural_tuple(k))) if scored else keys[0]

        def text(k, full=True):
            return ", ".join(f"{a if full else _tuning_short(a)}={x}" for a, x in zip(d.tuning_axes, k, strict=True))

        d.tuned.setdefault(panel, {})[base] = {
            "key": key, "text": text(key), "values": [text(k, full=False).split("=", 1)[1] if len(k) == 1
                                                       else text(k, full=False) for k in keys],
            "mean_val_loss": {text(k): scored.get(k, math.nan) for k in keys},
            "n": len(losses[key]), "from_evals": from_evals,
            "runs": sorted(v.run_id for v in by_value[key])}
        who = f"panel {panel}" + (f", {base}" if base != VANILLA else "")
        if not from_evals:
            d.notes.append(f"tuned baseline for {who}: {text(key)}, the smallest value (no run has a validation "
                           "loss yet)")
            continue
        others = "; ".join(f"{text(k, full=False).split('=', 1)[1] if len(k) == 1 else text(k)}: "
                           + (f"{scored[k]:.2f}" if k in scored else "no evals") for k in keys if k != key)
        d.notes.append(f"tuned baseline for {who}: {text(key)} (mean final val loss {scored[key]:.2f} over "
                       f"{len(losses[key])} replicates" + (f"; {others}" if others else "") + ")")


def _pair(d: Design, r: RunData, vanilla: list[RunData], known: list[str]) -> None:
    """Meta run r's baselines, candidates and pairing (module docstring: the rule)."""
    rid = r.run_id
    facets = [v for v in vanilla if all(v.axes.get(a) == r.axes.get(a) for a in d.facet_axes)]
    declared = d.declared.get(d.label[rid], d.declared.get(d._base_label[rid]))
    d.baselines[rid], d.candidates[rid] = [], []
    if not facets:
        d.baseline[rid] = None
        d.notes.append(f"{rid}: no vanilla run with the same facet-axis values "
                       f"({', '.join(f'{a}={r.axes.get(a)}' for a in d.facet_axes) or 'none'})")
        return

    def same_rep(cands):
        return [v for v in cands if all(v.axes.get(a) == r.axes.get(a) for a in d.replicate_axes)]

    def tuned(cands):
        return [v for v in cands if d.tuned_run(v.run_id)]

    groups: list[tuple[str | None, list[RunData]]] = []
    if declared:
        for lab in declared:
            members = [v for v in facets if lab in (d.label[v.run_id], d._base_label[v.run_id])]
            if not members:
                d.notes.append(f"{rid}: declared baseline {lab!r} matches no vanilla run with its facet values "
                               f"(vanilla labels: {', '.join(known) or 'none'}); skipped")
                continue
            groups.append((lab, members))
    else:
        groups.append((None, facets))
    for lab, members in groups:
        d.candidates[rid] += [v.run_id for v in (same_rep(members) or members) if v.run_id not in d.candidates[rid]]
        # a declared full label ('vanilla, lr=0.001') is taken as given; otherwise the tuned value
        cands = members if lab is not None and any(lab == d.label[v.run_id] for v in members) else tuned(members)
        cands = cands or members
        same = same_rep(cands)
        if not same:
            d.notes.append(f"{rid}: no vanilla run with {d.replicate[rid]}"
                           + (f" among {lab!r}" if lab else "") + ": compared unpaired")
        cands = same or cands
        best = min(cands, key=lambda v: (-sum(v.axes.get(a) == r.axes.get(a) for a in d.method_axes), v.run_id))
        if best.run_id not in d.baselines[rid]:
            d.baselines[rid].append(best.run_id)
        if len(cands) > 1:
            d.notes.append(f"{rid}: {len(cands)} vanilla candidates, chose {best.run_id}")
    d.baseline[rid] = d.baselines[rid][0] if d.baselines[rid] else None
    if d.baseline[rid] is not None:
        d.paired[rid] = d.is_paired(rid, d.baseline[rid])
