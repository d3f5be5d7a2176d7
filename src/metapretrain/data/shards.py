"""Token shards: flat numpy memmaps (`train.bin`, `val.bin`, `domain.<name>.bin`) described by `manifest.json`.

Documents are encoded with the batch encoder and concatenated, each followed
by `<|endoftext|>`. The dtype is uint16 when the vocabulary fits, else uint32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from metapretrain.io import InputError, read_json

MANIFEST = "manifest.json"


def domain_file(name: str) -> str:
    """An evaluation domain's shard, in the tokenize output (`corpus.domains`; names have no `/`)."""
    return f"domain.{name}.bin"


def shard_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.uint32)


class ShardWriter:
    """Appends encoded documents to an open binary file in chunks."""

    def __init__(self, fh, tokenizer, eos_id: int, dtype: np.dtype, chunk_docs: int = 4096):
        self.fh, self.tok, self.eos, self.dtype = fh, tokenizer, eos_id, dtype
        self.chunk_docs = chunk_docs
        self.pending: list[str] = []
        self.tokens = 0
        self.documents = 0

    def add(self, doc: str) -> None:
        self.pending.append(doc)
        if len(self.pending) >= self.chunk_docs:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        encodings = self.tok.encode_batch(self.pending, add_special_tokens=False)
        lengths = [len(e.ids) + 1 for e in encodings]
        out = np.empty(sum(lengths), dtype=self.dtype)
        pos = 0
        for e, n in zip(encodings, lengths, strict=True):
            out[pos:pos + n - 1] = e.ids
            out[pos + n - 1] = self.eos
            pos += n
        self.fh.write(out.tobytes())
        self.tokens += len(out)
        self.documents += len(self.pending)
        self.pending = []


def read_manifest(tok_dir: str | Path) -> dict:
    """A tokenize output's manifest; InputError naming file:line when it does not decode or parse."""
    path = Path(tok_dir) / MANIFEST
    try:
        manifest = read_json(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no token manifest; run the tokenize stage first") from None
    if not isinstance(manifest, dict):
        raise InputError(path, f"expected a JSON object, got {type(manifest).__name__}", 1)
    return manifest


def domain_names(manifest: dict) -> list[str]:
    """The evaluation domains a tokenize output holds, in manifest order (none for outputs written before
    domains existed)."""
    return list(manifest.get("domains") or {})


def open_domain(tok_dir: str | Path, name: str, manifest: dict | None = None) -> np.memmap:
    """The token memmap of evaluation domain `name`, read-only."""
    manifest = manifest or read_manifest(tok_dir)
    info = manifest["domains"][name]
    return np.memmap(Path(tok_dir) / info["file"], dtype=np.dtype(manifest["dtype"]), mode="r", shape=(info["tokens"],))


def open_split(tok_dir: str | Path, split: str) -> np.memmap:
    """The token memmap of `split` ('train' or 'val'), read-only."""
    manifest = read_manifest(tok_dir)
    info = manifest["splits"][split]
    return np.memmap(Path(tok_dir) / info["file"], dtype=np.dtype(manifest["dtype"]), mode="r", shape=(info["tokens"],))
