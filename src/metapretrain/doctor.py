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

from metapretrain import paths, stages
from metapretrain.io import InputError, done_problem
from metapretrain.run_record import RunRecord, read_run_record


def find_run_dirs(exp_name: str) -> dict[str, tuple[Path, RunRecord | None]]:
    """{run id: (run directory, its run.json or None when unreadable)}; an unreadable one is warned
    about (file:line) and keyed by its directory."""
    root = paths.runs_dir(exp_name)
    out = {}
    for path in paths.find_run_records(root) if root.exists() else []:
        try:
            record = read_run_record(path.parent)
            problem = None if record.run_id is not None else f"{path}: no run_id"
        except InputError as exc:
            problem = str(exc)
        if problem is None:
            out[record.run_id] = (path.parent, record)
        else:
            print(f"metapretrain doctor: warning: {problem}; its recorded hash is unknown", file=sys.stderr)
            out[str(path.parent.relative_to(root))] = (path.parent, None)
    return out


def diagnose(exp) -> dict[str, list[dict]]:
    from metapretrain.status import collect

    on_disk = find_run_dirs(exp.name)
    report: dict[str, list[dict]] = {"incomplete": [], "changed": [], "orphaned": []}
    grid = {r.run_id: r for r in exp.runs}
    from metapretrain.matching import stages_by_run

    matched = stages_by_run(exp)
    directories = {(r.run_id, s.name): s.directory for r in exp.runs
                   for s in stages.of_run(exp.name, r) + matched.get(r.run_id, [])}
    for row in collect(exp):
        if row.state not in ("done", "changed"):  # changed runs are listed below
            report["incomplete"].append({"run_id": row.run_id, "stage": row.stage, "state": row.state, "log": row.log})
            continue
        problem = done_problem(directories[row.run_id, row.stage])
        if problem:
            report["incomplete"].append({"run_id": row.run_id, "stage": row.stage, "state": "damaged",
                                         "log": row.log, "detail": problem})
    for run_id, (directory, info) in sorted(on_disk.items()):
        if run_id not in grid:
            report["orphaned"].append({"run_id": run_id, "path": str(directory)})
            continue
        recorded = info.hash if info else None
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
