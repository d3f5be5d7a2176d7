"""Writing checkpoints: atomic directories with checksums, and retention.

A checkpoint directory is first written under a temporary name and renamed
into place, so a kill during a write never leaves a directory that looks
complete (the next save removes such leftovers); the manifest's checksums catch
later damage (truncation, bit flips). A failed write (disk full, I/O error)
raises CheckpointError naming the directory and leaves older checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from pathlib import Path

from metapretrain import paths
from metapretrain.checkpoint.format import (
    CONFIG_FILE,
    DCP_DIR,
    MANIFEST,
    MODEL_FILE,
    MODULES_FILE,
    STATE_FILE,
    CheckpointError,
    manifest_digest,
)
from metapretrain.checkpoint.reader import CheckpointInfo, list_checkpoints
from metapretrain.io import follow_umask, make_temp_dir, sha256_file, write_json

_FULL_BYTES = 1 << 20  # less free space than this after a failed write: report the disk as full
_DEBRIS = re.compile(r"^\.step_\d{8}\.(.+\.tmp|old\.\d+)$")


def begin_checkpoint(run_dir: str | Path, step: int) -> Path:
    """Create the temporary directory checkpoint `step` is written into (then renamed by `save_checkpoint`).

    Under FSDP rank 0 calls this and shares the path, every rank writes its shards under `DCP_DIR`
    there, and rank 0 finishes the checkpoint with `save_checkpoint(..., tmp=path)`.
    """
    root = paths.checkpoints_dir(run_dir)
    final = root / paths.checkpoint_name(step)
    try:
        root.mkdir(parents=True, exist_ok=True)
        remove_debris(run_dir)
        return make_temp_dir(root, prefix=f".{final.name}.", suffix=".tmp")
    except OSError as exc:
        raise CheckpointError(f"{final}: cannot write the checkpoint ({_describe(exc, root)})") from exc


def save_checkpoint(run_dir: str | Path, step: int, *, model, state: dict, config: dict, tokens: int,
                    flops: float, modules: dict | None = None, tmp: Path | None = None,
                    tokens_ntp: int | None = None) -> CheckpointInfo:
    """Write checkpoint `step` atomically and return its info.

    `model` is an nn.Module (its state_dict is saved; compile/DDP wrappers are
    unwrapped by the caller), `state` is anything `torch.save` can store with
    `weights_only=True` loading, `config` the resolved run config as a dict,
    `modules` named extra modules (step-kind heads), `tokens_ntp` the next-token tokens among `tokens`
    (what compute matching compares; a meta run's `tokens` also count episode windows). `tmp`: a directory from `begin_checkpoint` that
    already holds files (the sharded `DCP_DIR`); they are listed in the manifest too.
    """
    import torch
    import yaml
    from safetensors.torch import save_file

    root = paths.checkpoints_dir(run_dir)
    final = root / paths.checkpoint_name(step)
    if tmp is None:
        tmp = begin_checkpoint(run_dir, step)
    try:
        save_file(_contiguous(model.state_dict()), str(tmp / MODEL_FILE))
        if modules:
            flat = {f"{name}.{k}": v for name, mod in modules.items() for k, v in mod.state_dict().items()}
            save_file(_contiguous(flat), str(tmp / MODULES_FILE))
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
        # Relative POSIX names: top-level files as before, shards as `dcp/<file>`.
        written = sorted(p for p in tmp.rglob("*") if p.is_file())
        files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in written}
        for p in written:
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        body = {"step": step, "tokens": int(tokens), "flops": float(flops), "files": files}
        if tokens_ntp is not None:
            body["tokens_ntp"] = int(tokens_ntp)
        tokenizer = paths.tokenizer_file(paths.pretrain_dir(run_dir))
        if tokenizer.is_file():  # lets every later reader refuse the checkpoint with another tokenizer
            body["tokenizer_sha256"] = sha256_file(tokenizer)
        write_json(tmp / MANIFEST, body | {"sha256": manifest_digest(body)})
        if final.exists():  # a checkpoint of the same step from a run that was killed after writing it
            _discard(final)
        if (tmp / DCP_DIR).is_dir():
            _fsync_dir(tmp / DCP_DIR)
        follow_umask(tmp, tree=True)  # safetensors writes 0600 files
        os.replace(tmp, final)
        _fsync_dir(root)
    except Exception as exc:  # disk full, I/O error, quota: say where, keep the older checkpoints as they are
        reason = _describe(exc, root)
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{final}: cannot write the checkpoint ({reason}); the previous checkpoints "
                              f"are intact and a rerun resumes from the newest of them") from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(step, int(tokens), float(flops), final, tokens_ntp=None if tokens_ntp is None else int(tokens_ntp))


def _describe(exc: BaseException, where: Path) -> str:
    # torch.save reports a full disk as "unexpected pos ..." and safetensors in its own words, so the
    # free space is measured (before the partial files are removed) to name the cause plainly.
    text = f"{type(exc).__name__}: {exc}"
    free = None
    with contextlib.suppress(OSError):
        free = shutil.disk_usage(where).free
    if (getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in text
            or "StorageFull" in text or (free is not None and free < _FULL_BYTES)):
        return f"disk full, {free if free is not None else '?'} bytes free: {text}"
    return text


def remove_debris(run_dir: str | Path) -> list[Path]:
    """Delete what killed attempts left under checkpoints/: temporary (`.step_*.tmp`) and discarded
    (`.step_*.old.*`) directories, never taken for checkpoints. Only the run's single writer calls this."""
    root = paths.checkpoints_dir(run_dir)
    gone = []
    for p in root.iterdir() if root.is_dir() else []:
        if _DEBRIS.match(p.name):
            shutil.rmtree(p, ignore_errors=True)
            gone.append(p)
    return gone


def prune(run_dir: str | Path, keep_steps: set[int], keep_last: int = 2) -> None:
    """Delete checkpoints not in `keep_steps`, except the newest `keep_last` complete ones."""
    infos = list_checkpoints(run_dir)
    protected = {c.step for c in infos[-keep_last:]} | set(keep_steps)
    for c in infos:
        if c.step not in protected:
            _discard(c.path)


def _contiguous(sd: dict) -> dict:
    return {k: v.detach().contiguous().cpu() for k, v in sd.items()}


def _discard(path: Path) -> None:
    trash = path.with_name(f".{path.name}.old.{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
