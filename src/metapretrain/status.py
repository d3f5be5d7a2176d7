"""`metapretrain status <config>`: the state of every run and stage, from the run directories.

States: planned (nothing there), queued (a SLURM job waits), running (a live
job; step/total, losses, tokens/s, ETA), done (`done.json` exists), changed
(done, but under another config than the experiment file now gives the run:
the keys that differ, old -> new), failed (the job ended in error: reason and
the tail of its log), stale (outputs or a log but no live job and no done
marker: the job died without a trace). A stale Snakemake lock (its driver was
killed) is reported with what to do.

Only files are read, plus `squeue`/`sacct` for SLURM jobs (with timeouts, so
a dead controller never hangs the command) and /proc for Snakemake drivers.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from metapretrain import paths, stages
from metapretrain.io import InputError, read_json
from metapretrain.metrics_log import read_records

SLURM_TIMEOUT_S = 5.0
LOG_TAIL_LINES = 12


@dataclass
class Row:
    run_id: str
    stage: str
    state: str
    detail: str = ""
    log: str | None = None
    job_id: str | None = None
    progress: dict = field(default_factory=dict)
    log_tail: list[str] = field(default_factory=list)
    changes: list[dict] = field(default_factory=list)  # {key, old, new}: the run's recorded config vs the grid's


def read_job_record(path: Path) -> dict | None:
    """The launcher's record of the latest job of a stage (`Stage.job_record`), if any."""
    try:
        record = read_json(path)
    except FileNotFoundError:
        return None
    except InputError as exc:  # only a hint: the stage's state still comes from its files
        print(f"metapretrain status: warning: {exc}; job record ignored", file=sys.stderr)
        return None
    return record if isinstance(record, dict) else None


def tail(path: Path, n: int = LOG_TAIL_LINES, max_bytes: int = 16384) -> list[str]:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            return fh.read().decode("utf-8", errors="replace").splitlines()[-n:]
    except FileNotFoundError:
        return []


def last_records(metrics: Path, max_bytes: int = 65536) -> tuple[dict | None, dict | None]:
    """The last train and eval records of a metrics.jsonl, reading only its last `max_bytes`.

    The last line may be torn by a live writer and is skipped; a damaged line elsewhere is skipped with
    a warning naming file:line (metrics_log).
    """

    def warn(exc) -> None:
        print(f"metapretrain status: warning: {exc.file}:{exc.line}: {exc.problem}; record skipped", file=sys.stderr)

    records = read_records(metrics, on_damaged=warn, max_bytes=max_bytes)
    train = next((r for r in reversed(records) if r.get("kind") == "train"), None)
    evalr = next((r for r in reversed(records) if r.get("kind") == "eval"), None)
    return train, evalr


class SlurmQuery:
    """Batched squeue/sacct lookups with a timeout; None when SLURM cannot answer."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[str, str]] = {}
        self.available = True

    def state(self, job_ids: list[str]) -> dict[str, tuple[str, str]]:
        want = [j for j in job_ids if j not in self._cache]
        if want and self.available:
            self._cache.update(self._squeue(want))
            # A job that ended (scancel, time limit) shows as COMPLETING in squeue while its node cleans up;
            # sacct already knows how it ended.
            missing = [j for j in want if j not in self._cache or self._cache[j][0] == "COMPLETING"]
            if missing:
                self._cache.update(self._sacct(missing))
        return {j: self._cache[j] for j in job_ids if j in self._cache}

    def _run(self, cmd: list[str]) -> str | None:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=SLURM_TIMEOUT_S)
        except (FileNotFoundError, subprocess.TimeoutExpired):
            self.available = False
            return None
        return proc.stdout if proc.returncode == 0 else None

    def _squeue(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        out = self._run(["squeue", "-h", "-j", ",".join(ids), "-o", "%i|%T|%r"])
        result = {}
        for line in (out or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                result[parts[0].split("_")[0]] = (parts[1], parts[2])
        return result

    def _sacct(self, ids: list[str]) -> dict[str, tuple[str, str]]:
        out = self._run(["sacct", "-n", "-X", "-P", "-j", ",".join(ids), "-o", "JobID,State,ExitCode"])
        result = {}
        for line in (out or "").splitlines():
            parts = line.strip().split("|")
            if len(parts) == 3:
                result[parts[0].split("_")[0].split(".")[0]] = (parts[1].split()[0], f"exit code {parts[2]}")
        return result


FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
                 "UNCOMPLETED")


def _pid_alive(record: dict) -> bool:
    # Local submitit jobs are processes: their job id is the pid.
    pid = record.get("pid") or (record.get("job_id") if record.get("launcher") == "local" else None)
    host = record.get("host")
    if not pid or (host and host != socket.gethostname()):
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, PermissionError, ValueError):
        return False
    return True


def stage_row(run_id: str, stage: stages.Stage, record: dict | None, slurm: SlurmQuery, outputs_exist: bool) -> Row:
    log = stage.log
    row = Row(run_id=run_id, stage=stage.name, state="planned", log=str(log) if log.exists() else None)
    if stage.done.exists():
        row.state = "done"
        return row
    if record:
        row.job_id = str(record.get("job_id")) if record.get("job_id") else None
        if record.get("launcher") == "slurm" and row.job_id:
            state, reason = slurm.state([row.job_id]).get(row.job_id, (None, ""))
            if state in ("PENDING", "CONFIGURING", "REQUEUED", "REQUEUE_HOLD"):
                row.state, row.detail = "queued", f"SLURM job {row.job_id} {state.lower()} ({reason})"
                return row
            if state in ("RUNNING", "COMPLETING", "SUSPENDED"):
                row.state, row.detail = "running", f"SLURM job {row.job_id}"
            elif state in FAILED_STATES:
                row.state, row.detail = "failed", f"SLURM job {row.job_id} {state} ({reason})"
        elif _pid_alive(record):
            row.state, row.detail = "running", f"pid {record.get('pid') or record.get('job_id')}"
        if row.state == "planned" and str(record.get("state", "")).upper() in FAILED_STATES:
            row.state, row.detail = "failed", record.get("error") or f"exit code {record.get('exit_code')}"
    if row.state == "planned" and (outputs_exist or log.exists() or record):
        row.state, row.detail = "stale", "no live job and no done.json: the job died (rerun to resume)"
    if row.state == "failed":
        row.log_tail = tail(log)
    return row


def _pretrain_progress(run: Path, cfg: dict) -> tuple[dict, str]:
    train, evalr = last_records(paths.metrics_file(run))
    if not train:
        return {}, ""
    budget = cfg["train"]["budget"]
    done = {"steps": train.get("step", 0), "tokens": train.get("tokens", 0), "flops": train.get("flops", 0)}[budget["unit"]]
    frac = min(1.0, done / budget["value"]) if budget["value"] else 0.0
    wall = train.get("wall", 0.0)
    eta = wall * (1 - frac) / frac if frac > 0 else None
    prog = {"step": train.get("step"), "fraction": round(frac, 4), "tokens": train.get("tokens"),
            "train_loss": train.get("loss"), "val_loss": evalr.get("val_loss") if evalr else None,
            "tokens_per_s": train.get("tokens_per_s"), "eta_s": round(eta) if eta is not None else None}
    text = f"step {prog['step']} ({100 * frac:.0f}%)"
    if prog["train_loss"] is not None:
        text += f", loss {prog['train_loss']:.3f}"
    if prog["val_loss"] is not None:
        text += f", val {prog['val_loss']:.3f}"
    if prog["tokens_per_s"]:
        text += f", {prog['tokens_per_s']:.0f} tok/s"
    if eta is not None:
        text += f", ETA {time.strftime('%H:%M:%S', time.gmtime(eta))}"
    return prog, text


SHOWN_CHANGES = 3


def config_changes(run, run_dir: Path) -> list[dict] | None:
    """How the config recorded in `run_dir` (run.json's hash, config.resolved.yaml) differs from the grid's
    current one: None when it does not (or nothing was recorded), else the differing keys
    [{key, old, new}] (empty when only the hash differs, e.g. the data the run reads changed)."""
    import yaml

    from metapretrain.config.overrides import flatten
    from metapretrain.config.values import load_yaml
    from metapretrain.grid import NON_IDENTITY_SECTIONS
    from metapretrain.io import read_text
    from metapretrain.run_record import read_run_record

    try:
        record = read_run_record(run_dir)
        recorded = record.hash if record else None
    except (OSError, ValueError):  # an unreadable run.json is reported by the stages that need it
        return None
    if recorded is None or recorded == run.hash:
        return None
    try:
        old = load_yaml(read_text(paths.resolved_config(run_dir))) or {}
    except (OSError, ValueError, yaml.YAMLError):
        old = {}

    def identity(cfg: dict) -> dict:
        return flatten({k: v for k, v in cfg.items() if k not in NON_IDENTITY_SECTIONS})

    before, after = identity(old if isinstance(old, dict) else {}), identity(run.config)
    return [{"key": k, "old": before.get(k), "new": after.get(k)}
            for k in sorted(set(before) | set(after)) if before.get(k) != after.get(k)]


def describe_changes(changes: list[dict]) -> str:
    if not changes:
        return "another run hash, with the same config keys (the data it reads changed?)"
    shown = "; ".join(f"{c['key']} {json.dumps(c['old'])} -> {json.dumps(c['new'])}" for c in changes[:SHOWN_CHANGES])
    more = f" (+{len(changes) - SHOWN_CHANGES} more keys)" if len(changes) > SHOWN_CHANGES else ""
    return shown + more


def _mark_changed(rows: list[Row], changes: list[dict] | None) -> None:
    """A run's stages done (or started) under an older config: `changed` (resp. a note), with the keys."""
    if changes is None:
        return
    from metapretrain.train.stage import changes_training

    text = describe_changes(changes)
    for row in rows:
        if row.state == "done":
            after = "a rerun redoes it"
            if row.stage == "pretrain" and any(changes_training(c["key"]) for c in changes):
                after = ("a rerun refuses to resume its checkpoints under the new config: restore the old values, "
                         "delete its pretrain/ to retrain, or rename the experiment")
            row.state, row.detail, row.changes = "changed", f"ran under another config: {text}; {after}", changes
        elif row.state in ("running", "queued", "stale", "failed"):
            row.detail = "; ".join(x for x in (row.detail, f"started under another config: {text}") if x)
            row.changes = changes


def collect(exp, runs_glob: str | None = None) -> list[Row]:
    from metapretrain.matching import stages_by_run

    slurm = SlurmQuery()
    rows: list[Row] = []
    matched = stages_by_run(exp)  # compute-matched fine-tunes of vanilla runs (compare.match)
    for run in exp.runs:
        if runs_glob and not fnmatch.fnmatch(run.run_id, runs_glob):
            continue
        rd = paths.run_dir(exp.name, run.run_id)
        first = len(rows) + 1  # the run's stages after its tokenize row
        # Tokenize rows are never `changed`: the directory is named by the hash of what tokenization reads,
        # so an edit of those keys names another directory (planned), and other edits leave it valid.
        for stage in stages.of_run(exp.name, run) + matched.get(run.run_id, []):
            record = read_job_record(stage.job_record) if stage.kind in stages.LAUNCHED else None
            started = paths.metrics_file(rd).exists() if stage.kind == "pretrain" else stage.directory.exists()
            row = stage_row(run.run_id, stage, record, slurm, started)
            if stage.kind == "pretrain" and row.state in ("running", "stale", "failed"):
                row.progress, text = _pretrain_progress(rd, run.config)
                row.detail = "; ".join(x for x in (text, row.detail) if x)
            rows.append(row)
        _mark_changed(rows[first:], config_changes(run, rd))
    return rows


STYLE = {"done": "green", "changed": "magenta", "running": "cyan", "queued": "blue", "failed": "red",
         "stale": "yellow", "planned": "dim"}


def render(rows: list[Row], exp_name: str, lock=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 200)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    table = Table(title=f"{exp_name}: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())))
    for col in ("run", "stage", "state", "detail"):
        table.add_column(col, overflow="fold")
    for r in rows:
        detail = r.detail + (f"\nlog: {r.log}" if r.state in ("failed", "stale") and r.log else "")
        table.add_row(r.run_id, r.stage, f"[{STYLE[r.state]}]{r.state}[/]", detail)
    console.print(table)
    for r in rows:
        if r.state == "failed" and r.log_tail:
            console.print(f"[red]{r.run_id} {r.stage}[/] failed; last lines of {r.log}:")
            for line in r.log_tail:
                console.print(f"  {line}", markup=False, highlight=False)
    if any(r.state == "changed" for r in rows):
        console.print("[magenta]changed[/]: done under another config than the experiment file now gives; Snakemake "
                      "reruns these stages (`metapretrain doctor` lists the runs)", highlight=False)
    if lock is not None:
        style = "yellow" if lock.stale or not lock.processes_visible else "dim"
        console.print(f"[{style}]{lock.advice()}[/]", highlight=False)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain status", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="experiment file")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--runs", metavar="GLOB", help="only runs whose id matches this glob")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a defaults key (as in the DAG)")
    parser.add_argument("-d", "--directory", default=".", metavar="DIR",
                        help="Snakemake's working directory, for its lock (default: the current directory)")
    args = parser.parse_args(argv)
    from metapretrain.config.overrides import parse_sets
    from metapretrain.grid import load_experiment

    exp = load_experiment(args.config, overrides=parse_sets(args.set))
    rows = collect(exp, args.runs)
    from metapretrain.workflow_lock import inspect

    lock = inspect(args.directory)
    if args.json:
        json.dump({"experiment": exp.name, "rows": [asdict(r) for r in rows],
                   "snakemake_lock": lock.to_dict() if lock else None}, sys.stdout, indent=1)
        print()
    else:
        render(rows, exp.name, lock)
    return 0
