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
"""

from __future__ import annotations

import itertools
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
    _panel_key: dict[str, tuple] = field(default_factory=dict)

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

    def run_title(self, rid: str) -> str:
        """A run's method label, with its replicate values when there are any ('fomaml · seed=2')."""
        return self.label[rid] + (f" · {self.replicate[rid]}" if self.replicate.get(rid) else "")


def _short(axis: str) -> str:
    return axis[len("meta."):] if axis.startswith("meta.") else axis


def design(runs: list[RunData], axes: list[str], replicates=("seed",)) -> Design:
    axes = [a for a in axes if any(a in r.axes for r in runs)] or sorted({a for r in runs for a in r.axes})
    replicate_axes = [a for a in axes if a in replicates]
    method_axes, learner_axes, facet_axes = [], [], []
    for axis in (a for a in axes if a not in replicate_axes):
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
    d = Design(method_axes, learner_axes, facet_axes, replicate_axes)

    for r in runs:
        parts = [r.axes[a] for a in learner_axes if a in r.axes]
        if not parts:
            parts = [VANILLA if r.is_vanilla else r.learner]
        elif r.is_vanilla and not parts[0].startswith(VANILLA):  # e.g. axis `meta.learner: [none, fomaml]`
            parts[0] = VANILLA if parts[0] == "none" else f"{VANILLA} ({parts[0]})"
        if not r.is_vanilla:  # meta-only settings do not change a vanilla run
            parts += [f"{_short(a)}={r.axes[a]}" for a in method_axes if a not in learner_axes and a in r.axes]
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
    for r in runs:
        if r.is_vanilla:
            continue
        cands = [v for v in vanilla if all(v.axes.get(a) == r.axes.get(a) for a in facet_axes)]
        if not cands:
            d.baseline[r.run_id] = None
            d.notes.append(f"{r.run_id}: no vanilla run with the same facet-axis values "
                           f"({', '.join(f'{a}={r.axes.get(a)}' for a in facet_axes) or 'none'})")
            continue
        same = [v for v in cands if all(v.axes.get(a) == r.axes.get(a) for a in replicate_axes)]
        d.paired[r.run_id] = bool(same)
        if not same:
            d.notes.append(f"{r.run_id}: no vanilla run with {d.replicate[r.run_id]}: compared unpaired")
        cands = same or cands
        best = min(cands, key=lambda v: (-sum(v.axes.get(a) == r.axes.get(a) for a in method_axes), v.run_id))
        d.baseline[r.run_id] = best.run_id
        if len(cands) > 1:
            d.notes.append(f"{r.run_id}: {len(cands)} vanilla candidates, chose {best.run_id}")
    return d
