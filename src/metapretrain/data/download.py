"""Resumable, checksummed, atomic HTTP downloads, and the official UNER v1 file list.

`download(url, dest, sha256=...)` writes into a hidden `.<name>.part` file next to
`dest`, resumes it with an HTTP Range request after a dropped connection or a
killed process, checks the checksum, and only then renames it onto `dest`. A
checksum mismatch deletes the partial file and raises, so `dest` is either
absent or complete and verified.

Checksums: sha256, or the git blob id (sha1 of `blob <size>\\0<bytes>`) where
only that is known, as for the English-EWT train file that the offline mirror
lacks (../shared/data/README.md §1 gives its blob id).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

RAW_BASE = "https://raw.githubusercontent.com/UniversalNER"


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


def _sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _check(path: Path, sha256: str | None, git_blob: str | None) -> str | None:
    """None when the file matches every given checksum, else a description of the mismatch."""
    if sha256 and (got := _sha256(path)) != sha256:
        return f"sha256 {got} != expected {sha256}"
    if git_blob and (got := git_blob_id(path)) != git_blob:
        return f"git blob {got} != expected {git_blob}"
    return None


def download(url: str, dest: str | Path, *, sha256: str | None = None, git_blob: str | None = None,
             retries: int = 3, timeout: float = 60.0, chunk: int = 1 << 16, backoff_s: float = 1.0) -> Path:
    """Fetch `url` to `dest` (resuming a previous partial download); returns `dest`.

    At least one checksum is required. A `dest` that already matches is kept
    without any request.
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
            _fetch_into(url, part, timeout, chunk)
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


def _fetch_into(url: str, part: Path, timeout: float, chunk: int) -> None:
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
        if expected is not None and got < int(expected):
            raise _Incomplete(f"received {got} of {expected} bytes")


@dataclass(frozen=True)
class RemoteFile:
    treebank: str
    name: str
    commit: str
    size: int | None
    sha256: str | None = None
    git_blob: str | None = None

    @property
    def url(self) -> str:
        return f"{RAW_BASE}/UNER_{self.treebank}/{self.commit}/{self.name}"


# Commits of the snapshot the offline mirror was copied from (../shared/data/README.md §1).
UNER_COMMITS = {
    "Chinese-GSD": "2a0c196d7a54d41119fd069874e976a58f0d7dad",
    "Chinese-GSDSIMP": "1f0307599dece7b83f4cba90ce9b63ef37a7b162",
    "Croatian-SET": "20dcb2ef6b6bf9d5e03605a74c4d87215a1574c1",
    "Danish-DDT": "983c4cdc09f8ece6069d2b692b60dc4b3649ec6e",
    "English-EWT": "8ed072de2fd24022cc62458997fe96a8fe191ea4",
    "Portuguese-Bosque": "f2c2ad67aed900385fbe5d655af41f439c9b3333",
    "Serbian-SET": "0d9685f001c10895572d844ef789c53dade0e265",
    "Slovak-SNK": "886e7c6d7e066e23246af5070d115a036a465c6d",
    "Swedish-Talbanken": "dbb692085267da83a35d1e1d2c111671b3c7c46b",
}

# (treebank, file, bytes, sha256) from the mirror's checksum table (README §6).
_UNER_SHA256 = [
    ("Chinese-GSD", "zh_gsd-ud-dev.iob2", 270_693, "0f8d7159545f257548aa4290302fb474c026ee0e1e61b3536ceb858893e3a1f1"),
    ("Chinese-GSD", "zh_gsd-ud-test.iob2", 255_399, "6f6ee9bf4e984bb5bcdaa5b88e88cabe245d750128cc424dcb1a1394e47443a2"),
    ("Chinese-GSD", "zh_gsd-ud-train.iob2", 2_088_774, "b9ed49a5abd6b9a74001ed0f08cbd54908129b88a42ecd50ae9cf6cef7c177c1"),
    ("Chinese-GSDSIMP", "zh_gsdsimp-ud-dev.iob2", 267_445, "8aeab3ac662468e258a65f887844c50cee8311cb080b60a421ff7aa8a05e8032"),
    ("Chinese-GSDSIMP", "zh_gsdsimp-ud-test.iob2", 255_351, "f1d8faa790d914fe01a24627874c8e7fad9c40b54742f5aefab5ba3f7c8edede"),
    ("Chinese-GSDSIMP", "zh_gsdsimp-ud-train.iob2", 2_088_494, "a03b5260c3d960aa711ff5f12b797de5c7d7f412563593c173cd0e7135001db5"),
    ("Croatian-SET", "hr_set-ud-dev.iob2", 514_304, "4a5b48b5b419dc3eea33ae0724c4958d6005c18523c0397cb76779e7c9eab215"),
    ("Croatian-SET", "hr_set-ud-test.iob2", 564_539, "91e7c45723d5f1a40a79f0299d165aa14dd90f67519ba18a45aaf940d749899f"),
    ("Croatian-SET", "hr_set-ud-train.iob2", 3_541_419, "623ffe75ff9fe19254e13eb0901cd4b5aa48094b2340ba3858753a7c8f1034b3"),
    ("Danish-DDT", "da_ddt-ud-dev.iob2", 244_882, "3049c10b8523323de5eea5552213f09ef906656775dd8ecaafd95debc5697a0a"),
    ("Danish-DDT", "da_ddt-ud-test.iob2", 239_475, "de86e081dccbc58dbab96c22e53b0d42bdfdd074031bf0d5e7569754efd53269"),
    ("Danish-DDT", "da_ddt-ud-train.iob2", 1_928_266, "a24064c7d27d22b0a7d7baf9035918aac6f120774ef0cd7ef5b00e77e7f8c330"),
    ("English-EWT", "en_ewt-ud-dev.iob2", 620_415, "0cafd881cf31d39897b6d588420fab8fbbe4423d271725c59921ac9dd49c0713"),
    ("English-EWT", "en_ewt-ud-test.iob2", 623_751, "821ad826d5f503ac03b4edc3fbc2174f21fbb005ec25863caf2051c434616d6e"),
    ("Portuguese-Bosque", "pt_bosque-ud-dev.iob2", 608_869, "0e6cb1db280e6677e2fd4380d695039791b5cb70bb5100376166aae5690da01a"),
    ("Portuguese-Bosque", "pt_bosque-ud-test.iob2", 591_916, "45cf232ff7677cb6f4020dad96dbf8412d1f2cca38d81164ac96ee8c03b6b09f"),
    ("Portuguese-Bosque", "pt_bosque-ud-train.iob2", 3_666_479, "1d8762040667fc15f4ec83801e20d14d10ebea2b90c16c312f3ba03da2d1f860"),
    ("Serbian-SET", "sr_set-ud-dev.iob2", 274_263, "4eb042b26a0ae5e913748874fd33e64adbcd11dd6ab9df7121cce9b6d052aa9f"),
    ("Serbian-SET", "sr_set-ud-test.iob2", 265_256, "e49fc05786c35ce0b0b8f165e66a86df802d102d1142c656dfcce89b8fc00f04"),
    ("Serbian-SET", "sr_set-ud-train.iob2", 1_708_806, "dd86c17c28db995225a3ac71e52aa914174353bc37e1a44c8af690929e0be998"),
    ("Slovak-SNK", "sk_snk-ud-dev.iob2", 320_690, "2391d6efb9bcaddc712470c7edc9d4665deffd4b8cc2669da34b91d15da01678"),
    ("Slovak-SNK", "sk_snk-ud-test.iob2", 325_286, "b2f48b43e60bf5a18f8075805592273cb91a1cd3f37dd11d6f11e81d10de3c04"),
    ("Slovak-SNK", "sk_snk-ud-train.iob2", 1_951_901, "2c1aaf803cb940212b56591b450edef4518038d336f52496ecbc0924f7d7d77f"),
    ("Swedish-Talbanken", "sv_talbanken-ud-dev.iob2", 221_240, "aaa5802d5d6e53b0ed78cc40c5d7aa47fdd2675a88318162fc282dd6895533b1"),
    ("Swedish-Talbanken", "sv_talbanken-ud-test.iob2", 468_559, "9c6f1013d9d8aaf321454f4c4470fd03c9ddcb0a1e660920b6340d0838fb2653"),
    ("Swedish-Talbanken", "sv_talbanken-ud-train.iob2", 1_549_633, "c00a899b47b31ed32f4ac443c70471627f421a2bea654a2261107924b57b97e4"),
]

UNER_FILES: list[RemoteFile] = [RemoteFile(tb, name, UNER_COMMITS[tb], size, sha256=sha)
                                for tb, name, size, sha in _UNER_SHA256] + [
    # Missing from the offline mirror; only its git blob id is known (README §1).
    RemoteFile("English-EWT", "en_ewt-ud-train.iob2", UNER_COMMITS["English-EWT"], None,
               git_blob="b2423d72f37f2226e56cbe750da76f820e6c36a9"),
]


def download_uner(data_dir: str | Path, treebanks: Iterable[str] | None = None, *,
                  files: Iterable[RemoteFile] = UNER_FILES, base: str | None = None) -> list[Path]:
    """Fetch the official UNER v1 files into `<data_dir>/<treebank>/`; returns their paths.

    `base` replaces the GitHub raw URL prefix (a mirror, or a local server in tests);
    files are then fetched from `<base>/UNER_<treebank>/<commit>/<file>`.
    """
    files = list(files)
    wanted = set(treebanks) if treebanks else {f.treebank for f in files}
    unknown = wanted - {f.treebank for f in files}
    if unknown:
        raise KeyError(f"unknown UNER treebank(s) {sorted(unknown)}; known: {sorted({f.treebank for f in files})}")
    out = []
    for f in files:
        if f.treebank not in wanted:
            continue
        url = f.url if base is None else f"{base.rstrip('/')}/UNER_{f.treebank}/{f.commit}/{f.name}"
        out.append(download(url, Path(data_dir) / f.treebank / f.name, sha256=f.sha256, git_blob=f.git_blob))
    return out
