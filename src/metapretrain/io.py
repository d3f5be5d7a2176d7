"""File helpers: reading inputs with file:line errors, atomic writes with the umask's modes, checksums,
JSON, and `done.json` markers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from metapretrain.paths import done_file


class InputError(ValueError):
    """A file a command reads cannot be read, decoded or parsed. `str()` reads `file:line[:col]: problem`."""

    def __init__(self, file: str | Path, problem: str, line: int | None = None, col: int | None = None):
        self.file, self.problem, self.line, self.col = str(file), problem, line, col
        where = self.file + "".join(f":{n}" for n in (line, col) if n is not None)
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # a job's exception travels pickled to the submitting process
        return type(self), (self.file, self.problem, self.line, self.col)


def decode_text(raw: bytes, file: str | Path, first_line: int = 1) -> str:
    """`raw` as UTF-8; InputError naming the line (counted from `first_line`) of the first bad byte."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = first_line + raw.count(b"\n", 0, exc.start)
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise InputError(file, f"invalid UTF-8 ({exc.reason}, byte 0x{raw[exc.start]:02x} at column {col}); "
                               "expected UTF-8 text", line) from None


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes. FileNotFoundError passes through (callers say what the missing file means);
    any other OSError (a directory, no permission) is an InputError."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise InputError(path, f"cannot read ({exc.strerror or exc})") from None


def read_text(path: str | Path) -> str:
    """The file's UTF-8 text (newlines as written); InputError with `file:line` for bad UTF-8."""
    return decode_text(read_bytes(path), path)


def parse_json(text: str, file: str | Path, line: int | None = None) -> Any:
    """json.loads with an InputError `file:line:col` (`line` given: that line, for one JSON line)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(file, f"not valid JSON ({exc.msg})", exc.lineno if line is None else line,
                         exc.colno) from None


def read_json(path: str | Path) -> Any:
    """A JSON file; InputError `file:line:col` for a syntax error, `file:line` for bad UTF-8."""
    return parse_json(read_text(path), path)


def read_jsonl(path: str | Path, *, on_bad: Callable[[InputError], None] | None = None) -> list[tuple[int, Any]]:
    """[(line number, value)] of a JSON-lines file; blank lines are skipped.

    A last line that does not decode or parse is a record torn by a kill mid-write: it is dropped.
    Any other bad line raises its InputError, or is passed to `on_bad` and skipped.
    """
    return parse_jsonl(read_bytes(path), path, on_bad=on_bad)


def parse_jsonl(data: bytes, file: str | Path, *,
                on_bad: Callable[[InputError], None] | None = None) -> list[tuple[int, Any]]:
    """`read_jsonl` of bytes read from `file` (for a part of a file, line numbers count from its start)."""
    lines = data.split(b"\n")
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            out.append((n, parse_json(decode_text(raw, file, n), file, n)))
        except InputError as exc:
            if n == len(lines):
                break
            if on_bad is None:
                raise
            on_bad(exc)
    return out


def umask() -> int:
    """The process umask, read without changing it where /proc allows (os.umask sets it process-wide,
    which would race with threads creating files)."""
    with contextlib.suppress(OSError, ValueError, StopIteration), open("/proc/self/status", encoding="ascii") as fh:
        return int(next(line for line in fh if line.startswith("Umask:")).split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def follow_umask(path: str | Path, *, tree: bool = False) -> Path:
    """Give `path` (and with `tree` everything under it) the mode `mkdir`/`open` would give it under the umask.

    `tempfile.mkdtemp`/`mkstemp` make 0700/0600 names, and some writers (safetensors) write 0600 files
    whatever the umask; an output renamed into place keeps that mode, so a teammate sharing results/
    could not read a checkpoint or an export.
    """
    path, mask = Path(path), umask()
    for p in [path, *(path.rglob("*") if tree and path.is_dir() else ())]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
    return path


def make_temp_dir(parent: str | Path, prefix: str, suffix: str = "") -> Path:
    """A new temporary directory in `parent` (created if missing) that becomes an output: mode as `mkdir`'s."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    return follow_umask(tempfile.mkdtemp(prefix=prefix, suffix=suffix, dir=parent))


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        follow_umask(tmp)  # after the writer: one that replaces the file (safetensors) would undo it before
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def code_version() -> str:
    """Package version plus the git commit of the source tree when available."""
    from metapretrain import __version__

    try:
        import subprocess

        root = Path(__file__).resolve().parents[2]
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            return f"{__version__}+g{commit}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        pass
    return __version__


def write_done(directory: str | Path, stage: str, run_id: str | None, outputs: list[str | Path],
               extra: dict | None = None) -> Path:
    """Write `done.json` last: the stage is complete only once this file exists."""
    directory = Path(directory)
    sums = {}
    for out in outputs:
        p = Path(out)
        p = p if p.is_absolute() else directory / p
        sums[os.path.relpath(p, directory)] = sha256_file(p)
    record = {"stage": stage, "run_id": run_id, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
              "code_version": code_version(), "outputs": sums}
    torch = sys.modules.get("torch")
    if torch is not None:  # what the stage computed with (launch.threads or cpus_per_task, set by launch/stage_job.py)
        record["threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    record |= extra or {}
    path = done_file(directory)
    write_json(path, record)
    return path


def done_problem(directory: str | Path, stage: str | None = None) -> str | None:
    """Why `directory/done.json` does not vouch for its stage's outputs, or None when it does.

    It must exist, parse, name `stage` (when given), and every output it lists must still
    exist with the sha256 recorded when the stage finished.
    """
    directory = Path(directory)
    done = done_file(directory)
    if not done.is_file():
        return f"{done}: missing"
    try:
        record = read_json(done)
        outputs = record.get("outputs", {})
        items = sorted(outputs.items())
    except InputError as exc:
        return str(exc)
    except (OSError, ValueError, AttributeError) as exc:
        return f"{done}: unreadable ({type(exc).__name__}: {exc})"
    if stage is not None and record.get("stage") != stage:
        return f"{done}: written by stage {record.get('stage')!r}, expected {stage!r}"
    for rel, digest in items:
        f = directory / rel
        if not f.is_file():
            return f"{f}: listed in {done} but missing"
        if sha256_file(f) != digest:
            return f"{f}: changed since {done} was written (sha256 differs)"
    return None


def done_is_valid(directory: str | Path, stage: str | None = None) -> bool:
    """done.json exists, names `stage` (when given), and every output it lists still has its checksum."""
    return done_problem(directory, stage) is None
