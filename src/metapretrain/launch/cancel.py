"""`metapretrain cancel <experiment.yaml> [--runs GLOB]`: cancel an experiment's live SLURM jobs.

Jobs are found two ways, so none escapes: the job records in the run
directories (`RUN/logs/<stage>.job.json`), and SLURM's queue by job name
(`<experiment>/<run id>:<stage>`), which also catches a job whose submitting
driver died before it wrote the record. Only live jobs (pending, running,
requeued, ...) are cancelled; checkpoints stay, so a rerun resumes.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
from dataclasses import dataclass

from metapretrain import paths
from metapretrain.launch import job_records, slurm


@dataclass
class LiveJob:
    job_id: str
    run_id: str
    stage: str
    state: str
    record: job_records.JobRecord | None = None


def find_live_jobs(exp, runs_glob: str | None = None) -> list[LiveJob]:
    """The live SLURM jobs of `exp`'s runs (matching `runs_glob`), sorted by job id."""
    wanted = {r.run_id for r in exp.runs if not runs_glob or fnmatch.fnmatch(r.run_id, runs_glob)}
    found: dict[str, LiveJob] = {}
    for run_id in sorted(wanted):
        for rec in job_records.find_records(paths.run_dir(exp.name, run_id)):
            if rec.launcher != "slurm":
                continue
            state = slurm.job_state(rec.job_id)
            if state in slurm.LIVE_STATES:
                found[rec.job_id] = LiveJob(rec.job_id, run_id, rec.stage, state, rec)
    for job_id, (name, _) in slurm.live_jobs_by_name(f"{exp.name}/").items():
        run_id, stage = job_records.split_job_name(name, exp.name)
        if run_id in wanted and job_id not in found:
            state = slurm.job_state(job_id)  # squeue says COMPLETING for a job that already ended; sacct knows
            if state in slurm.LIVE_STATES:
                found[job_id] = LiveJob(job_id, run_id, stage, state)
    return sorted(found.values(), key=lambda j: int(j.job_id) if j.job_id.isdigit() else 0)


def cancel_jobs(exp, live: list[LiveJob]) -> None:
    slurm.cancel([j.job_id for j in live])
    for job in live:
        if job.record is not None:
            job.record.state, job.record.finished_at = "CANCELLED", job_records.now()
            job_records.write_record(paths.run_dir(exp.name, job.run_id), job.record)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain cancel", description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="experiment file")
    parser.add_argument("--runs", metavar="GLOB", help="only runs whose id matches this glob")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a defaults key (as in the DAG)")
    parser.add_argument("--experiment", metavar="NAME",
                        help="experiment name, if the DAG ran with --config experiment=NAME")
    parser.add_argument("-n", "--dry-run", action="store_true", help="list the live jobs, cancel nothing")
    args = parser.parse_args(argv)
    from metapretrain.config.overrides import parse_sets
    from metapretrain.grid import load_experiment

    exp = load_experiment(args.config, overrides=parse_sets(args.set))
    if args.experiment:
        exp.name = args.experiment
    try:
        live = find_live_jobs(exp, args.runs)
    except slurm.SlurmError as exc:
        print(f"metapretrain cancel: cannot query SLURM: {exc}", file=sys.stderr)
        return 1
    scope = f"experiment '{exp.name}'" + (f" (runs matching '{args.runs}')" if args.runs else "")
    if not live:
        print(f"no live SLURM jobs for {scope}")
        return 0
    for job in live:
        print(f"{'would cancel' if args.dry_run else 'cancelling'} SLURM job {job.job_id} ({job.state}): "
              f"{job.run_id} {job.stage}")
    if args.dry_run:
        return 0
    try:
        cancel_jobs(exp, live)
    except slurm.SlurmError as exc:
        print(f"metapretrain cancel: scancel failed: {exc}", file=sys.stderr)
        return 1
    print(f"cancelled {len(live)} SLURM job(s) of {scope}; their checkpoints are kept: rerun to resume")
    return 0
