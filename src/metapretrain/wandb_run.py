"""How every stage that mirrors to W&B starts its W&B run: the mode, and an id that survives requeues."""

from __future__ import annotations

import hashlib
import os


def wandb_mode(configured: str) -> str:
    """WANDB_MODE wins; `auto` = online with WANDB_API_KEY set, else offline."""
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env in ("online", "offline", "disabled"):
        return env
    if env == "dryrun":
        return "offline"
    if configured == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return configured


def stable_run_id(experiment: str | None, run_id: str) -> str:
    """A W&B run id that is the same for every attempt of a run (requeues resume the same W&B run)."""
    return hashlib.sha256(f"{experiment or ''}/{run_id}".encode()).hexdigest()[:16]
