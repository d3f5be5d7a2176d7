"""What a checkpoint directory holds and how it is checked.

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
* `manifest.json`       `{step, tokens, flops, files: {name: sha256}, tokenizer_sha256, sha256}`,
                        written last; names are relative paths (`dcp/__0_0.distcp`), `sha256`
                        is the manifest's own checksum

A checkpoint is complete iff its manifest exists and every checksum matches.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from metapretrain import paths
from metapretrain.io import InputError, read_json, sha256_file

MANIFEST = "manifest.json"
MODEL_FILE = "model.safetensors"
MODULES_FILE = "modules.safetensors"
STATE_FILE = "state.pt"
CONFIG_FILE = "config.resolved.yaml"
DCP_DIR = "dcp"  # FSDP runs: torch.distributed.checkpoint shards of model + optimizer, loadable at any world size
STEP_DIR = re.compile(r"^step_(\d{8})$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or damaged."""


def manifest_digest(body: dict) -> str:
    """The manifest's own checksum, over every key but `sha256`."""
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode("utf-8")).hexdigest()


def read_manifest(path: str | Path) -> dict:
    """The manifest of checkpoint directory `path`, self-checked; the files it lists are not hashed."""
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
    if "sha256" in manifest and manifest["sha256"] != manifest_digest(body):
        raise CheckpointError(f"{path / MANIFEST}: checksum mismatch (manifest corrupted)")
    named = STEP_DIR.match(path.name)
    if named and int(named.group(1)) != manifest["step"]:
        raise CheckpointError(f"{path / MANIFEST}: step {manifest['step']!r} does not match the directory name")
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


def run_tokenizer(checkpoint: str | Path) -> Path:
    """`RUN/pretrain/tokenizer.json` of a checkpoint at `RUN/pretrain/checkpoints/step_*` (may not exist)."""
    return paths.tokenizer_file(paths.pretrain_dir(paths.checkpoint_run(checkpoint)))


def check_tokenizer(path: str | Path, weights: dict | None = None, tokenizer: str | Path | None = None) -> None:
    """Refuse a checkpoint whose run tokenizer (default RUN/pretrain/tokenizer.json) is not the one it was
    trained with: another sha256 than the manifest records, or ids beyond the embedding's rows."""
    path = Path(path)
    tokenizer = Path(tokenizer) if tokenizer else run_tokenizer(path)
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
