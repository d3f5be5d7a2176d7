"""Checkpoints: atomic directories with checksums, verified on load.

Layout of `pretrain/checkpoints/step_%08d/` (docs/architecture.md):

* `model.safetensors`   the Decoder's weights
* `modules.safetensors` weights of modules owned by step kinds (e.g. the episode head),
                        keys `<module name>.<param name>`; absent when there are none
* `state.pt`            optimizer, scheduler, step-kind states, data position, RNG states,
                        counters; plain tensors and containers, loaded with `weights_only=True`
* `config.resolved.yaml` the run config the checkpoint was trained with
* `manifest.json`       `{step, tokens, flops, files: {name: sha256}}`, written last

A checkpoint directory is first written under a temporary name and renamed
into place, so a kill during a write never leaves a directory that looks
complete; the manifest's checksums catch later damage (truncation, bit flips).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from metapretrain import paths
from metapretrain.io import read_json, sha256_file, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
MODULES_FILE = "modules.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.resolved.yaml"
_NAME = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    tokens: int
    flops: float
    path: Path


def save_checkpoint(run_dir: str | Path, step: int, *, model, state: dict, config: dict, tokens: int,
                    flops: float, modules: dict | None = None) -> CheckpointInfo:
    """Write checkpoint `step` atomically and return its info.

    `model` is an nn.Module (its state_dict is saved; compile/DDP wrappers are
    unwrapped by the caller), `state` is anything `torch.save` can store with
    `weights_only=True` loading, `config` the resolved run config as a dict,
    `modules` named extra modules (step-kind heads).
    """
    import torch
    import yaml
    from safetensors.torch import save_file

    root = paths.checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / paths.checkpoint_name(step)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=root))
    try:
        save_file(_contiguous(model.state_dict()), str(tmp / MODEL_FILE))
        if modules:
            flat = {f"{name}.{k}": v for name, mod in modules.items() for k, v in mod.state_dict().items()}
            save_file(_contiguous(flat), str(tmp / MODULES_FILE))
        torch.save(state, tmp / STATE_FILE)
        (tmp / CONFIG_FILE).write_text(yaml.safe_dump(config, sort_keys=True), encoding="utf-8")
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir())}
        for p in tmp.iterdir():
            with open(p, "rb") as fh:
                os.fsync(fh.fileno())
        write_json(tmp / MANIFEST, {"step": step, "tokens": int(tokens), "flops": float(flops), "files": files})
        if final.exists():  # a checkpoint of the same step from a run that was killed after writing it
            _discard(final)
        os.replace(tmp, final)
        _fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CheckpointInfo(step, int(tokens), float(flops), final)


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


def read_manifest(path: str | Path) -> dict:
    path = Path(path)
    try:
        manifest = read_json(path / MANIFEST)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: incomplete checkpoint (no {MANIFEST})") from None
    except ValueError as exc:
        raise CheckpointError(f"{path / MANIFEST}: unreadable manifest ({exc})") from None
    for key in ("step", "tokens", "flops", "files"):
        if key not in manifest:
            raise CheckpointError(f"{path / MANIFEST}: missing key {key!r}")
    return manifest


def verify_checkpoint(path: str | Path) -> dict:
    """Check every file against the manifest's sha256; return the manifest or raise CheckpointError."""
    path = Path(path)
    manifest = read_manifest(path)
    for name, digest in manifest["files"].items():
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing file listed in the manifest")
        if sha256_file(f) != digest:
            raise CheckpointError(f"{f}: checksum mismatch (file truncated or corrupted)")
    return manifest


def list_checkpoints(run_dir: str | Path, verify: bool = False) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, sorted by step. With `verify`, damaged ones are skipped with a warning."""
    root = paths.checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not _NAME.match(p.name) or not p.is_dir():
            continue
        try:
            manifest = verify_checkpoint(p) if verify else read_manifest(p)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
            continue
        out.append(CheckpointInfo(int(manifest["step"]), int(manifest["tokens"]), float(manifest["flops"]), p))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | Path) -> CheckpointInfo | None:
    """The newest checkpoint whose checksums verify; damaged newer ones are reported and passed over."""
    root = paths.checkpoints_dir(run_dir)
    candidates = list_checkpoints(run_dir, verify=False)
    for info in reversed(candidates):
        try:
            verify_checkpoint(info.path)
            return info
        except CheckpointError as exc:
            log.warning("checkpoint %s is damaged, falling back to an older one: %s", info.path, exc)
            print(f"WARNING: {exc}; falling back to an older checkpoint", flush=True)
    if root.is_dir() and any(_NAME.match(p.name) for p in root.iterdir()) and not candidates:
        log.warning("no complete checkpoint under %s", root)
    return None


def load_state(path: str | Path) -> dict:
    import torch

    f = Path(path) / STATE_FILE
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{f}: missing") from None
    except Exception as exc:  # pickle/zip errors on a damaged file
        raise CheckpointError(f"{f}: cannot be loaded ({type(exc).__name__}: {exc})") from None


def load_tensors(path: str | Path, name: str = MODEL_FILE) -> dict:
    from safetensors.torch import load_file

    f = Path(path) / name
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    try:
        return load_file(str(f))
    except Exception as exc:
        raise CheckpointError(f"{f}: cannot be loaded ({type(exc).__name__}: {exc})") from None


def load_modules(path: str | Path) -> dict[str, dict]:
    """Step-kind module weights: {module name: state_dict}; {} when the checkpoint has none."""
    if not (Path(path) / MODULES_FILE).is_file():
        return {}
    out: dict[str, dict] = {}
    for key, value in load_tensors(path, MODULES_FILE).items():
        name, _, param = key.partition(".")
        out.setdefault(name, {})[param] = value
    return out


def load_config(path: str | Path):
    from metapretrain.config import load_run_config

    f = Path(path) / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    return load_run_config(f)


def model_config_from_weights(cfg, weights: dict):
    """The ModelConfig of a checkpoint: the run config's, with the vocabulary read off the embedding."""
    return cfg.model.resolved(tokenizer_vocab=int(weights["embed.weight"].shape[0]))


def load_model(path: str | Path, device: str = "cpu", verify: bool = True):
    """(Decoder with the checkpoint's weights, RunConfig). Verifies checksums unless told not to."""
    from metapretrain.model.decoder import Decoder

    path = Path(path)
    if verify:
        verify_checkpoint(path)
    cfg = load_config(path)
    weights = load_tensors(path)
    model = Decoder(model_config_from_weights(cfg, weights))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path / MODEL_FILE}: weights do not match the model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device), cfg


def final_checkpoint(run_dir: str | Path) -> CheckpointInfo:
    """The last complete checkpoint of a finished run (what finetune and export read)."""
    info = latest_checkpoint(run_dir)
    if info is None:
        raise CheckpointError(f"{paths.checkpoints_dir(run_dir)}: no complete checkpoint; run the pretrain stage first")
    return info


def prune(run_dir: str | Path, keep_steps: set[int], keep_last: int = 2) -> None:
    """Delete checkpoints not in `keep_steps`, except the newest `keep_last` complete ones."""
    infos = list_checkpoints(run_dir)
    protected = {c.step for c in infos[-keep_last:]} | set(keep_steps)
    for c in infos:
        if c.step not in protected:
            _discard(c.path)
