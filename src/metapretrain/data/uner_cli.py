"""`metapretrain uner`: inspect and fetch Universal NER files.

    metapretrain uner stats DIR [--json] [--labels PER ORG LOC] [--invalid-transition to_B|error]
    metapretrain uner download DIR [--treebank NAME ...]
"""

from __future__ import annotations

import argparse
import json
import sys

from metapretrain.data.uner import DEFAULT_LABELS, UnerFormatError, stats


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metapretrain uner", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("stats", help="per-file sentence, token and entity counts, mapped tags and repairs")
    s.add_argument("data_dir", help="directory of <Language-Treebank>/*.iob2")
    s.add_argument("--json", action="store_true", help="print JSON (one list of per-file records)")
    s.add_argument("--labels", nargs="+", default=list(DEFAULT_LABELS), help="entity types kept (others map to O)")
    s.add_argument("--invalid-transition", choices=["to_B", "error"], default="to_B")
    d = sub.add_parser("download", help="fetch the official UNER v1 files (checksummed; from $METAPRETRAIN_DOWNLOAD_URL "
                                        "when set) into DIR")
    d.add_argument("data_dir")
    d.add_argument("--treebank", action="append", help="only these treebanks (repeatable); default all")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.cmd == "download":
        from metapretrain.data.download import DownloadError, download_uner
        from metapretrain.data.location import download_base

        try:
            for path in download_uner(args.data_dir, args.treebank, base=download_base()):
                print(path)
        except (DownloadError, KeyError) as exc:
            print(f"metapretrain uner download: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        records = stats(args.data_dir, args.labels, args.invalid_transition)
    except (UnerFormatError, FileNotFoundError) as exc:
        print(f"metapretrain uner stats: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(records, indent=2, ensure_ascii=False))
        return 0
    types = sorted({t for r in records for t in r["entities"]} | set(args.labels))
    head = ["treebank", "split", "sentences", "tokens", *types, "mapped to O", "repairs"]
    rows = [[r["treebank"], r["split"], r["sentences"], r["tokens"], *[r["entities"].get(t, 0) for t in types],
             ", ".join(f"{k} {v}" for k, v in r["mapped_to_O"].items()) or "-", r["repairs"]] for r in records]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows, strict=True)]
    for row in [head, *rows]:
        print("  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
