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

class DownloadError(RuntimeError):
    """A download failed or its checksum did not match; nothing was left at the destination."""


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
             progress: Callable[[int], None] | None = None) -> Path:
    """Fetch `url` to `dest` (resuming a previous partial download); returns `dest`.

    At least one checksum is required. A `dest` that already matches is kept
    without any request. `progress(n)` is called with the bytes of the file held so far.
    """
    if not (sha256 or git_blob):
        raise ValueError(f"{url}: refusing to download without a checksum (sha256 or git_blob)")
    dest = Path(dest)
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
        raise DownloadError(f"{url}: checksum mismatch ({problem}); the download was deleted")
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
    """
    from metapretrain.data.catalogue import UNER

    files = list(UNER if files is None else files)
    known = {f.rel.split("/")[1] for f in files}
    wanted = set(treebanks) if treebanks else known
    if wanted - known:
        raise KeyError(f"unknown UNER treebank(s) {sorted(wanted - known)}; known: {sorted(known)}")
    out = []
    for f in files:
        _, treebank, name = f.rel.split("/")
        if treebank in wanted:
            out.append(download(f.url(base), Path(data_dir) / treebank / name, sha256=f.sha256, git_blob=f.git_blob))
    return out
