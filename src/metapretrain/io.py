"""File helpers: atomic writes, checksums, JSON, and `done.json` markers."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = ""):
    """Yield a temporary path next to `path`; on success it is fsynced and renamed onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs should follow the umask
    try:
        yield Path(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


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
    if torch is not None:  # what the stage computed with (launch.threads or cpus_per_task, set by launch/job.py)
        record["threads"] = {"intra_op": torch.get_num_threads(), "inter_op": torch.get_num_interop_threads()}
    record |= extra or {}
    path = directory / "done.json"
    write_json(path, record)
    return path


def done_problem(directory: str | Path, stage: str | None = None) -> str | None:
    """Why `directory/done.json` does not vouch for its stage's outputs, or None when it does.

    It must exist, parse, name `stage` (when given), and every output it lists must still
    exist with the sha256 recorded when the stage finished.
    """
    directory = Path(directory)
    done = directory / "done.json"
    if not done.is_file():
        return f"{done}: missing"
    try:
        record = read_json(done)
        outputs = record.get("outputs", {})
        items = sorted(outputs.items())
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
