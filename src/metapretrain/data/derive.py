"""`corpus/ud-train_<TB>.txt` from a UNER train file, as the offline mirror made it (its README §3).

One line per sentence: the `# text` value of each sentence of the UNER train file,
stripped, in file order, except sentences equal to any UNER dev or test sentence
once all whitespace is deleted from both (no evaluation text leaks into
pretraining). Rebuilt from the mirror's UNER files this gives the mirror's eight
non-English files byte for byte (tests/test_data.py checks every sha256).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path

_SPACE = re.compile(r"\s+")


def sentences(path: str | Path) -> Iterator[str]:
    """The stripped `# text = ...` values of a UNER/CoNLL-U file, in order."""
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if line.startswith("#"):
                key, sep, value = line.partition("=")
                if sep and key.strip() == "# text":
                    yield value.strip()


def squeeze(text: str) -> str:
    return _SPACE.sub("", text)


def derive_text(train: str | Path, exclude: Iterable[str | Path]) -> tuple[bytes, int]:
    """(the corpus file's bytes, how many train sentences were dropped as dev/test overlap)."""
    evaluation = {squeeze(s) for f in exclude for s in sentences(f)}
    kept, dropped = [], 0
    for s in sentences(train):
        if squeeze(s) in evaluation:
            dropped += 1
        else:
            kept.append(s)
    return ("\n".join(kept) + "\n").encode("utf-8") if kept else b"", dropped
