"""`metapretrain grid show | validate | diff | materialize`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

from metapretrain import paths
from metapretrain.config.overrides import parse_sets
from metapretrain.grid import Experiment, Run, load_experiment
from metapretrain.io import atomic_write_text
from metapretrain.run_record import write_run_record


def write_run_files(exp_name: str, run: Run, directory: str | Path | None = None) -> Path:
    """Write `config.resolved.yaml` and `run.json` for a run (atomically); returns the run directory."""
    from metapretrain.config.load import dump_yaml

    directory = Path(directory) if directory else paths.run_dir(exp_name, run.run_id)
    atomic_write_text(paths.resolved_config(directory), dump_yaml(run.config))
    write_run_record(directory, run, exp_name)
    return directory


def write_grid_file(exp: Experiment, experiment_file: str, path: str | Path) -> None:
    """`results/<experiment>/grid.yaml`: the expanded grid (run id -> axes, hash) and the file it came from."""
    runs = [{"run_id": r.run_id, "axes": r.axes, "hash": r.hash} for r in exp.runs]
    atomic_write_text(path, yaml.safe_dump({"experiment": exp.name, "file": experiment_file, "axes": exp.axes,
                                            "replicates": exp.replicates, "compare": exp.compare,
                                            "runs": runs}, sort_keys=False))


def write_tokenize_config(exp: Experiment, tok_id: str, path: str | Path) -> None:
    from metapretrain.config.load import dump_yaml

    atomic_write_text(path, dump_yaml(exp.tokenize_configs()[tok_id]))


def _costs(exp: Experiment, mfu: float, peak_tflops: float) -> list:
    from metapretrain.cost import run_cost

    return [run_cost(r.typed, mfu=mfu, peak_tflops=peak_tflops) for r in exp.runs]


def _table(exp: Experiment, costs: list, mfu: float, peak_tflops: float) -> None:
    from rich.console import Console
    from rich.table import Table

    from metapretrain.cost import format_bytes, format_hours, total

    table = Table(title=f"{exp.name}: {len(exp.runs)} runs" + (f" — {exp.description}" if exp.description else ""),
                  caption=f"pretraining only · GPU-hours at MFU {mfu:g} × {peak_tflops:g} TFLOP/s per GPU (--mfu, "
                          "--peak-tflops) · disk: the checkpoints and HF exports a run leaves")
    table.add_column("#", justify="right")
    table.add_column("run id", overflow="fold")
    for axis in exp.axes:
        table.add_column(axis)
    table.add_column("from")
    table.add_column("hash")
    table.add_column("tokenize")
    for col in ("FLOPs", "GPU-h", "disk"):
        table.add_column(col, justify="right")
    for i, (run, c) in enumerate(zip(exp.runs, costs, strict=True), 1):
        table.add_row(str(i), run.run_id, *[run.axes.get(a, "·") for a in exp.axes],
                      run.source, run.hash, run.tok_id, f"{c.flops:.1e}", format_hours(c.gpu_hours),
                      f"{format_bytes(c.disk_bytes)} ({c.checkpoints} ckpt + {c.hf_exports} HF)")
    t = total(costs)
    table.add_section()
    table.add_row("", "total", *[""] * len(exp.axes), "", "", "", f"{t['flops']:.1e}", format_hours(t["gpu_hours"]),
                  format_bytes(t["disk_bytes"]))
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(table)
    for dropped, kept in exp.collapsed:
        console.print(f"[dim]{dropped} has the same resolved config as {kept}: collapsed into it[/dim]")


def _diff(old: Experiment, new: Experiment) -> dict:
    a = {r.run_id: r.hash for r in old.runs}
    b = {r.run_id: r.hash for r in new.runs}
    return {
        "added": sorted(set(b) - set(a)),
        "removed": sorted(set(a) - set(b)),
        "changed": sorted(k for k in set(a) & set(b) if a[k] != b[k]),
        "unchanged": sorted(k for k in set(a) & set(b) if a[k] == b[k]),
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain grid", description="Inspect an experiment's grid.")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p_show = sub.add_parser("show", help="print the runs as a table")
    p_show.add_argument("config")
    p_show.add_argument("--json", action="store_true", help="print JSON instead of a table")
    from metapretrain.cost import DEFAULT_MFU, DEFAULT_PEAK_TFLOPS

    p_show.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                        help=f"model FLOP utilisation the GPU-hours assume (default {DEFAULT_MFU})")
    p_show.add_argument("--peak-tflops", type=float, default=DEFAULT_PEAK_TFLOPS,
                        help=f"peak TFLOP/s of one GPU (default {DEFAULT_PEAK_TFLOPS:g}: H100 SXM, dense BF16)")
    p_val = sub.add_parser("validate", help="check experiment files and the data they name; exit 2 on the first bad file")
    p_val.add_argument("configs", nargs="+")
    p_diff = sub.add_parser("diff", help="runs an edit adds, removes or changes")
    p_diff.add_argument("old")
    p_diff.add_argument("new")
    p_diff.add_argument("--json", action="store_true")
    p_mat = sub.add_parser("materialize", help="write a run's config.resolved.yaml and run.json")
    p_mat.add_argument("config")
    p_mat.add_argument("--run", required=True, help="run id")
    p_mat.add_argument("--out", help="run directory (default results/<experiment>/runs/<run id>)")
    for p in (p_show, p_val, p_diff, p_mat):
        p.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a defaults key (repeatable)")
    args = parser.parse_args(argv)
    sets = parse_sets(args.set)

    if args.cmd == "show":
        if not (0 < args.mfu <= 1) or args.peak_tflops <= 0:
            parser.error(f"--mfu must be in (0, 1] and --peak-tflops > 0, got {args.mfu:g} and {args.peak_tflops:g}")
        exp = load_experiment(args.config, overrides=sets)
        costs = _costs(exp, args.mfu, args.peak_tflops)
        if args.json:
            from metapretrain.cost import total

            json.dump({"experiment": exp.name, "axes": exp.axes,
                       "runs": [{"run_id": r.run_id, "axes": r.axes, "hash": r.hash, "source": r.source,
                                 "tok_id": r.tok_id, "cost": c.to_dict()} for r, c in zip(exp.runs, costs, strict=True)],
                       "collapsed": exp.collapsed,
                       "cost": {"mfu": args.mfu, "peak_tflops": args.peak_tflops, "total": total(costs)}},
                      sys.stdout, indent=2)
            print()
        else:
            _table(exp, costs, args.mfu, args.peak_tflops)
    elif args.cmd == "validate":
        from metapretrain.data.plan import experiment_plan

        for path in args.configs:
            exp = load_experiment(path, overrides=sets)
            plan = experiment_plan(exp)  # every data file of every named set and split, before any compute
            for problem in plan.problems:
                print(f"metapretrain grid: config error: {problem}", file=sys.stderr)
            if plan.problems:
                return 2
            print(f"{path}: OK ({len(exp.runs)} runs, axes: {', '.join(exp.axes) or 'none'})")
            print(f"  {plan.summary()}".replace("\n", "\n  "))
    elif args.cmd == "diff":
        d = _diff(load_experiment(args.old, overrides=sets), load_experiment(args.new, overrides=sets))
        if args.json:
            print(json.dumps(d, indent=2))
        else:
            for key, sign in (("added", "+"), ("removed", "-"), ("changed", "~")):
                for run_id in d[key]:
                    print(f"{sign} {run_id}")
            print(f"{len(d['added'])} added, {len(d['removed'])} removed, {len(d['changed'])} changed, "
                  f"{len(d['unchanged'])} unchanged")
    elif args.cmd == "materialize":
        exp = load_experiment(args.config, overrides=sets)
        print(write_run_files(exp.name, exp.run(args.run), args.out))
    return 0
