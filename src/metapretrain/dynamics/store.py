"""`dynamics.csv`: append-only, one block of rows per checkpoint, safe against kills.

Each checkpoint's rows are appended in one write, flushed and fsynced; then
`dynamics.commit.json` records the file's committed length and steps
(written atomically). On open, anything past the committed length (a torn
row, or a whole checkpoint whose commit never happened) is cut off, so a
rerun recomputes exactly the checkpoints that were not committed.

Without a commit record (deleted, or a CSV from elsewhere) the file is
repaired conservatively: a partial trailing line is dropped, and so are the
rows of the last step present, which may be incomplete.

The commit record also holds the table's `identity` (metrics, probe batch,
reference checkpoint): rows computed under another identity cannot be mixed
with new ones, so a changed identity starts the table over.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

from metapretrain.io import decode_text, read_json, read_text, write_json

COLUMNS = ("run_id", "step", "tokens", "flops", "layer", "component", "head", "metric", "value")


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else repr(value)
    return str(value)


class DynamicsTable:
    """The CSV at `path` and its commit record; `steps` are the committed checkpoints."""

    def __init__(self, path: str | Path, identity: dict | None = None):
        self.path = Path(path)
        self.commit_path = self.path.with_name(self.path.stem + ".commit.json")
        self.identity = json.loads(json.dumps(identity or {}))  # as it reads back from JSON
        self.steps: set[int] = set()
        self.restarted = False
        self._open()

    def _header(self) -> bytes:
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerow(COLUMNS)
        return buf.getvalue().encode()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = self._header()
        if not self.path.exists() or self.path.stat().st_size < len(header):
            self._reset(header)
            return
        with open(self.path, "rb") as fh:
            if fh.read(len(header)) != header:
                raise ValueError(f"{self.path}: not a dynamics table (header differs from {','.join(COLUMNS)}); "
                                 "move it away to recompute")
        size = self.path.stat().st_size
        commit = self._read_commit()
        if commit is not None and commit["identity"] != self.identity:
            self.restarted = True
            self._reset(header)
            return
        if commit is not None and len(header) <= commit["bytes"] <= size:
            self._truncate(commit["bytes"])
            self.steps = set(commit["steps"])
            return
        self._repair_without_commit(header)

    def _read_commit(self) -> dict | None:
        try:
            commit = read_json(self.commit_path)
            return {"bytes": int(commit["bytes"]), "steps": [int(s) for s in commit["steps"]],
                    "identity": commit.get("identity", {})}
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _reset(self, header: bytes) -> None:
        with open(self.path, "wb") as fh:
            fh.write(header)
            fh.flush()
            os.fsync(fh.fileno())
        self.steps = set()
        self._write_commit()

    def _truncate(self, length: int) -> None:
        if self.path.stat().st_size != length:
            with open(self.path, "r+b") as fh:
                fh.truncate(length)
                os.fsync(fh.fileno())

    def _repair_without_commit(self, header: bytes) -> None:
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # drop a partial trailing line
        rows = list(csv.DictReader(io.StringIO(decode_text(data[:end], self.path), newline="")))
        steps = [int(r["step"]) for r in rows]
        if steps:  # the last step's block may have been cut between rows
            last = steps[-1]
            keep = len(header) + sum(len(line) for line in data[len(header):end].splitlines(keepends=True)
                                     [:next(i for i, s in enumerate(steps) if s == last)])
            end = keep
            steps = [s for s in steps if s != last]
        self._truncate(end)
        self.steps = set(steps)
        self._write_commit()

    def _write_commit(self) -> None:
        write_json(self.commit_path, {"bytes": self.path.stat().st_size, "steps": sorted(self.steps),
                                      "identity": self.identity})

    def append(self, step: int, rows: list[tuple]) -> None:
        """Append one checkpoint's rows (tuples in COLUMNS order) and commit them."""
        if step in self.steps:
            raise ValueError(f"{self.path}: step {step} is already committed")
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        for row in rows:
            writer.writerow([_fmt(v) for v in row])
        with open(self.path, "ab") as fh:
            fh.write(buf.getvalue().encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        self.steps.add(step)
        self._write_commit()

    def rows(self) -> list[dict]:
        """All committed rows as dicts of strings."""
        return list(csv.DictReader(io.StringIO(read_text(self.path), newline="")))
