"""Training metrics: `metrics.jsonl` (the source of truth) and an optional Weights & Biases mirror.

Every record has `kind`, `step`, `tokens`, `flops`, `wall` (docs/architecture.md).
Non-finite floats are written as null so every line is strict JSON. Readers use
`metapretrain.metrics_log.read_records`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path

from metapretrain.io import atomic_write_text
from metapretrain.metrics_log import read_records
from metapretrain.wandb_run import stable_run_id, wandb_mode


def _clean(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Appends one JSON line per record, flushed per line."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = None

    def truncate_to(self, step: int | None) -> list[dict]:
        """Keep the records with step <= `step` (None: none), rewriting the file atomically; returns them."""
        self.close()
        kept = [] if step is None else [r for r in read_records(self.path) if r["step"] <= step]
        if kept or self.path.exists():
            atomic_write_text(self.path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in kept))
        return kept

    def write(self, record: dict) -> None:
        try:
            if self._fh is None:
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - held open across records
            self._fh.write(json.dumps({k: _clean(v) for k, v in record.items()}, sort_keys=True) + "\n")
            self._fh.flush()
        except OSError as exc:  # e.g. a full disk: the bare OSError would not say which file
            raise OSError(exc.errno, f"{self.path}: cannot append a metrics record ({exc.strerror or exc})") from exc

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


class WandbLogger:
    """Mirrors records to W&B. Never raises: any failure is warned once and logging to W&B stops."""

    def __init__(self, *, mode: str, project: str, entity: str | None, run_dir: str | Path, run_id: str,
                 experiment: str | None, config: dict):
        self.run = None
        self.mode = wandb_mode(mode)
        self._warned = False
        if self.mode == "disabled":
            return
        pretrain = Path(run_dir) / "pretrain"
        id_file = pretrain / "wandb_id"
        try:
            wid = id_file.read_text().strip() if id_file.exists() else ""
            if not wid:
                wid = stable_run_id(experiment, run_id)
                atomic_write_text(id_file, wid + "\n")
            import wandb

            directory = os.environ.get("WANDB_DIR") or str(pretrain)
            Path(directory).mkdir(parents=True, exist_ok=True)
            self.run = wandb.init(project=project, entity=entity, id=wid, name=run_id, resume="allow",
                                  mode=self.mode, dir=directory, config=config,
                                  group=experiment, reinit="finish_previous",
                                  settings=wandb.Settings(silent=True, console="off"))
        except Exception as exc:  # W&B is a mirror; training must go on
            self._fail("init", exc)

    def _fail(self, what: str, exc: BaseException) -> None:
        self.run = None
        if not self._warned:
            self._warned = True
            msg = f"W&B {what} failed ({type(exc).__name__}: {exc}); continuing without W&B (metrics.jsonl has everything)"
            warnings.warn(msg, stacklevel=3)
            print(f"WARNING: {msg}", file=sys.stderr, flush=True)

    def log(self, record: dict) -> None:
        if self.run is None:
            return
        kind = record["kind"]
        data = {f"{kind}/{k}" if kind != "train" or "/" not in k else k: v for k, v in record.items()
                if k not in ("kind", "step") and isinstance(v, (int, float)) and _clean(v) is not None}
        try:
            self.run.log(data, step=int(record["step"]))
        except Exception as exc:
            self._fail("log", exc)

    def finish(self) -> None:
        if self.run is None:
            return
        try:
            self.run.finish()
        except Exception as exc:
            self._fail("finish", exc)
        self.run = None
