"""Byte-level BPE tokenizer (Hugging Face `tokenizers`): train, load, special tokens."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

EOS = "<|endoftext|>"
MASK = "[MASK]"
SPECIAL_TOKENS = [EOS, MASK]


def train_bpe(documents: Iterable[str], vocab_size: int, min_frequency: int = 2):
    """Train a byte-level BPE whose vocabulary includes `<|endoftext|>` (id 0) and `[MASK]` (id 1)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(documents, trainer=trainer)
    return tok


def read_tokenizer(path: str | Path):
    """A tokenizer.json as it is; ValueError naming the file (and line, for bad UTF-8 or JSON)."""
    from tokenizers import Tokenizer

    from metapretrain.io import parse_json, read_text

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found (tokenizer.path)")
    text = read_text(path)
    parse_json(text, path)  # bad UTF-8 or JSON syntax: an InputError with file:line (tokenizers gives neither)
    try:
        return Tokenizer.from_str(text)
    except Exception as exc:  # tokenizers raises a bare Exception on a malformed spec
        raise ValueError(f"{path}: not a valid tokenizer.json ({exc})") from None


def load_tokenizer(path: str | Path):
    """Load a tokenizer.json; it must define `<|endoftext|>` and `[MASK]` (added if missing)."""
    tok = read_tokenizer(path)
    missing = [t for t in SPECIAL_TOKENS if tok.token_to_id(t) is None]
    if missing:
        tok.add_special_tokens(missing)
    return tok


def special_token_ids(tok) -> dict[str, int]:
    return {"eos": tok.token_to_id(EOS), "mask": tok.token_to_id(MASK)}
