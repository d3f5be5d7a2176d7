"""Checkpoints: the format (`format`), the atomic writer with retention (`writer`), and the reader with
its lookups (`reader`: latest, final, at a step, nearest to a token or FLOP count, the last at or before a
step, next-token token or FLOP count). The HF export is
`export`. Imports nothing of the stages: finetune, dynamics and the export read checkpoints here."""

from metapretrain.checkpoint.format import (
    CONFIG_FILE,
    DCP_DIR,
    MANIFEST,
    MODEL_FILE,
    MODULES_FILE,
    STATE_FILE,
    CheckpointError,
    check_shapes,
    check_tokenizer,
    manifest_digest,
    read_manifest,
    run_tokenizer,
    verify_checkpoint,
)
from metapretrain.checkpoint.reader import (
    MATCH_UNITS,
    CheckpointInfo,
    at_or_before,
    at_step,
    final_checkpoint,
    has_sharded,
    latest_checkpoint,
    list_checkpoints,
    load_model,
    load_modules,
    load_shapes,
    load_state,
    load_tensors,
    nearest,
    open_checkpoint,
)
from metapretrain.checkpoint.writer import begin_checkpoint, prune, remove_debris, save_checkpoint

__all__ = [
    "CONFIG_FILE", "DCP_DIR", "MANIFEST", "MODEL_FILE", "MODULES_FILE", "STATE_FILE", "CheckpointError",
    "CheckpointInfo", "MATCH_UNITS", "at_or_before", "at_step", "begin_checkpoint", "check_shapes", "check_tokenizer", "final_checkpoint",
    "has_sharded", "latest_checkpoint", "list_checkpoints", "load_model", "load_modules", "load_shapes",
    "load_state", "load_tensors", "manifest_digest", "nearest", "open_checkpoint", "prune", "read_manifest",
    "remove_debris", "run_tokenizer", "save_checkpoint", "verify_checkpoint",
]
