"""`metapretrain doctor <config>`: incomplete, changed and orphaned runs of an experiment.

* incomplete: a grid run with a stage that has no `done.json` yet, or whose `done.json`
  no longer vouches for its outputs (a listed output is missing or its sha256 changed:
  state `damaged`);
* changed: a run directory whose recorded hash (run.json) differs from the run's
  current resolved config, i.e. the YAML changed after it ran (Snakemake will rerun it);
* orphaned: a run directory under results/<experiment>/runs/ that no grid run claims.
Nothing is modified; the exit code is 1 when anything needs attention.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from metapretrain import paths
from metapretrain.io import InputError, done_problem, read_json


def find_run_dirs(exp_name: str) -> dict[str, tuple[Path, dict | None]]:
    """{run id: (run directory, its run.json or None when unreadable)}; an unreadable one is warned
    about (file:line) and keyed by its directory."""
    root = paths.experiment_dir(exp_name) / "runs"
    out = {}
    for rec in root.rglob("run.json") if root.exists() else []:
        try:
            info = read_json(rec)
            out[str(info["run_id"])] = (rec.parent, info)
        except (InputError, KeyError, TypeError) as exc:
            problem = str(exc) if isinstance(exc, InputError) else f"{rec}: no run_id"
            print(f"metapretrain doctor: warning: {problem}; its recorded hash is unknown", file=sys.stderr)
            out[str(rec.parent.relative_to(root))] = (rec.parent, None)
    return out


def stage_dir(exp_name: str, run, stage: str) -> Path:
    """The directory holding a stage's done.json, for the stage names `metapretrain status` uses."""
    rd = paths.run_dir(exp_name, run.run_id)
    if stage == "tokenize":
        return paths.tokenize_dir(exp_name, run.tok_id)
    if stage == "pretrain":
        return paths.pretrain_dir(rd)
    if stage == "dynamics":
        return paths.dynamics_dir(rd)
    train_set, _, regime = stage.removeprefix("finetune:").rpartition("~")
    return paths.finetune_dir(rd, train_set, regime)


def diagnose(exp) -> dict[str, list[dict]]:
    from metapretrain.status import collect

    on_disk = find_run_dirs(exp.name)
    report: dict[str, list[dict]] = {"incomplete": [], "changed": [], "orphaned": []}
    grid = {r.run_id: r for r in exp.runs}
    for row in collect(exp):
        if row.state not in ("done", "changed"):  # changed runs are listed below
            report["incomplete"].append({"run_id": row.run_id, "stage": row.stage, "state": row.state, "log": row.log})
            continue
        problem = done_problem(stage_dir(exp.name, grid[row.run_id], row.stage))
        if problem:
            report["incomplete"].append({"run_id": row.run_id, "stage": row.stage, "state": "damaged",
                                         "log": row.log, "detail": problem})
    for run_id, (directory, info) in sorted(on_disk.items()):
        if run_id not in grid:
            report["orphaned"].append({"run_id": run_id, "path": str(directory)})
            continue
        recorded = (info or {}).get("hash")
        if recorded != grid[run_id].hash:
            report["changed"].append({"run_id": run_id, "path": str(directory), "recorded_hash": recorded,
                                      "current_hash": grid[run_id].hash})
    return report


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain doctor", description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from metapretrain.grid import load_experiment

    exp = load_experiment(args.config)
    report = diagnose(exp)
    if args.json:
        json.dump(report, sys.stdout, indent=2)
        print()
    else:
        for kind, items in report.items():
            print(f"{kind}: {len(items)}")
            for item in items:
                print("  " + "  ".join(f"{k}={v}" for k, v in item.items() if v is not None))
    return 1 if any(report.values()) else 0
