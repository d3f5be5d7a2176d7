"""`metapretrain figures`: every paper figure and table of an experiment, from its run files alone.

Reads `grid.yaml`, each run's `config.resolved.yaml`, `pretrain/metrics.jsonl`,
`dynamics/dynamics.csv` + `peaks.csv` and `ner/results.csv` (never wandb), and
writes `figures/{loss,speedup,ner,dynamics,domains}/*.{png,pdf}`,
`figures/tables/*.{csv,md,tex,html}`, the claims report `figures/claims.{md,json}`
(metapretrain.figures.claims) and, last, `figures/index.json`.
Whatever input is missing is skipped with a logged reason.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

log = logging.getLogger("metapretrain.figures")


def build_figures(exp_dir: str | Path, config: str | Path | None = None, *, formats: tuple[str, ...] = ("png", "pdf"),
                  include_unfinished: bool = False, strict: bool = False) -> list[dict]:
    """Write every figure and table that the inputs allow; returns the index entries (also in index.json).

    A figure module that raises is logged and skipped so the others still run; `strict` re-raises (tests).
    """
    from metapretrain.figures import (
        checkpoint_sweep,
        claims,
        domains,
        dynamics,
        episodic,
        finetune_speed,
        loss,
        ner,
        ner_protocol,
        speedup,
        style,
    )
    from metapretrain.figures.load import load_experiment_data
    from metapretrain.figures.outputs import Outputs
    from metapretrain.figures.pairing import design
    from metapretrain.figures.tables import grid_table

    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise FileNotFoundError(f"experiment directory {exp_dir} does not exist")
    style.apply()
    data = load_experiment_data(exp_dir, config, include_unfinished=include_unfinished)
    out = Outputs(root=exp_dir / "figures", exp_dir=exp_dir, formats=formats)
    out.prepare()
    if not data.runs:
        data.skip("every figure: no finished run (no pretrain/done.json) in " + str(exp_dir))
    else:
        d = design(data.runs, data.axes, data.replicates, compare=data.compare)
        log.info("method axes %s, facet axes %s, replicate axes %s; %d runs in %d panel(s)", d.method_axes,
                 d.facet_axes, d.replicate_axes, len(data.runs), len(d.panels()))
        for note in d.notes:
            log.info("pairing: %s", note)
        grid = grid_table(data, d)
        about = f" ({data.description})" if data.description else ""
        out.table(grid, "grid", f"The resolved grid of experiment '{data.name}'{about}: every run's axes, method, "
                  "panel, vanilla baseline (pairing rule in metapretrain.figures.pairing) and finished stages.",
                  sorted(["grid.yaml", *grid["source"]]))
        for name, module in (("loss", loss), ("speedup", speedup), ("ner", ner),
                             ("ner protocol", ner_protocol), ("checkpoint sweep", checkpoint_sweep),
                             ("dynamics", dynamics), ("finetune_speed", finetune_speed), ("episodic", episodic),
                             ("domains", domains)):
            t0 = time.perf_counter()
            try:
                module.render(data, d, out)
            except Exception as exc:  # one broken input must not cost every other figure
                if strict:
                    raise
                log.exception("%s figures failed", name)
                data.skip(f"{name}: failed with {type(exc).__name__}: {exc}")
            log.info("%s: %.1fs", name, time.perf_counter() - t0)
        t0 = time.perf_counter()
        try:  # last: every claim gets a row, saying why where it cannot be tested
            claims.render(data, d, out)
        except Exception as exc:  # the claims report must not cost the figures and tables above
            if strict:
                raise
            log.exception("claims report failed")
            data.skip(f"claims: failed with {type(exc).__name__}: {exc}")
            try:  # the workflow declares claims.md as an output: say what happened in it
                claims.render_failure(data, out, exc)
            except Exception:  # e.g. the disk: leave it to the log
                log.exception("claims: cannot write the failure note")
        log.info("claims: %.1fs", time.perf_counter() - t0)
    out.write_index()
    n_fig = sum(e["kind"] == "figure" for e in out.entries)
    n_tab = sum(e["kind"] == "table" for e in out.entries)
    print(f"figures: {n_fig} figure files, {n_tab} table files in {out.root} ({len(data.skipped)} skipped: "
          + ("; ".join(data.skipped) if data.skipped else "none") + ")")
    return out.entries


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="metapretrain figures", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment-dir", required=True, help="results/<experiment>")
    parser.add_argument("--config", default=None,
                        help="the experiment file (optional: used for the description, and for the run list "
                             "when grid.yaml is missing)")
    parser.add_argument("--formats", default="png,pdf", help="comma-separated figure formats (default png,pdf)")
    parser.add_argument("--include-unfinished", action="store_true",
                        help="also plot runs whose pretraining is not done (live monitoring; speedups then "
                             "compare against an unfinished baseline)")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    log.addHandler(handler)  # ours at INFO; other libraries' (fontTools subsetting PDFs) stay quiet
    log.setLevel(logging.INFO)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    try:
        build_figures(args.experiment_dir, args.config, formats=formats, include_unfinished=args.include_unfinished)
    except FileNotFoundError as exc:
        print(f"metapretrain figures: error: {exc}", file=sys.stderr)
        return 1
    return 0
