"""Checkpoints: atomic directories with checksums, verified on load.

Layout of `pretrain/checkpoints/step_%08d/` (docs/architecture.md):

* `model.safetensors`   the Decoder's weights
* `modules.safetensors` weights of modules owned by step kinds (e.g. the episode head),
                        keys `<module name>.<param name>`; absent when there are none
* `state.pt`            optimizer, scheduler, step-kind states, data position, RNG states,
                        counters; plain tensors and containers, loaded with `weights_only=True`
* `config.resolved.yaml` the run config the checkpoint was trained with
* `dcp/`                FSDP runs on several processes only: model and optimizer states as
                        `torch.distributed.checkpoint` shards (one file per rank + `.metadata`),
                        which a run at any world size under FSDP resumes from
* `manifest.json`       `{step, tokens, flops, files: {name: sha256}}`, written last; names are
                        relative paths (`dcp/__0_0.distcp`)

A checkpoint directory is first written under a temporary name and renamed
into place, so a kill during a write never leaves a directory that looks
complete (the next save removes such leftovers); the manifest's checksums catch
later damage (truncation, bit flips). A failed write (disk full, I/O error)
raises CheckpointError naming the directory and leaves older checkpoints as they were.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from metapretrain import paths
from metapretrain.io import InputError, follow_umask, make_temp_dir, read_json, sha256_file, write_json

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
MODULES_FILE = "modules.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.resolved.yaml"
DCP_DIR = "dcp"  # FSDP runs: torch.distributed.checkpoint shards of model + optimizer, loadable at any world size
TOKENIZER_FILE = "tokenizer.json"  # RUN/pretrain/tokenizer.json, next to checkpoints/
_NAME = re.compile(r"^step_(\d{8})$")
_FULL_BYTES = 1 << 20  # less free space than this after a failed write: report the disk as full
_DEBRIS = re.compile(r"^\.step_\d{8}\.(.+\.tmp|old\.\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged."""


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    tokens: int
    flops: float
    path: Path


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
                    flops: float, modules: dict | None = None, tmp: Path | None = None) -> CheckpointInfo:
    """Write checkpoint `step` atomically and return its info.

    `model` is an nn.Module (its state_dict is saved; compile/DDP wrappers are
    unwrapped by the caller), `state` is anything `torch.save` can store with
    `weights_only=True` loading, `config` the resolved run config as a dict,
    `modules` named extra modules (step-kind heads). `tmp`: a directory from `begin_checkpoint` that
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
        tokenizer = paths.pretrain_dir(run_dir) / TOKENIZER_FILE
        if tokenizer.is_file():  # lets every later reader refuse the checkpoint with another tokenizer
            body["tokenizer_sha256"] = sha256_file(tokenizer)
        write_json(tmp / MANIFEST, body | {"sha256": _manifest_digest(body)})
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
    return CheckpointInfo(step, int(tokens), float(flops), final)


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
    except InputError as exc:
        raise CheckpointError(f"{exc} (the checkpoint's manifest is unreadable)") from None
    if not isinstance(manifest, dict):
        raise CheckpointError(f"{path / MANIFEST}: not a JSON object")
    for key in ("step", "tokens", "flops", "files"):
        if key not in manifest:
            raise CheckpointError(f"{path / MANIFEST}: missing key {key!r}")
    # The manifest checks itself too, so a flipped digit in step/tokens/flops cannot pass unnoticed.
    body = {k: v for k, v in manifest.items() if k != "sha256"}
    if "sha256" in manifest and manifest["sha256"] != _manifest_digest(body):
        raise CheckpointError(f"{path / MANIFEST}: checksum mismatch (manifest corrupted)")
    named = _NAME.match(path.name)
    if named and int(named.group(1)) != manifest["step"]:
        raise CheckpointError(f"{path / MANIFEST}: step {manifest['step']!r} does not match the directory name")
    return manifest


def _manifest_digest(body: dict) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


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
    check_tokenizer(path, weights)
    model_cfg = model_config_from_weights(cfg, weights)
    check_shapes(path / MODEL_FILE, model_cfg, weights)
    model = Decoder(model_cfg)
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path / MODEL_FILE}: weights do not match the model config "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    return model.to(device), cfg


def check_tokenizer(path: str | Path, weights: dict | None = None, tokenizer: str | Path | None = None) -> None:
    """Refuse a checkpoint whose run tokenizer (default RUN/pretrain/tokenizer.json) is not the one it was
    trained with: another sha256 than the manifest records, or ids beyond the embedding's rows."""
    path = Path(path)
    tokenizer = Path(tokenizer) if tokenizer else path.resolve().parents[1] / TOKENIZER_FILE
    if not tokenizer.is_file():
        return
    recorded = read_manifest(path).get("tokenizer_sha256")
    if recorded is not None and sha256_file(tokenizer) != recorded:
        raise CheckpointError(f"{tokenizer}: not the tokenizer checkpoint {path} was trained with "
                              f"(its sha256 differs from the one in {path / MANIFEST})")
    if weights is not None and "embed.weight" in weights:
        rows, ids = int(weights["embed.weight"].shape[0]), _tokenizer_size(tokenizer)
        if ids > rows:
            raise CheckpointError(f"{tokenizer}: {ids} token ids, but the embedding in {path / MODEL_FILE} has "
                                  f"{rows} rows; not the tokenizer this checkpoint was trained with")


def _tokenizer_size(tokenizer: Path) -> int:
    """1 + the largest token id of a Hugging Face tokenizer.json (vocabulary and added tokens)."""
    try:
        spec = read_json(tokenizer)
        vocab = spec["model"]["vocab"]
        ids = list(vocab.values()) if isinstance(vocab, dict) else list(range(len(vocab)))
        ids += [t["id"] for t in spec.get("added_tokens") or []]
    except InputError as exc:
        raise CheckpointError(str(exc)) from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{tokenizer}: not a readable tokenizer.json ({type(exc).__name__}: {exc})") from None
    return max(ids) + 1 if ids else 0


def check_shapes(weights_file: Path, model_cfg, weights: dict) -> None:
    """Raise CheckpointError naming the file and the tensors whose shapes differ from a Decoder of `model_cfg`.

    The expected shapes come from a model built on the meta device: no memory, no collective under FSDP.
    """
    import torch

    from metapretrain.model.decoder import Decoder

    with torch.device("meta"):
        expected = Decoder(model_cfg).state_dict()
    wrong = [f"{k}: {tuple(v.shape)} in the file, {tuple(expected[k].shape)} in the model"
             for k, v in weights.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise CheckpointError(f"{weights_file}: weights do not fit the model config ({'; '.join(wrong[:3])}"
                              f"{'; ...' if len(wrong) > 3 else ''}); was model.* or the tokenizer changed "
                              f"after this checkpoint was written?")


def final_checkpoint(run_dir: str | Path) -> CheckpointInfo:
    """The last complete checkpoint of a finished run (what finetune and export read).

    Once pretrain/done.json names the final step, exactly that checkpoint is returned: a damaged one
    raises instead of an older checkpoint being fine-tuned in its place.
    """
    try:
        final_step = read_json(paths.pretrain_dir(run_dir) / "done.json").get("final_step")
    except (OSError, ValueError, AttributeError):
        final_step = None
    if isinstance(final_step, int):
        path = paths.checkpoints_dir(run_dir) / paths.checkpoint_name(final_step)
        try:
            manifest = verify_checkpoint(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; this is the final checkpoint of a finished run: delete "
                                  f"{paths.pretrain_dir(run_dir) / 'done.json'} and rerun the pretrain stage to "
                                  f"recompute it from the previous checkpoint") from None
        return CheckpointInfo(final_step, int(manifest["tokens"]), float(manifest["flops"]), path)
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
