"""Where the data lives: config value, then $METAPRETRAIN_DATA, then ../shared/data, then a download cache."""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "METAPRETRAIN_DATA"
REPO_ROOT = Path(__file__).resolve().parents[3]


def shared_mirror() -> Path:
    """The offline mirror next to the repository (these machines have no internet)."""
    return REPO_ROOT.parent / "shared" / "data"


def resolve_data_root(cfg=None, *, root: str | None = None, cache_dir: str | None = None) -> Path:
    """The data root for a run config (or explicit values), in the documented order.

    1. `data.root` from the config; 2. `$METAPRETRAIN_DATA`; 3. `../shared/data` next to the
    repository when it exists; 4. `data.cache_dir` (downloads land there).
    """
    if cfg is not None:
        root = root or cfg.data.root
        cache_dir = cache_dir or cfg.data.cache_dir
    if root:
        return Path(os.path.expanduser(root)).resolve()
    if os.environ.get(DATA_ENV):
        return Path(os.path.expanduser(os.environ[DATA_ENV])).resolve()
    mirror = shared_mirror()
    if mirror.is_dir():
        return mirror.resolve()
    return Path(os.path.expanduser(cache_dir or "~/.cache/metapretrain")).resolve()


def resolve(path: str, root: Path) -> Path:
    """A config path: absolute (after ~ expansion) as is, else relative to the data root."""
    p = Path(os.path.expanduser(path))
    return p if p.is_absolute() else root / p
