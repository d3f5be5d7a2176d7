"""Pretraining text sources → documents.

`files` sources read local UTF-8 text (paths and globs relative to the data
root); `hf` sources stream a Hugging Face dataset. Bad input (missing,
empty, binary or undecodable files) raises `CorpusError` naming the file and,
for bad UTF-8, the line.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from metapretrain.data import catalogue
from metapretrain.data.catalogue import Entry
from metapretrain.data.location import DataLocation, resolve
from metapretrain.io import InputError, decode_text


class CorpusError(ValueError):
    """A corpus file or source that cannot be used; the message names the file (and line)."""


@dataclass(frozen=True)
class SourceFile:
    path: Path
    documents: str  # line | paragraph


def expand_files(source: dict, root: Path, key: str = "corpus.sources") -> list[SourceFile]:
    """The files of a `files` source that exist under `root`, sorted within each pattern."""
    out: list[SourceFile] = []
    for pattern in source["paths"]:
        full = resolve(pattern, root)
        matches = sorted(Path(p) for p in glob.glob(str(full)))
        if not matches:
            hint = "" if glob.has_magic(pattern) else " (file not found)"
            fetch = " (run `metapretrain data fetch <experiment.yaml>` to download it)" if catalogue.matching(pattern) else ""
            raise CorpusError(f"{full}: {key} pattern '{pattern}' matches no file{hint}; "
                              f"data root is {root}{fetch}")
        out.extend(SourceFile(m, source.get("documents", "line")) for m in matches if m.is_file())
    return out


def expand_pattern(pattern: str, location: DataLocation) -> list[tuple[Path, Entry | None]]:
    """What a pattern names under a data location: the files there, plus, when the root is the
    download cache, the catalogue files it names that are still to be fetched; sorted by path.
    Each comes with its catalogue entry (None for a file the catalogue does not know)."""
    full = resolve(pattern, location.root)
    found: dict[Path, Entry | None] = {Path(p): None for p in glob.glob(str(full)) if os.path.isfile(p)}
    if location.fetchable:
        if not full.is_relative_to(location.root):
            return sorted(found.items())
        for entry in catalogue.matching(full.relative_to(location.root).as_posix()):
            found[location.root / entry.rel] = entry
        for path in found:
            if found[path] is None:
                found[path] = catalogue.CATALOGUE.get(path.relative_to(location.root).as_posix())
    return sorted(found.items())


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


def _load_hf(source: dict):
    """`datasets.load_dataset` of the source; a local directory written by `save_to_disk` goes through
    `load_from_disk` (and its split is picked from a DatasetDict)."""
    import datasets

    split = source.get("split", "train")
    local = Path(source["dataset"]).expanduser()
    if local.is_dir() and ((local / "dataset_dict.json").is_file() or (local / "state.json").is_file()):
        ds = datasets.load_from_disk(str(local))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise KeyError(f"no split '{split}' (splits: {', '.join(ds)})")
            ds = ds[split]
        return ds
    return datasets.load_dataset(source["dataset"], source.get("config"), split=split,
                                 streaming=source.get("streaming", True))


def iter_hf_documents(source: dict) -> Iterator[str]:
    try:
        ds = _load_hf(source)
    except Exception as exc:  # datasets raises many types; name the source either way
        what = source["dataset"] + (f"' config '{source['config']}" if source.get("config") else "")
        raise CorpusError(f"hf dataset '{what}': cannot load ({type(exc).__name__}: {exc})") from None
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


def iter_documents(corpus: dict, root: Path) -> Iterator[str]:
    """Every document of every source, in config order, capped by `max_documents`."""
    for _, doc in iter_sourced_documents(corpus, root):
        yield doc


def iter_sourced_documents(corpus: dict, root: Path) -> Iterator[tuple[str, str]]:
    """(origin, document) of every source in config order, capped by `max_documents`; the origin is the
    file's path for a `files` source, `hf_origin(source)` for a Hugging Face one (`source_domains` names them)."""
    cap = corpus.get("max_documents")
    n = 0
    for source in corpus["sources"]:
        if source["type"] == "files":
            docs: Iterator[tuple[str, str]] = (
                (str(f.path), d) for f in expand_files(source, root)
                for d in split_documents(read_text(f.path), f.documents)
            )
        else:
            docs = ((hf_origin(source), d) for d in iter_hf_documents(source))
        for item in docs:
            if cap is not None and n >= cap:
                return
            n += 1
            yield item


# --------------------------------------------------------------------------- evaluation domains

_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def hf_origin(source: dict) -> str:
    return f"hf:{source['dataset']}:{source.get('config') or ''}:{source.get('split', 'train')}"


def _domain_stem(origin: str) -> str:
    if origin.startswith("hf:"):
        dataset, config, _split = origin[3:].rsplit(":", 2)
        base = dataset.rstrip("/").rsplit("/", 1)[-1]
        stem = f"{base}-{config}" if config else base
    else:
        stem = Path(origin).name
        stem = stem[:-4] if stem.endswith(".txt") else stem
    return _UNSAFE.sub("-", stem).strip("-") or "source"


def source_domains(corpus: dict, root: Path) -> dict[str, str]:
    """origin -> domain name of every corpus source (`corpus.domains.by_source`), in read order: a file's
    name without `.txt`, a dataset's last path part (and config); a repeated name gets `-2`, `-3`, ..."""
    origins = []
    for source in corpus["sources"]:
        if source["type"] == "files":
            origins += [str(f.path) for f in expand_files(source, root)]
        else:
            origins.append(hf_origin(source))
    out: dict[str, str] = {}
    used: set[str] = {d["name"] for d in (corpus.get("domains") or {}).get("extra") or []}
    for origin in dict.fromkeys(origins):
        stem = name = _domain_stem(origin)
        k = 2
        while name in used:
            name, k = f"{stem}-{k}", k + 1
        used.add(name)
        out[origin] = name
    return out


def iter_domain_documents(domain: dict, root: Path, key: str = "corpus.domains.extra") -> Iterator[str]:
    """Every document of an extra evaluation domain (`corpus.domains.extra` entry), in order."""
    if domain["type"] == "files":
        for f in expand_files(domain, root, key):
            yield from split_documents(read_text(f.path), f.documents)
    else:
        yield from iter_hf_documents({"streaming": False, "split": "validation", "max_documents": 1000, **domain})


def domain_files(domain: dict, root: Path, key: str = "corpus.domains.extra") -> list[Path]:
    return [f.path for f in expand_files(domain, root, key)] if domain["type"] == "files" else []


def is_validation(text: str, fraction: float) -> bool:
    """Hash-based split: identical text always lands in the same split, so validation never overlaps training."""
    h = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")
    return h < fraction * 2**64


def source_files(corpus: dict, root: Path) -> list[Path]:
    return [f.path for s in corpus["sources"] if s["type"] == "files" for f in expand_files(s, root)]
