"""`metapretrain ner-table`: every finished fine-tuning result of an experiment in one CSV and one Markdown table.

    metapretrain ner-table --experiment-dir results/EXP --out results/EXP/ner

Reads `runs/**/finetune/<train_set>~<regime>/results.csv` of every run whose
`done.json` exists (unfinished ones are listed and skipped) and writes
`ner/results.csv` (the rows concatenated) and `ner/table.md`: test micro-F1
per pretrain run × regime × train set, one column per test set, then the
averages over in-language, cross-lingual and test-only sets and over each
evaluation group (`finetune.eval_groups`, the paper's In-Lang / PUD / Other).
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
from collections import defaultdict
from pathlib import Path

from metapretrain import paths
from metapretrain.finetune.stage import RESULT_COLUMNS
from metapretrain.io import InputError, atomic_write_text, read_text

KINDS = ("in_language", "cross_lingual", "test_only")
# results.csv files written before `eval_group` and `f1_mode` were appended: read with those two filled in
# (`eval_group` empty: readers assign the default groups by name; `f1_mode` strict, the only mode then).
OLD_RESULT_COLUMNS = RESULT_COLUMNS[: RESULT_COLUMNS.index("eval_group")]
OLD_FILL = {"eval_group": "", "f1_mode": "strict"}


# What each fine-tune's done.json says about the checkpoint it read, added to every row of ner/results.csv:
# `reading` is `final`, `matched-<unit>` or `step-<N>` (metapretrain.matching), `matched_to` the meta run matched.
READING_COLUMNS = ["reading", "matched_to", "match_target", "checkpoint_step", "checkpoint_tokens_ntp",
                   "checkpoint_flops"]
TABLE_COLUMNS = RESULT_COLUMNS + READING_COLUMNS


def reading_of(done: dict) -> dict[str, str]:
    """The READING_COLUMNS of one fine-tune from its done.json (one written before readings existed: final)."""
    from metapretrain.matching import reading_step, reading_unit

    reading = str(done.get("reading") or "final")
    if reading != "final" and reading_step(reading) is None:  # `step-<N>` (a sweep) stays as it is
        reading = f"matched-{reading_unit(reading)}"

    def text(key):
        v = done.get(key)
        return "" if v is None else str(v)

    return {"reading": reading, "matched_to": text("matched_to"), "match_target": text("match_target"),
            "checkpoint_step": text("checkpoint_step"), "checkpoint_tokens_ntp": text("checkpoint_tokens_ntp"),
            "checkpoint_flops": text("checkpoint_flops")}


def collect(experiment_dir: str | Path) -> tuple[list[dict], list[Path]]:
    """(rows of every finished results.csv with their READING_COLUMNS, result directories without done.json)."""
    from metapretrain.io import read_json

    rows, pending = [], []
    for f in sorted(Path(experiment_dir).glob("runs/**/finetune/*/results.csv")):
        done_path = paths.done_file(f.parent)
        if not done_path.is_file():
            pending.append(f.parent)
            continue
        done = read_json(done_path)  # an InputError naming file:line when damaged
        try:
            extra = reading_of(done if isinstance(done, dict) else {})
        except ValueError as exc:
            raise InputError(done_path, f"reading: {exc}", 1) from None
        reader = csv.DictReader(io.StringIO(read_text(f), newline=""))
        try:
            if reader.fieldnames == OLD_RESULT_COLUMNS:
                rows.extend(row | OLD_FILL | extra for row in reader)
                continue
            if reader.fieldnames != RESULT_COLUMNS:
                raise InputError(f, f"columns {reader.fieldnames} != expected {RESULT_COLUMNS}", 1)
            rows.extend(row | extra for row in reader)
        except csv.Error as exc:
            raise InputError(f, f"not valid CSV ({exc})", reader.line_num) from None
    return rows, pending


def _fmt(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def markdown(rows: list[dict]) -> str:
    """Test micro-F1 (×100) per (pretrain run, regime, train set) and eval set, with kind and group means."""
    from metapretrain.data.uner import DEFAULT_EVAL_GROUPS, UNGROUPED, eval_group

    f1: dict[tuple, dict[str, float]] = defaultdict(dict)
    kind_of: dict[tuple, dict[str, str]] = defaultdict(dict)
    group_of: dict[tuple, dict[str, str]] = defaultdict(dict)
    eval_sets: set[str] = set()
    modes: set[str] = set()
    for r in rows:
        if r["eval_split"] == "test" and r["metric"] == "micro_f1":
            reading = r["reading"] + (f" of {r['matched_to']}" if r.get("matched_to") else "")
            key = (r["pretrain_run"], r["regime"], r["train_set"], reading)
            f1[key][r["eval_set"]] = float(r["value"])
            kind_of[key][r["eval_set"]] = r["eval_kind"]
            group_of[key][r["eval_set"]] = r.get("eval_group") or eval_group(r["eval_set"], DEFAULT_EVAL_GROUPS)
            eval_sets.add(r["eval_set"])
            modes.add(r.get("f1_mode") or "strict")
    sets = sorted(eval_sets)
    present = {g for gs in group_of.values() for g in gs.values()}
    groups = [g for g in DEFAULT_EVAL_GROUPS if g in present]
    groups += sorted(present - set(groups) - {UNGROUPED}) + ([UNGROUPED] if UNGROUPED in present else [])
    means = [(kind_of, k, f"mean {k.replace('_', '-')}") for k in KINDS]
    means += [(group_of, g, f"group {g}") for g in groups]
    head = ["pretrain run", "regime", "train set", "reading", *sets, *[title for *_, title in means]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 4 + "---:|" * (len(sets) + len(means))]
    for key in sorted(f1):
        vals_of = []
        for by, name, _ in means:
            vals = [v for s, v in f1[key].items() if by[key][s] == name]
            vals_of.append(sum(vals) / len(vals) if vals else None)
        cells = [*key, *[_fmt(f1[key].get(s)) for s in sets], *map(_fmt, vals_of)]
        lines.append("| " + " | ".join(cells) + " |")
    if not f1:
        lines.append("| (no finished fine-tuning results) |" + " |" * (len(head) - 1))
    from metapretrain.finetune.evaluate import F1_MODE_TEXT

    mode = " / ".join(F1_MODE_TEXT.get(m, m) for m in sorted(modes)) or F1_MODE_TEXT["strict"]
    intro = (f"Test micro-F1 (entity level, {mode}, ×100). `group <name>`: mean over the eval sets of that "
             "`finetune.eval_groups` group. Reading: `final` = the run's final checkpoint; "
             "`matched-<unit> of <meta run>` = the last checkpoint at or before that meta run's final steps, "
             "next-token tokens or FLOPs (metapretrain.matching).")
    return "\n".join([intro, "", *lines]) + "\n"


def write_table(experiment_dir: str | Path, out: str | Path) -> tuple[Path, Path, list[Path]]:
    rows, pending = collect(experiment_dir)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=TABLE_COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    out = Path(out)
    atomic_write_text(out / "results.csv", buf.getvalue())
    atomic_write_text(out / "table.md", markdown(rows))
    return out / "results.csv", out / "table.md", pending


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metapretrain ner-table", description=__doc__.splitlines()[0])
    p.add_argument("--experiment-dir", required=True, help="results/<experiment>")
    p.add_argument("--out", required=True, help="output directory (results/<experiment>/ner)")
    args = p.parse_args(argv)
    if not Path(args.experiment_dir).is_dir():
        print(f"metapretrain ner-table: {args.experiment_dir}: no such directory", file=sys.stderr)
        return 2
    csv_path, md_path, pending = write_table(args.experiment_dir, args.out)
    for d in pending:
        print(f"skipped unfinished {d} (no done.json)", file=sys.stderr)
    print(f"wrote {csv_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
