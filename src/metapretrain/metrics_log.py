"""Reading `pretrain/metrics.jsonl`: the one reader, and its rule for a line that does not read.

The writer (`train.metrics.MetricsWriter`) appends one JSON object with a
`step` per line and flushes it, and an attempt that resumes first cuts the
file back to its checkpoint, atomically. So the only bad line the writer can
leave is the last one, torn by a kill mid-write (or still being written):
every reader drops it, silently. Any other line that does not decode, parse,
or hold a JSON object with a `step` is damage from outside (a disk fault, a
hand edit). It raises an InputError naming file:line, so pretraining (whose
resume rewrites the file) and dynamics (whose rows are kept) stop on it;
readers that only show the file, rebuilt on every call (figures, status),
pass `on_damaged` to warn and skip it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from metapretrain.io import InputError, parse_jsonl, read_jsonl


def read_records(path: str | Path, *, on_damaged: Callable[[InputError], None] | None = None,
                 max_bytes: int | None = None) -> list[dict]:
    """The records of a metrics.jsonl in file order; [] when it does not exist.

    A torn last line is dropped. A damaged line elsewhere raises its InputError (file:line), or is passed
    to `on_damaged` and skipped. `max_bytes`: only the records within the file's last `max_bytes`
    (the first line, which the window most likely cuts, left out); line numbers still count from the
    top of the file.
    """
    path = Path(path)
    start = 0  # offset of the lines read; lines above it are counted only when there is something to report
    above: list[int] = []

    def damaged(exc: InputError) -> None:
        if start:
            if not above:
                with open(path, "rb") as fh:
                    above.append(fh.read(start).count(b"\n"))
            exc = InputError(exc.file, exc.problem, above[0] + exc.line, exc.col)
        if on_damaged is None:
            raise exc
        on_damaged(exc)

    try:
        if max_bytes:
            data, start = _tail(path, max_bytes)
            lines = parse_jsonl(data, path, on_bad=damaged)
        else:
            lines = read_jsonl(path, on_bad=damaged)
    except FileNotFoundError:
        return []
    out = []
    for n, rec in lines:
        if isinstance(rec, dict) and "step" in rec:
            out.append(rec)
        else:
            damaged(InputError(path, f"expected a JSON object with a `step`, got {_shape(rec)}", n))
    return out


def final_train_loss(train: Iterable[dict]) -> float:
    """A run's final train loss from its train records (file order): the mean next-token loss over the
    last logging interval (`loss_interval`: every next-token micro-batch since the record before), or,
    for runs from before that field, the last update's `loss`; NaN when no record has either."""
    def value(rec: dict, key: str) -> float | None:
        v = rec.get(key)
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    for rec in reversed(list(train)):
        for key in ("loss_interval", "loss"):
            if (v := value(rec, key)) is not None:
                return v
    return math.nan


def _tail(path: Path, max_bytes: int) -> tuple[bytes, int]:
    """(the file's whole lines within its last `max_bytes`, their offset in the file)."""
    try:
        with open(path, "rb") as fh:
            start = max(0, fh.seek(0, os.SEEK_END) - max_bytes)
            fh.seek(start)
            data = fh.read()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None
    if start:
        cut = data.find(b"\n") + 1
        start, data = start + cut, data[cut:]
    return data, start


def _shape(value) -> str:
    return "an object without one" if isinstance(value, dict) else type(value).__name__
