"""Export a checkpoint to Hugging Face `LlamaForCausalLM`: `metapretrain export --checkpoint CKPT --out DIR`.

The folder `AutoModelForCausalLM.from_pretrained` loads: config.json,
model.safetensors, generation_config.json and the tokenizer files (the
conversion itself is metapretrain.model.hf).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from metapretrain.checkpoint.format import CheckpointError, run_tokenizer
from metapretrain.checkpoint.reader import load_model
from metapretrain.io import follow_umask, make_temp_dir


def _special_ids(tokenizer_json: Path | None) -> dict[str, int]:
    if tokenizer_json is None:
        return {}
    from metapretrain.data.tokenizer import read_tokenizer, special_token_ids

    return {k: v for k, v in special_token_ids(read_tokenizer(tokenizer_json)).items() if v is not None}


def default_tokenizer(checkpoint: Path) -> Path | None:
    """`RUN/pretrain/tokenizer.json` for a checkpoint at `RUN/pretrain/checkpoints/step_*`, if it exists."""
    candidate = run_tokenizer(checkpoint)
    return candidate if candidate.is_file() else None


def export_checkpoint(checkpoint: str | Path, out: str | Path, tokenizer_json: str | Path | None = None) -> Path:
    """Export one checkpoint directory to a Hugging Face folder `out` (replaced atomically); returns `out`."""
    checkpoint, out = Path(checkpoint), Path(out)
    tokenizer_json = Path(tokenizer_json) if tokenizer_json else default_tokenizer(checkpoint)
    if tokenizer_json is not None and not tokenizer_json.is_file():
        raise FileNotFoundError(f"{tokenizer_json}: tokenizer not found")
    from transformers.utils import logging as hf_logging

    from metapretrain.model.hf import save_tokenizer, to_llama

    hf_logging.disable_progress_bar()  # one bar per shard written is noise in a training log
    model = load_model(checkpoint)
    special = _special_ids(tokenizer_json)
    hf = to_llama(model, special)
    tmp = make_temp_dir(out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        hf.save_pretrained(str(tmp), safe_serialization=True)
        if tokenizer_json is not None:
            save_tokenizer(tokenizer_json, tmp, special)
        follow_umask(tmp, tree=True)  # safetensors writes 0600 files
        if out.exists():
            trash = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.replace(out, trash)
            shutil.rmtree(trash, ignore_errors=True)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain export", description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True, type=Path,
                        help="a checkpoint directory (RUN/pretrain/checkpoints/step_*)")
    parser.add_argument("--out", required=True, type=Path, help="output folder (replaced)")
    parser.add_argument("--tokenizer", type=Path, default=None,
                        help="tokenizer.json (default: the run's pretrain/tokenizer.json)")
    args = parser.parse_args(argv)
    try:
        out = export_checkpoint(args.checkpoint, args.out, args.tokenizer)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"metapretrain export: {exc}", file=sys.stderr)
        return 1
    print(f"exported {args.checkpoint} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
