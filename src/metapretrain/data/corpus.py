"""Pretraining text sources → documents.

`files` sources read local UTF-8 text (paths and globs relative to the data
root); `hf` sources stream a Hugging Face dataset. Bad input (missing,
empty, binary or undecodable files) raises `CorpusError` naming the file and,
for bad UTF-8, the line.
"""

from __future__ import annotations

import fnmatch
import glob
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from metapretrain.data.paths import resolve
from metapretrain.io import InputError, decode_text

# Files of the default corpus that can be fetched for online users when no
# local mirror holds them: path under the data root -> (URL, sha256).
CORPUS_CATALOGUE: dict[str, tuple[str, str]] = {
    "corpus/tinyshakespeare.txt": (
        "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
    ),
    "corpus/wikitext-2_valid.tokens.txt": (
        "https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2/valid.txt",
        "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",
    ),
    "corpus/wikitext-2_test.tokens.txt": (
        "https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/word_language_model/data/wikitext-2/test.txt",
        "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",
    ),
}


class CorpusError(ValueError):
    """A corpus file or source that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    documents: str  # line | paragraph


def expand_files(source: dict, root: Path, *, fetch: bool = False, base_url_map: dict | None = None) -> list[SourceFile]:
    """The files of a `files` source, sorted within each pattern; missing ones fetched from the catalogue if `fetch`."""
    out: list[SourceFile] = []
    for pattern in source["paths"]:
        full = resolve(pattern, root)
        matches = sorted(Path(p) for p in glob.glob(str(full)))
        if not matches and fetch:
            matches = _fetch_missing(pattern, root, base_url_map or {})
        if not matches:
            hint = "" if glob.has_magic(pattern) else " (file not found)"
            raise CorpusError(f"{full}: corpus.sources pattern '{pattern}' matches no file{hint}; data root is {root}")
        out.extend(SourceFile(m, source.get("documents", "line")) for m in matches if m.is_file())
    return out


def _fetch_missing(pattern: str, root: Path, base_url_map: dict) -> list[Path]:
    from metapretrain.data.download import download

    fetched = []
    for rel, (url, sha) in sorted(CORPUS_CATALOGUE.items()):
        if fnmatch.fnmatch(rel, pattern) or rel == pattern:
            url = base_url_map.get(rel, url)
            fetched.append(download(url, root / rel, sha256=sha))
    return fetched


def read_text(path: Path) -> str:
    """The file's text; CorpusError for missing, empty, binary or undecodable files."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CorpusError(f"{path}: corpus file not found") from None
    except IsADirectoryError:
        raise CorpusError(f"{path}: is a directory, expected a text file") from None
    except OSError as exc:
        raise CorpusError(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not raw.strip():
        raise CorpusError(f"{path}: corpus file is empty")
    if b"\x00" in raw:
        line = raw.count(b"\n", 0, raw.index(b"\x00")) + 1
        raise CorpusError(f"{path}:{line}: binary data (NUL byte); expected UTF-8 text")
    try:
        return decode_text(raw, path)
    except InputError as exc:
        raise CorpusError(str(exc)) from None


def split_documents(text: str, mode: str) -> Iterator[str]:
    if mode == "line":
        for line in text.splitlines():
            if line.strip():
                yield line.strip()
    else:
        block: list[str] = []
        for line in text.splitlines():
            if line.strip():
                block.append(line.rstrip())
            elif block:
                yield "\n".join(block)
                block = []
        if block:
            yield "\n".join(block)


def iter_hf_documents(source: dict) -> Iterator[str]:
    import datasets

    try:
        ds = datasets.load_dataset(source["dataset"], source.get("config"), split=source.get("split", "train"),
                                   streaming=source.get("streaming", True))
    except Exception as exc:  # datasets raises many types; name the source either way
        raise CorpusError(f"hf dataset '{source['dataset']}': cannot load ({type(exc).__name__}: {exc})") from None
    field = source.get("text_field", "text")
    cap = source.get("max_documents")
    for i, row in enumerate(ds):
        if cap is not None and i >= cap:
            break
        if field not in row:
            raise CorpusError(f"hf dataset '{source['dataset']}': row {i} has no field '{field}' "
                              f"(fields: {', '.join(sorted(row))}); set text_field")
        text = row[field]
        if isinstance(text, str) and text.strip():
            yield text.strip()


def iter_documents(corpus: dict, root: Path, *, fetch: bool = False) -> Iterator[str]:
    """Every document of every source, in config order, capped by `max_documents`."""
    cap = corpus.get("max_documents")
    n = 0
    for source in corpus["sources"]:
        if source["type"] == "files":
            docs: Iterator[str] = (
                d for f in expand_files(source, root, fetch=fetch) for d in split_documents(read_text(f.path), f.documents)
            )
        else:
            docs = iter_hf_documents(source)
        for doc in docs:
            if cap is not None and n >= cap:
                return
            n += 1
            yield doc


def is_validation(text: str, fraction: float) -> bool:
    """Hash-based split: identical text always lands in the same split, so validation never overlaps training."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2**64


def source_files(corpus: dict, root: Path) -> list[Path]:
    return [f.path for s in corpus["sources"] if s["type"] == "files" for f in expand_files(s, root)]
