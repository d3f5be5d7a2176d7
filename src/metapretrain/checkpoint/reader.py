"""Finding and loading checkpoints.

Listing reads manifests only; a lookup that picks one checkpoint to load
(`latest_checkpoint`, `final_checkpoint`, `at_step`, `nearest`, `at_or_before`) verifies its
checksums and marks it verified, so `load_model` does not hash it again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from metapretrain import paths
from metapretrain.checkpoint.format import (
    CONFIG_FILE,
    DCP_DIR,
    MODEL_FILE,
    MODULES_FILE,
    STATE_FILE,
    STEP_DIR,
    CheckpointError,
    check_shapes,
    check_tokenizer,
    read_manifest,
    verify_checkpoint,
)
from metapretrain.io import read_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CheckpointInfo:
    """One checkpoint: its counters as the manifest records them, and its directory."""

    step: int
    tokens: int
    flops: float
    path: Path
    verified: bool = field(default=False, compare=False)  # checksums already checked against the manifest
    # Next-token tokens among `tokens` (a meta run's tokens also count episode windows); None in a manifest
    # written before they were recorded.
    tokens_ntp: int | None = field(default=None, compare=False)

    def count(self, unit: str) -> float | None:
        """The checkpoint's count of a matching unit: `steps`, `tokens` (next-token tokens) or `flops`."""
        if unit not in MATCH_UNITS:
            raise ValueError(f"unknown matching unit {unit!r}: expected one of {', '.join(MATCH_UNITS)}")
        return {"steps": self.step, "tokens": self.tokens_ntp, "flops": self.flops}[unit]


MATCH_UNITS = ("steps", "tokens", "flops")


def _info(path: Path, manifest: dict, verified: bool) -> CheckpointInfo:
    ntp = manifest.get("tokens_ntp")
    return CheckpointInfo(int(manifest["step"]), int(manifest["tokens"]), float(manifest["flops"]), path, verified,
                          None if ntp is None else int(ntp))


def open_checkpoint(path: str | Path) -> CheckpointInfo:
    """The checkpoint in directory `path`, verified; CheckpointError when it is damaged."""
    path = Path(path)
    return _info(path, verify_checkpoint(path), verified=True)


def list_checkpoints(run_dir: str | Path, verify: bool = False) -> list[CheckpointInfo]:
    """Complete checkpoints of a run, sorted by step. With `verify`, damaged ones are skipped with a warning."""
    root = paths.checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.iterdir()):
        if not STEP_DIR.match(p.name) or not p.is_dir():
            continue
        try:
            manifest = verify_checkpoint(p) if verify else read_manifest(p)
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
            continue
        out.append(_info(p, manifest, verified=verify))
    return sorted(out, key=lambda c: c.step)


def latest_checkpoint(run_dir: str | Path) -> CheckpointInfo | None:
    """The newest checkpoint whose checksums verify; damaged newer ones are reported and passed over."""
    root = paths.checkpoints_dir(run_dir)
    candidates = list_checkpoints(run_dir, verify=False)
    for info in reversed(candidates):
        try:
            return open_checkpoint(info.path)
        except CheckpointError as exc:
            log.warning("checkpoint %s is damaged, falling back to an older one: %s", info.path, exc)
            print(f"WARNING: {exc}; falling back to an older checkpoint", flush=True)
    if root.is_dir() and any(STEP_DIR.match(p.name) for p in root.iterdir()) and not candidates:
        log.warning("no complete checkpoint under %s", root)
    return None


def final_checkpoint(run_dir: str | Path) -> CheckpointInfo:
    """The checkpoint a run ends with: what finetune, dynamics and the export read, verified.

    When `pretrain/done.json` names a final step, exactly that checkpoint; a damaged one raises
    instead of an older checkpoint being read in its place. Otherwise (pretrain unfinished, or its
    done.json unreadable) the newest checkpoint that verifies. No such checkpoint: CheckpointError.
    """
    done = paths.done_file(paths.pretrain_dir(run_dir))
    try:
        final_step = read_json(done).get("final_step")
    except (OSError, ValueError, AttributeError):
        final_step = None
    if isinstance(final_step, int):
        try:
            return open_checkpoint(paths.checkpoints_dir(run_dir) / paths.checkpoint_name(final_step))
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; this is the final checkpoint of a finished run: delete {done} and "
                                  f"rerun the pretrain stage to recompute it from the previous checkpoint") from None
    info = latest_checkpoint(run_dir)
    if info is None:
        raise CheckpointError(f"{paths.checkpoints_dir(run_dir)}: no complete checkpoint; run the pretrain stage first")
    return info


def at_step(run_dir: str | Path, step: int) -> CheckpointInfo:
    """The run's checkpoint of optimizer step `step`, verified; CheckpointError naming the steps there are."""
    path = paths.checkpoints_dir(run_dir) / paths.checkpoint_name(step)
    if not path.is_dir():
        steps = [c.step for c in list_checkpoints(run_dir)]
        raise CheckpointError(f"{path}: no checkpoint at step {step} (checkpoints at steps "
                              f"{', '.join(map(str, steps)) or 'none'})")
    return open_checkpoint(path)


def nearest(run_dir: str | Path, *, tokens: int | None = None, flops: float | None = None) -> CheckpointInfo:
    """The checkpoint whose recorded tokens (or FLOPs) are closest to the given count, verified.

    Exactly one of `tokens`, `flops`. A tie goes to the earlier checkpoint. Only complete checkpoints
    are candidates; a damaged nearest one raises rather than being replaced by its neighbour.
    """
    if (tokens is None) == (flops is None):
        raise ValueError("nearest: give exactly one of tokens= or flops=")
    infos = list_checkpoints(run_dir)
    if not infos:
        raise CheckpointError(f"{paths.checkpoints_dir(run_dir)}: no complete checkpoint; run the pretrain stage first")
    if tokens is not None:
        best = min(infos, key=lambda c: (abs(c.tokens - tokens), c.step))
    else:
        best = min(infos, key=lambda c: (abs(c.flops - flops), c.step))
    return open_checkpoint(best.path)


def at_or_before(run_dir: str | Path, unit: str, value: float) -> CheckpointInfo:
    """The run's last checkpoint whose count of `unit` (`steps`, `tokens` = next-token tokens, `flops`) is at
    most `value`, verified: a compute-matched reading never reads a checkpoint beyond the budget it matches.

    CheckpointError when no checkpoint qualifies (names the smallest count there is) or when a checkpoint
    does not record the unit (tokens in a manifest written before next-token tokens were counted).
    """
    infos = list_checkpoints(run_dir)
    if not infos:
        raise CheckpointError(f"{paths.checkpoints_dir(run_dir)}: no complete checkpoint; run the pretrain stage first")
    missing = [c for c in infos if c.count(unit) is None]
    if missing:
        raise CheckpointError(f"{missing[0].path}: its manifest does not record {unit} (written before checkpoints "
                              "recorded next-token tokens as tokens_ntp); match on steps or flops")
    fit = [c for c in infos if c.count(unit) <= value]
    if not fit:
        first = infos[0]
        raise CheckpointError(f"{paths.checkpoints_dir(run_dir)}: no checkpoint at or before {unit} = {value:.6g} "
                              f"(the first, step {first.step}, has {unit} = {first.count(unit):.6g})")
    return open_checkpoint(max(fit, key=lambda c: (c.count(unit), c.step)).path)


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


def load_shapes(path: str | Path, name: str = MODEL_FILE) -> dict:
    """The tensors of a safetensors file as meta tensors (shapes and dtypes only, nothing read but the header):
    what `check_shapes` and `check_tokenizer` need when the weights themselves come from `DCP_DIR`."""
    import torch
    from safetensors import safe_open

    f = Path(path) / name
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    try:
        with safe_open(str(f), framework="pt") as fh:
            names = list(fh.keys())  # safe_open is not iterable
            return {k: torch.empty(fh.get_slice(k).get_shape(), device="meta") for k in names}
    except Exception as exc:
        raise CheckpointError(f"{f}: cannot be loaded ({type(exc).__name__}: {exc})") from None


def has_sharded(path: str | Path) -> bool:
    """Whether a checkpoint holds `torch.distributed.checkpoint` shards (written by an FSDP run)."""
    return (Path(path) / DCP_DIR / ".metadata").is_file()


def load_modules(path: str | Path) -> dict[str, dict]:
    """Step-kind module weights: {module name: state_dict}; {} when the checkpoint has none."""
    if not (Path(path) / MODULES_FILE).is_file():
        return {}
    out: dict[str, dict] = {}
    for key, value in load_tensors(path, MODULES_FILE).items():
        name, _, param = key.partition(".")
        out.setdefault(name, {})[param] = value
    return out


def _run_config(path: Path):
    from metapretrain.config import load_run_config

    f = path / CONFIG_FILE
    if not f.is_file():
        raise CheckpointError(f"{f}: missing")
    return load_run_config(f)


def load_model(checkpoint: CheckpointInfo | str | Path, device: str = "cpu"):
    """The Decoder with a checkpoint's weights, on `device`.

    A CheckpointInfo from a lookup is already verified; a directory, or an entry of `list_checkpoints`,
    is verified here. The model config is the run config's, with the vocabulary read off the embedding.
    """
    from metapretrain.model.decoder import Decoder

    info = checkpoint if isinstance(checkpoint, CheckpointInfo) else None
    path = Path(checkpoint.path if info else checkpoint)
    if info is None or not info.verified:
        verify_checkpoint(path)
    cfg = _run_config(path)
    weights = load_tensors(path)
    check_tokenizer(path, weights)
    model_cfg = cfg.model.resolved(tokenizer_vocab=int(weights["embed.weight"].shape[0]))
    check_shapes(path / MODEL_FILE, model_cfg, weights)
    model = Decoder(model_cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path / MODEL_FILE}: weights do not match the model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device)
