"""`metapretrain data`: check and fetch what an experiment's stages will read.

    metapretrain data check EXPERIMENT.yaml [--set KEY=VALUE ...]
    metapretrain data fetch EXPERIMENT.yaml [--set KEY=VALUE ...] [--tokenize ID | --train-set NAME] [--record FILE]
    metapretrain data catalogue

`check` lists every missing file with the key (and experiment file line) that
names it, and what will be downloaded; exit 2 when something is missing that
cannot be fetched. `fetch` downloads into the download cache what is missing
there (see README "Data"); a mirror or a configured data root is only checked.
`--tokenize` / `--train-set` narrow it to one DAG job's needs, and `--record`
writes the marker that job leaves (workflow/rules/data.smk).
"""

from __future__ import annotations

import argparse
import json
import sys


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metapretrain data", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="list what is missing and what will be downloaded; exit 2 if something is missing")
    f = sub.add_parser("fetch", help="download what is missing into the download cache; check everything else")
    for s in (c, f):
        s.add_argument("config", help="experiment file")
        s.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a defaults key (repeatable)")
        s.add_argument("--overrides", metavar="JSON", help="dotted-key overrides as one JSON object (Snakemake's --config)")
    only = f.add_mutually_exclusive_group()
    only.add_argument("--tokenize", metavar="ID", help="only the corpus of this tokenize id")
    only.add_argument("--train-set", metavar="NAME", help="only the UNER files a finetune on this train set reads")
    f.add_argument("--record", metavar="FILE", help="write what was checked, with sha256s, to FILE (a DAG marker)")
    sub.add_parser("catalogue", help="every file that can be downloaded: path, size, checksum, URL")
    return p


def _experiment(args):
    from metapretrain.config.errors import ConfigError
    from metapretrain.config.overrides import parse_sets
    from metapretrain.grid import load_experiment

    overrides = parse_sets(args.set)
    if args.overrides:
        try:
            extra = json.loads(args.overrides)
        except ValueError as exc:
            raise ConfigError(f"not a JSON object ({exc})", file="--overrides") from None
        if not isinstance(extra, dict):
            raise ConfigError("expected a JSON object of dotted keys", file="--overrides")
        overrides.update(extra)
    return load_experiment(args.config, overrides=overrides)


def _report(problems) -> int:
    for p in problems:
        print(f"metapretrain data: {p}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from metapretrain.data import catalogue
    from metapretrain.data.plan import experiment_plan, fetch, record

    if args.cmd == "catalogue":
        for rel, e in sorted(catalogue.CATALOGUE.items()):
            how = e.url() if isinstance(e, catalogue.Remote) else f"derived from {e.source}"
            size = f"{e.size:,}" if e.size else "?"
            print(f"{rel}\t{size}\t{e.content_id}\t{how}")
        return 0
    exp = _experiment(args)
    if args.cmd == "check":
        plan = experiment_plan(exp)
        print(plan.summary())
        return _report(plan.problems) if plan.problems else 0

    from metapretrain.data.download import DownloadError

    plan = experiment_plan(exp, tokenize=args.tokenize, train_set=args.train_set)
    if plan.problems:
        return _report(plan.problems)
    print(plan.summary(), flush=True)
    try:
        files = fetch(plan)
    except DownloadError as exc:
        print(f"metapretrain data fetch: {exc}\n(no internet here? point data.root or $METAPRETRAIN_DATA at a copy of "
              "the offline mirror, or data.download_url / $METAPRETRAIN_DOWNLOAD_URL at a reachable mirror)",
              file=sys.stderr)
        return 1
    if args.record:
        need = f"tokenize {args.tokenize}" if args.tokenize else f"train set {args.train_set}" if args.train_set else "all"
        record(args.record, plan, files, need)
    print(f"data: all {len(files)} files present and checked")
    return 0


if __name__ == "__main__":
    sys.exit(main())
