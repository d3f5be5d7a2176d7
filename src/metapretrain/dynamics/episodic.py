"""Episodic accuracy of meta runs, read from `pretrain/metrics.jsonl` at each checkpoint step.

Every `meta/<name>` key of the train records whose name has an `acc` word
(`meta/query_acc`, `meta/support_acc_before`, ...) becomes metric `<name>`
with component `episode` and no layer. The value at a checkpoint is the last
one logged at or before its step (meta metrics are logged only for updates
that drew a meta micro-batch). Vanilla runs log none, so they get no rows.
"""

from __future__ import annotations

import bisect
from pathlib import Path

from metapretrain.dynamics.registry import Row, register_metric
from metapretrain.metrics_log import read_records

COMPONENT = "episode"


def read_train_log(path: str | Path) -> list[dict]:
    """The `kind: train` records of a metrics.jsonl, in file order; [] when the file is absent.

    A torn last line (a run killed mid-write) is ignored; a damaged line elsewhere is an error naming it
    (metrics_log: the rows computed from it are kept).
    """
    return [r for r in read_records(path) if r.get("kind") == "train"]


def _is_accuracy(key: str) -> bool:
    return key.startswith("meta/") and "acc" in key[len("meta/"):].split("_")


def accuracy_at(records: list[dict], step: int) -> dict[str, float]:
    """{metric name: last value logged at or before `step`} for every episodic accuracy key."""
    series: dict[str, tuple[list[int], list[float]]] = {}
    for rec in sorted(records, key=lambda r: r["step"]):
        for key, value in rec.items():
            if _is_accuracy(key) and value is not None:
                steps, values = series.setdefault(key[len("meta/"):], ([], []))
                steps.append(int(rec["step"]))
                values.append(float(value))
    out = {}
    for name, (steps, values) in series.items():
        i = bisect.bisect_right(steps, step)
        if i:
            out[name] = values[i - 1]
    return out


@register_metric("episodic_accuracy", needs={"train_log"})
def episodic_accuracy_metric(ctx) -> list[Row]:
    """Episodic (support/query) accuracy logged by the meta-learner, at the checkpoint's step."""
    return [Row(None, COMPONENT, None, name, value) for name, value in sorted(accuracy_at(ctx.train_log, ctx.step).items())]
