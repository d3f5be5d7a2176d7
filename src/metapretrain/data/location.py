"""Where the data lives: config value, then $METAPRETRAIN_DATA, then ../shared/data, then a download cache.

Only the download cache is written to: a root that is the cache (the default on a
machine without a mirror, or `data.root` naming the cache itself) gets missing
catalogue files fetched into it by `metapretrain data fetch`; any other root is
read-only and a file missing from it is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DATA_ENV = "METAPRETRAIN_DATA"
MIRROR_ENV = "METAPRETRAIN_OFFLINE_MIRROR"  # where to look for the offline mirror (default ../shared/data)
URL_ENV = "METAPRETRAIN_DOWNLOAD_URL"  # replaces https://raw.githubusercontent.com for every catalogue file
DEFAULT_CACHE = "~/.cache/metapretrain"
REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_mirror() -> Path:
    """The offline mirror next to the repository (these machines have no internet)."""
    env = os.environ.get(MIRROR_ENV)
    return Path(os.path.expanduser(env)) if env else REPO_ROOT.parent / "shared" / "data"


@dataclass(frozen=True)
class DataLocation:
    root: Path
    cache: Path
    source: str  # which rule picked the root: data.root, $METAPRETRAIN_DATA, offline mirror, download cache

    @property
    def fetchable(self) -> bool:
        """Missing catalogue files may be downloaded into the root (it is the cache)."""
        return self.root == self.cache


def _section(cfg) -> tuple[str | None, str | None]:
    if cfg is None:
        return None, None
    data = cfg["data"] if isinstance(cfg, dict) else cfg.data
    if isinstance(data, dict):
        return data.get("root"), data.get("cache_dir")
    return data.root, data.cache_dir


def locate_data(cfg=None, *, root: str | None = None, cache_dir: str | None = None) -> DataLocation:
    """The data root of a run config (typed or dict) or explicit values, in the documented order.

    1. `data.root` from the config; 2. `$METAPRETRAIN_DATA`; 3. `../shared/data` next to the
    repository when it exists; 4. `data.cache_dir` (downloads land there).
    """
    cfg_root, cfg_cache = _section(cfg)
    root, cache_dir = root or cfg_root, cache_dir or cfg_cache
    cache = Path(os.path.expanduser(cache_dir or DEFAULT_CACHE)).resolve()
    if root:
        return DataLocation(Path(os.path.expanduser(root)).resolve(), cache, "data.root")
    if os.environ.get(DATA_ENV):
        return DataLocation(Path(os.path.expanduser(os.environ[DATA_ENV])).resolve(), cache, f"${DATA_ENV}")
    mirror = shared_mirror()
    if mirror.is_dir():
        return DataLocation(mirror.resolve(), cache, "offline mirror")
    return DataLocation(cache, cache, "download cache")


def resolve_data_root(cfg=None, *, root: str | None = None, cache_dir: str | None = None) -> Path:
    return locate_data(cfg, root=root, cache_dir=cache_dir).root


def download_base(cfg=None) -> str | None:
    """The URL base replacing GitHub's raw host: `data.download_url`, else $METAPRETRAIN_DOWNLOAD_URL, else None."""
    if cfg is not None:
        data = cfg["data"] if isinstance(cfg, dict) else cfg.data
        url = data.get("download_url") if isinstance(data, dict) else getattr(data, "download_url", None)
        if url:
            return url
    return os.environ.get(URL_ENV) or None


def resolve(path: str, root: Path) -> Path:
    """A config path: absolute (after ~ expansion) as is, else relative to the data root."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else root / p
