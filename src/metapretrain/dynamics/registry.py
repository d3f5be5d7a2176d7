"""Dynamics metrics registered by name: `@register_metric("name", needs={...})`.

A metric is a function `fn(ctx) -> list[Row]` that reads a checkpoint's
probe pass (`metapretrain.dynamics.probe_pass.CheckpointData`) and returns tidy
rows. `needs` says what the probe pass must collect, so one forward and one
backward per checkpoint serve every requested metric:

* `weights`     the checkpoint's parameters (always loaded)
* `activations` outputs of every projection and every block (the residual stream) on the probe batch
* `gradients`   `.grad` of the real next-token loss on the probe batch
* `attention`   the attention inputs, from which `layers[i].attn.scores(x)` gives probabilities
* `reference`   the FINAL checkpoint's residual activations (the stage processes it first)
* `train_log`   the run's `pretrain/metrics.jsonl` train records

Adding a metric touches one file: decorate a function in a module listed in
`METRIC_MODULES`. Metric modules import torch inside their functions, so
listing the known names (config validation does) stays cheap.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import NamedTuple

from metapretrain.registry import Registry

NEEDS = frozenset({"weights", "activations", "gradients", "attention", "reference", "train_log"})

# Modules whose import registers the built-in metrics.
METRIC_MODULES = (
    "metapretrain.dynamics.rank",
    "metapretrain.dynamics.entropy",
    "metapretrain.dynamics.cka",
    "metapretrain.dynamics.norms",
    "metapretrain.dynamics.episodic",
)


class Row(NamedTuple):
    """One measured value; `layer`/`head` are None where not applicable."""

    layer: int | None
    component: str
    head: int | None
    metric: str
    value: float


@dataclass(frozen=True)
class Metric:
    name: str
    fn: Callable[..., list[Row]]
    needs: frozenset[str]
    doc: str


_METRICS = Registry("metric", modules=METRIC_MODULES, identity=lambda metric: metric.fn)


class UnknownMetricError(ValueError):
    """A metric name that nothing registered."""


def register_metric(name: str, needs: Iterable[str] = ()):
    """Function decorator: make `fn(ctx) -> list[Row]` available as metric `name`."""
    needs = frozenset(needs)
    bad = needs - NEEDS
    if bad:
        raise ValueError(f"metric {name!r}: unknown needs {sorted(bad)}; allowed: {', '.join(sorted(NEEDS))}")

    def wrap(fn):
        doc = (fn.__doc__ or "").strip().splitlines()
        _METRICS.add(name, Metric(name, fn, needs, doc[0] if doc else ""))
        return fn

    return wrap


def known_metrics() -> dict[str, Metric]:
    """Every registered metric, by name."""
    _METRICS.load()
    return dict(_METRICS)


def get_metrics(names: Iterable[str]) -> list[Metric]:
    """The metrics called `names`, in order; an unknown name raises UnknownMetricError listing the known ones."""
    known = known_metrics()
    out = []
    for name in names:
        if name not in known:
            from metapretrain.config.errors import suggest

            raise UnknownMetricError(f"unknown dynamics metric '{name}'{suggest(name, known)}; "
                                     f"known metrics: {', '.join(sorted(known))}")
        if known[name] not in out:
            out.append(known[name])
    return out
