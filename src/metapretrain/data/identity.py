"""What a run reads, by content: the corpus part of a run's identity, independent of where the data lives.

A `files` source stands in a run's identity as the content ids of the files it
expands to, in read order: the sha256 of each local file, or, for a catalogue
file still to be downloaded, the catalogue's checksum (the same sha256 once it is
fetched). So the same corpus under two roots gives the same run hash and tokenize
id, and editing a file changes them. Local sha256s are memoized by (path, size,
mtime); files of 64 MiB or more are also remembered across processes in
`<data.cache_dir>/sha256-index.json`, so planning a grid over a large corpus does
not re-read it each time.

A derived catalogue file without a pinned sha256 (English UD text, see
`data.catalogue`) is identified by its recipe before and after it is made: the
fetcher records the sha256 it produced next to it, and while the file still has
that sha256 its id stays the recipe's, so fetching never changes a run's identity.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from metapretrain.data.catalogue import Derived, Entry
from metapretrain.data.corpus import expand_pattern
from metapretrain.data.errors import DataError
from metapretrain.data.location import DataLocation, locate_data
from metapretrain.io import atomic_write_text, sha256_file

PERSIST_MIN_BYTES = 64 << 20
INDEX_FILE = "sha256-index.json"

_memo: dict[tuple[str, int, int], str] = {}
_persisted: dict[str, dict] = {}  # cache dir -> its loaded index


def derived_record(path: Path) -> Path:
    """Where the fetcher records what it derived (next to the file, hidden from globs)."""
    return path.with_name(f".{path.name}.derived.json")


def file_sha256(path: Path, cache_dir: Path | None = None) -> str:
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _memo:
        return _memo[key]
    index = _load_index(cache_dir) if cache_dir is not None and st.st_size >= PERSIST_MIN_BYTES else None
    if index is not None and index.get(str(path), [None])[:2] == [st.st_size, st.st_mtime_ns]:
        _memo[key] = index[str(path)][2]
        return _memo[key]
    sha = _memo[key] = sha256_file(path)
    if index is not None:
        index[str(path)] = [st.st_size, st.st_mtime_ns, sha]
        with contextlib.suppress(OSError):  # an unwritable cache only costs re-hashing next time
            atomic_write_text(cache_dir / INDEX_FILE, json.dumps(index, sort_keys=True))
    return sha


def _load_index(cache_dir: Path) -> dict:
    key = str(cache_dir)
    if key not in _persisted:
        try:
            loaded = json.loads((cache_dir / INDEX_FILE).read_text(encoding="utf-8"))
            _persisted[key] = loaded if isinstance(loaded, dict) else {}
        except (OSError, ValueError):
            _persisted[key] = {}
    return _persisted[key]


def content_id(path: Path, entry: Entry | None, location: DataLocation) -> str:
    if not path.is_file():
        assert entry is not None, path  # expand_pattern only names absent files the catalogue can fetch
        return entry.content_id
    sha = file_sha256(path, location.cache)
    if isinstance(entry, Derived) and entry.sha256 is None:
        try:
            record = json.loads(derived_record(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and record.get("sha256") == sha and record.get("content_id") == entry.content_id:
            return entry.content_id
    return sha


def source_files(pattern: str, location: DataLocation) -> list[tuple[Path, Entry | None]]:
    """`expand_pattern`, or a DataError naming the pattern when it names nothing."""
    found = expand_pattern(pattern, location)
    if not found:
        where = "the download cache " if location.fetchable else ""
        also = " nor in the download catalogue" if location.fetchable else ""
        raise DataError(f"pattern '{pattern}' matches no file under {where}{location.root} ({location.source}){also}",
                        key="corpus.sources", value=pattern)
    return found


class ContentIndex:
    """Corpus content ids, memoized for one grid expansion (its runs mostly share one corpus)."""

    def __init__(self) -> None:
        self._corpus: dict[str, dict] = {}
        self._last: tuple[dict, dict] | None = None  # (config, result): the run hash and tokenize id ask in turn

    def corpus(self, config: dict) -> dict:
        """The corpus section as it enters a run's identity: file sources by content."""
        if self._last is not None and self._last[0] is config:
            return self._last[1]
        result = self._lookup(config)
        self._last = (config, result)
        return result

    def _lookup(self, config: dict) -> dict:
        corpus = config["corpus"]
        key = json.dumps([config.get("data"), corpus], sort_keys=True, default=str)
        if key not in self._corpus:
            location = locate_data(config)
            sources = []
            for source in corpus["sources"]:
                if source["type"] != "files":
                    sources.append(source)
                    continue
                ids = [content_id(path, entry, location)
                       for pattern in source["paths"] for path, entry in source_files(pattern, location)]
                sources.append({"type": "files", "documents": source.get("documents", "line"), "content": ids})
            self._corpus[key] = dict(corpus, sources=sources)
        return self._corpus[key]


def corpus_identity(config: dict, index: ContentIndex | None = None) -> dict:
    return (index or ContentIndex()).corpus(config)


def clear_memo() -> None:
    """Forget memoized sha256s (tests that rewrite a file within one mtime tick)."""
    _memo.clear()
    _persisted.clear()
