"""Resumable, checksummed, atomic HTTP downloads, and the official UNER v1 file list.

`download(url, dest, sha256=...)` writes into a hidden `.<name>.part` file next to
`dest`, resumes it with an HTTP Range request after a dropped connection or a
killed process, checks the checksum, and only then renames it onto `dest`. A
checksum mismatch deletes the partial file and raises, so `dest` is either
absent or complete and verified.

Checksums: sha256, or the git blob id (sha1 of `blob <size>\\0<bytes>`) where
only that is known, as for the English-EWT train file that the offline mirror
lacks (data.catalogue pins its blob id). What can be fetched, from
where, is listed in `data.catalogue`.

Trust on first use (`tofu=<record file>`), for files pinned to a commit whose checksum
nothing documents (the UNER test-only sets): the first download records the file's
sha256 under its pin (`key`) in the record file (JSON, in the download directory,
`TOFU_RECORD`), and every later download of that pin must match the recorded sha256,
or it is refused with `DownloadError` and deleted. Delete the record's entry only to
accept a changed file on purpose.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from metapretrain.io import sha256_file

if TYPE_CHECKING:
    from metapretrain.data.catalogue import Remote

TOFU_RECORD = ".tofu-sha256.json"


class DownloadError(RuntimeError):
    """A download failed or its checksum did not match; nothing was left at the destination."""


def _read_record(record: Path) -> dict:
    from metapretrain.io import read_json

    if not record.is_file():
        return {}
    data = read_json(record)  # an InputError naming the file when damaged
    if not isinstance(data, dict):
        raise DownloadError(f"{record}: not a trust-on-first-use record (expected a JSON object)")
    return data


def _remember(record: Path, key: str, sha256: str, size: int, url: str) -> None:
    from datetime import UTC, datetime

    from metapretrain.io import write_json

    data = _read_record(record)
    data[key] = {"sha256": sha256, "bytes": size, "url": url,
                 "first_download": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    write_json(record, dict(sorted(data.items())))


def git_blob_id(path: str | Path, chunk: int = 1 << 20) -> str:
    """The git blob id of a file (what `git hash-object` prints)."""
    path = Path(path)
    h = hashlib.sha1(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, sha256: str | None, git_blob: str | None) -> str | None:
    """None when the file matches every given checksum, else a description of the mismatch."""
    if sha256 and (got := sha256_file(path)) != sha256:
        return f"sha256 {got} != expected {sha256}"
    if git_blob and (got := git_blob_id(path)) != git_blob:
        return f"git blob {got} != expected {git_blob}"
    return None


def download(url: str, dest: str | Path, *, sha256: str | None = None, git_blob: str | None = None,
             retries: int = 3, timeout: float = 60.0, chunk: int = 1 << 16, backoff_s: float = 1.0,
             progress: Callable[[int], None] | None = None, tofu: str | Path | None = None,
             key: str | None = None) -> Path:
    """Fetch `url` to `dest` (resuming a previous partial download); returns `dest`.

    A checksum is required, or `tofu` (a trust-on-first-use record file; `key` names the pin, default `url`):
    module docstring. A `dest` that already matches is kept without any request. `progress(n)` is called
    with the bytes of the file held so far.
    """
    tofu_first = None
    if not (sha256 or git_blob):
        if tofu is None:
            raise ValueError(f"{url}: refusing to download without a checksum (sha256 or git_blob)")
        tofu, key = Path(tofu), key or url
        seen = _read_record(tofu).get(key)
        if seen is not None:
            sha256 = seen.get("sha256") if isinstance(seen, dict) else None
            if not sha256:
                raise DownloadError(f"{tofu}: entry {key!r} has no sha256")
            tofu_first = seen
    dest = Path(dest)
    if tofu is not None and sha256 is None:  # first download of this pin: trust it, then record it
        return _download_and_record(url, dest, Path(tofu), key or url, retries=retries, timeout=timeout,
                                    chunk=chunk, backoff_s=backoff_s, progress=progress)
    try:
        return _download(url, dest, sha256, git_blob, retries, timeout, chunk, backoff_s, progress)
    except _Mismatch as exc:
        if tofu_first is None:
            raise DownloadError(f"{url}: checksum mismatch ({exc}); the download was deleted") from None
        raise DownloadError(
            f"{url}: refused: the file differs from the one first downloaded for {key} ({exc}; sha256 recorded "
            f"{tofu_first.get('first_download', '?')} in {tofu}). The file changed upstream or in transit; "
            f"the download was deleted. Delete that entry of {tofu} only to accept the new file on purpose"
        ) from None


class _Mismatch(Exception):
    """A finished download does not match its checksum (already deleted)."""


def _download_and_record(url: str, dest: Path, record: Path, key: str, **kw) -> Path:
    part = dest.with_name(f".{dest.name}.first")
    with contextlib.suppress(FileNotFoundError):
        part.unlink()  # a first download is never resumed: nothing could check the pieces
    try:
        _fetch_all(url, part, **kw)
        got = sha256_file(part)
        _remember(record, key, got, part.stat().st_size, url)
        with open(part, "rb") as fh:
            os.fsync(fh.fileno())
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(part, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            part.unlink()
    return dest


def _fetch_all(url: str, part: Path, *, retries: int, timeout: float, chunk: int, backoff_s: float,
               progress: Callable[[int], None] | None) -> None:
    part.parent.mkdir(parents=True, exist_ok=True)
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout, chunk, progress)
            return
        except (urllib.error.URLError, OSError, _Incomplete) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 416:
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last_error = exc
            if attempt < retries:
                time.sleep(backoff_s * 2**attempt)
    raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last_error})")


def _download(url: str, dest: Path, sha256: str | None, git_blob: str | None, retries: int, timeout: float,
              chunk: int, backoff_s: float, progress: Callable[[int], None] | None) -> Path:
    if dest.is_file() and _check(dest, sha256, git_blob) is None:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        try:
            _fetch_into(url, part, timeout, chunk, progress)
            break
        except (urllib.error.URLError, OSError, _Incomplete) as exc:
            if isinstance(exc, urllib.error.HTTPError) and exc.code < 500 and exc.code != 416:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
            last_error = exc
            if attempt < retries:
                time.sleep(backoff_s * 2**attempt)
    else:
        raise DownloadError(f"{url}: failed after {retries + 1} attempts ({last_error}); "
                            f"the partial file {part} is kept and the next call resumes it")
    problem = _check(part, sha256, git_blob)
    if problem:
        part.unlink()
        raise _Mismatch(problem)
    with open(part, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(part, dest)
    return dest


class _Incomplete(Exception):
    """The server closed the connection before sending every promised byte."""


def _fetch_into(url: str, part: Path, timeout: float, chunk: int, progress: Callable[[int], None] | None) -> None:
    have = part.stat().st_size if part.exists() else 0
    req = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the partial file is already whole
            return
        raise
    with resp:
        if have and resp.status != 206:  # the server ignored the Range header: start over
            have = 0
        expected = resp.headers.get("Content-Length")
        got = 0
        with open(part, "ab" if have else "wb") as out:
            while block := resp.read(chunk):
                out.write(block)
                got += len(block)
                if progress is not None:
                    progress(have + got)
        if expected is not None and got < int(expected):
            raise _Incomplete(f"received {got} of {expected} bytes")


def download_uner(data_dir: str | Path, treebanks: Iterable[str] | None = None, *,
                  files: Iterable[Remote] | None = None, base: str | None = None) -> list[Path]:
    """Fetch the official UNER v1 files of the catalogue into `<data_dir>/<treebank>/`; returns their paths.

    `base` replaces https://raw.githubusercontent.com (a mirror laid out like GitHub, or a local server in tests).
    Every UNER v1 file by default (the 18 test sets): a file without a known checksum (the test-only sets) is
    checked by trust on first use, its sha256 recorded in `<data_dir>/.tofu-sha256.json` (module docstring).
    """
    from metapretrain.data.catalogue import UNER_ALL

    files = list(UNER_ALL if files is None else files)
    known = {f.rel.split("/")[1] for f in files}
    wanted = set(treebanks) if treebanks else known
    if wanted - known:
        raise KeyError(f"unknown UNER treebank(s) {sorted(wanted - known)}; known: {sorted(known)}")
    out = []
    for f in files:
        _, treebank, name = f.rel.split("/")
        if treebank in wanted:
            tofu = None if f.sha256 or f.git_blob else Path(data_dir) / TOFU_RECORD
            out.append(download(f.url(base), Path(data_dir) / treebank / name, sha256=f.sha256, git_blob=f.git_blob,
                                tofu=tofu, key=f.content_id))
    return out
