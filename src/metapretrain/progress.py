"""Progress reporting that suits both a terminal and a log file.

On a terminal: a rich progress bar. When stdout is not a terminal (SLURM
logs, CI, `| tee`): one plain line every `every_s` seconds (and at the end),
never carriage returns. A job's output goes to its log file, so its
progress is plain lines there; `LogFollower` shows them, as they come, to a
person waiting on the job at a terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path


def _fmt_eta(seconds: float) -> str:
    if seconds != seconds or seconds == float("inf"):  # NaN or inf
        return "?"
    seconds = int(seconds)
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class Progress:
    """`with Progress("pretrain", total=200) as p: p.update(n, loss=...)`.

    `update(completed, **fields)` sets the absolute position; fields are shown
    next to the bar / in the plain line.
    """

    def __init__(self, description: str, total: float, *, unit: str = "it", every_s: float = 30.0,
                 stream=None, plain: bool | None = None, formatter: Callable[[dict], str] | None = None):
        self.description, self.total, self.unit = description, total, unit
        self.every_s = every_s
        self.stream = stream or sys.stdout
        self.plain = (not self.stream.isatty()) if plain is None else plain
        self.formatter = formatter or (lambda f: "  ".join(f"{k} {v}" for k, v in f.items()))
        self.completed = 0.0
        self.fields: dict = {}
        self._bar = None
        self._task = None
        self._start = time.monotonic()
        self._last_line = 0.0
        self.lines_written = 0

    def __enter__(self) -> Progress:
        self._start = self._last_line = time.monotonic()
        if not self.plain:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                     TimeRemainingColumn(), TextColumn("{task.fields[info]}"), transient=False)
            self._bar.__enter__()
            self._task = self._bar.add_task(self.description, total=self.total, info="")
        return self

    def update(self, completed: float, **fields) -> None:
        self.completed = completed
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, info=self.formatter(self.fields))
            return
        now = time.monotonic()
        if now - self._last_line >= self.every_s:
            self._line(now)

    def _line(self, now: float) -> None:
        elapsed = now - self._start
        rate = self.completed / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.completed) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.completed / self.total if self.total else 100.0
        info = self.formatter(self.fields)
        self.stream.write(f"[{self.description}] {self.completed:g}/{self.total:g} {self.unit} ({pct:.0f}%)"
                          f"  elapsed {_fmt_eta(elapsed)}  eta {_fmt_eta(eta)}{'  ' + info if info else ''}\n")
        self.stream.flush()
        self._last_line = now
        self.lines_written += 1

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
        else:
            self._line(time.monotonic())


def terminal_stream():
    """stderr, else stdout, when it is a terminal (a person watches); None otherwise (Snakemake, a log file)."""
    for stream in (sys.stderr, sys.stdout):
        try:
            if stream.isatty():
                return stream
        except (AttributeError, ValueError):  # replaced or closed streams
            continue
    return None


class LogFollower:
    """Copies the lines appended to a log file after it was created onto `stream` (`tail -f`), one
    `poll()` at a time; a line still being written waits for its newline, or for `poll(final=True)`."""

    def __init__(self, path: str | Path, stream):
        self.path, self.stream = Path(path), stream
        try:
            self.offset = self.path.stat().st_size  # earlier attempts are already in the log: not replayed
        except FileNotFoundError:
            self.offset = 0
        self._partial = b""

    def poll(self, final: bool = False) -> int:
        """Write the complete new lines (all the rest when `final`); returns how many lines were written."""
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return 0
        self.offset += len(data)
        data = self._partial + data
        cut = len(data) if final else data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if not cut:
            return 0
        text = data[:cut].decode("utf-8", errors="replace")
        self.stream.write(text if text.endswith("\n") else text + "\n")
        self.stream.flush()
        return text.count("\n") + (not text.endswith("\n"))
