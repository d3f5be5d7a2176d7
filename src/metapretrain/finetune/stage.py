"""The finetune stage: one pretrained run × one train set × one regime, evaluated on every UNER test set.

    metapretrain finetune --run-dir RUN --train-set NAME --regime head|full

    metapretrain finetune --run-dir VANILLA --train-set NAME --regime head --match-run META --match-unit flops

Writes `RUN/finetune/<train_set>~<regime>/`: `results.csv` (tidy rows, see
docs/architecture.md), `history.csv` (epoch, train loss, dev micro-F1, dev loss) and
`done.json` last. `NAME` is a treebank directory with a train split, or `all`
(the union of every train split present, with the union of their dev splits
for early stopping). Test sets are discovered in `finetune.data_dir`, so a
test-only treebank dropped there is evaluated with no config change.
Evaluation subsets (`finetune.max_eval_sentences`) are drawn with a fixed seed,
so every run is scored on the same sentences.

With `--step N` it fine-tunes from the run's own checkpoint of step N into
`RUN/finetune/<train_set>~<regime>~step-<N>/` (a checkpoint sweep, `finetune.checkpoints`).
With `--match-run` and `--match-unit` it is a compute-matched reading (metapretrain.matching): the run
is fine-tuned from its last checkpoint at or before the meta run's final steps / next-token tokens /
FLOPs, into `RUN/finetune/<train_set>~<regime>~matched-<unit>-<tag>/`, whose `done.json` records the
meta run, the target and the count actually read.

`finetune_run` goes through its steps in order: `read_data`, `build_classifier`,
`train_classifier`, `evaluate`, `write_outputs`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metapretrain import paths, stages
from metapretrain.io import done_is_valid, done_problem

if TYPE_CHECKING:
    import torch

    from metapretrain.finetune.data import WordEncoder
    from metapretrain.finetune.model import TokenClassifier

# `eval_group` (finetune.eval_groups; `ungrouped` for a set in no group) and `f1_mode` (finetune.f1_mode) were
# appended last, so a reader indexing the older columns by position still works.
RESULT_COLUMNS = ["pretrain_run", "method_axes", "train_set", "regime", "eval_set", "eval_split", "eval_kind",
                  "metric", "value", "eval_group", "f1_mode"]
EVAL_SAMPLE_SEED = 0
STATE_FILE = "train_state.pt"
CURVE_COLUMNS = ("step", "epoch", "train_loss", "dev_micro_f1")  # curve.csv (finetune.log_every)


def _sample(items: list, cap: int | None, seed: int) -> list:
    if cap is None or len(items) <= cap:
        return items
    keep = sorted(random.Random(seed).sample(range(len(items)), cap))
    return [items[i] for i in keep]


def _run_identity(run_dir: Path) -> tuple[str, dict]:
    from metapretrain.run_record import read_run_record

    rec = read_run_record(run_dir)
    if rec is None:
        return run_dir.name, {}
    return rec.run_id if rec.run_id is not None else run_dir.name, dict(rec.axes)


def eval_kind(eval_set: str, splits: dict, trained_on: set[str]) -> str:
    if set(splits) == {"test"}:
        return "test_only"
    return "in_language" if eval_set in trained_on else "cross_lingual"


@dataclass
class FinetuneData:
    """The sentences one job trains, early-stops and is tested on, read from `finetune.data_dir`."""

    uner_dir: Path
    treebanks: dict[str, dict[str, Path]]  # every treebank found: {split: file}
    sources: list[str]  # the treebanks trained on
    extra: dict[str, Path]  # `finetune.extra_train` files
    train: list
    dev: list
    tests: dict[str, list]
    report: dict[str, dict]  # per "treebank/split": sentences, repairs, tags mapped to O


@dataclass
class Classifier:
    """The token classifier on the run's final checkpoint, and how sentences become its batches."""

    clf: TokenClassifier
    encoder: WordEncoder
    names: list[str]
    max_len: int
    device: torch.device
    checkpoint_step: int
    checkpoint: dict | None = None  # the checkpoint's counters, and for a matched reading what it matched

    def source(self, sents: list, batch_size: int, cache: bool):
        from metapretrain.finetune.data import encode
        from metapretrain.finetune.train import FeatureSource

        label2id = {n: i for i, n in enumerate(self.names)}
        return FeatureSource(self.clf, encode(sents, self.encoder, label2id, self.max_len), pad_id=self.encoder.eos,
                             device=self.device, batch_size=batch_size, cache=cache)


def finetune_run(run_dir: str, train_set: str, regime: str, match_run: str | None = None,
                 match_unit: str | None = None, step: int | None = None) -> str:
    """Fine-tune and evaluate; returns the output directory. Returns at once when it is already done.

    With `match_run` (a meta run's directory) and `match_unit`, a compute-matched reading; with `step`, the
    run's own checkpoint of that step (a checkpoint sweep, `finetune.checkpoints`); module docstring.
    """
    from metapretrain.config import load_run_config
    from metapretrain.device import resolve_device

    run_dir_p = Path(run_dir)
    reading = checkpoint_reading(match_run, match_unit, step)
    out = paths.finetune_dir(run_dir_p, train_set, regime, reading)
    name = out.name
    if paths.done_file(out).is_file():
        problem = done_problem(out, "finetune")
        if problem is None:
            print(f"finetune {name}: already done ({paths.done_file(out)})", flush=True)
            return str(out)
        print(f"warning: finetune {name}: {problem}; fine-tuning again", flush=True)
    if regime not in ("head", "full"):
        raise ValueError(f"regime must be 'head' or 'full', got {regime!r}")
    cfg = load_run_config(paths.resolved_config(run_dir_p))
    run_id, axes = _run_identity(run_dir_p)
    checkpoint, match = None, None
    if step is not None:
        from metapretrain.checkpoint import at_step

        checkpoint, match = at_step(run_dir_p, step), {"reading": reading}
    elif reading is not None:
        from metapretrain.matching import matched_checkpoint

        checkpoint, match = matched_checkpoint(run_dir_p, Path(match_run), match_unit)
        print(f"finetune {name}: {match_unit} matched to {match['matched_to']}: target {match['match_target']:.6g}, "
              f"read step {checkpoint.step} at {match['match_actual']:.6g} ({match['match_ratio']:.3f} of it)",
              flush=True)
    data = read_data(cfg, train_set)
    print(f"finetune {name}: {len(data.train)} train, {len(data.dev)} dev sentences, "
          f"{len(data.tests)} test sets; {sum(r['repairs'] for r in data.report.values())} invalid I- tags "
          f"repaired ({cfg.finetune.invalid_transition})", flush=True)
    model = build_classifier(cfg, run_dir_p, resolve_device(cfg.finetune.device, "finetune.device"), checkpoint)
    if match is not None:
        model.checkpoint |= match
    out.mkdir(parents=True, exist_ok=True)
    result, dev_src = train_classifier(model, data, cfg, train_set, regime, out)
    rows = evaluate(model, data, dev_src, cfg.finetune, train_set, regime, run_id, json.dumps(axes, sort_keys=True))
    write_outputs(out, run_id, data, model, result, rows, cfg.finetune, train_set, regime)
    _log_wandb(cfg, run_dir_p, run_id, train_set, regime, result.history, rows, reading)
    return str(out)


def read_data(cfg, train_set: str) -> FinetuneData:
    """Discover the UNER treebanks and read (and cap) the train, dev and test sentences of one job."""
    from metapretrain.data.location import locate_data, resolve
    from metapretrain.data.uner import discover, read_file

    ft = cfg.finetune
    # The root the DAG's first rule checked (and, for the download cache, filled); never downloads here.
    location = locate_data(cfg)
    root = location.root
    fill = ("; the download cache is filled by the DAG's first rule or `metapretrain data fetch <experiment.yaml>`"
            if location.fetchable else "")
    uner_dir = resolve(ft.data_dir, root)
    # `finetune.extra_train` ({treebank: file}, e.g. the unofficial English-EWT train stand-in) is the only
    # way such a file is used.
    extra = {tb: resolve(p, root) for tb, p in ft.extra_train.items()}
    try:
        treebanks = discover(uner_dir, extra_train=extra)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"{exc}{fill}") from None
    with_train = [tb for tb, s in treebanks.items() if "train" in s]
    if train_set == "all":
        sources = with_train
    elif train_set in with_train:
        sources = [train_set]
    else:
        raise ValueError(f"train set {train_set!r} has no train split in {uner_dir}; "
                         f"available: {', '.join(with_train) or 'none'} or 'all'{fill}")
    if not sources:
        raise ValueError(f"{uner_dir}: no treebank has a train split")

    report: dict[str, dict] = {}

    def read(tb: str, split: str):
        sents, rep = read_file(treebanks[tb][split], ft.labels, ft.invalid_transition)
        report[f"{tb}/{split}"] = {"sentences": rep.sentences, "repairs": len(rep.repairs),
                                   "mapped_to_O": dict(rep.mapped_to_o)}
        return sents

    train = _sample([s for tb in sources for s in read(tb, "train")], ft.max_train_sentences,
                    ft.seed_of(cfg.seed))
    dev = _sample([s for tb in sources if "dev" in treebanks[tb] for s in read(tb, "dev")],
                  ft.max_eval_sentences, EVAL_SAMPLE_SEED)
    tests = {tb: _sample(read(tb, "test"), ft.max_eval_sentences, EVAL_SAMPLE_SEED)
             for tb, s in treebanks.items() if "test" in s}
    return FinetuneData(uner_dir, treebanks, sources, extra, train, dev, tests, report)


def checkpoint_reading(match_run: str | Path | None, match_unit: str | None, step: int | None = None) -> str | None:
    """The reading name of a fine-tune from another checkpoint than the final one: matched to a meta run, or
    of a sweep step (None for the final checkpoint); ValueError on half a match or on both."""
    if (match_run is None) != (match_unit is None):
        raise ValueError("a compute-matched fine-tune needs both --match-run and --match-unit")
    if step is not None:
        if match_run is not None:
            raise ValueError("--step and --match-run each pick the checkpoint: give one of them")
        if step < 0:
            raise ValueError(f"--step must be a checkpoint step (>= 0), got {step}")
        from metapretrain.matching import step_reading

        return step_reading(step)
    if match_run is None:
        return None
    from metapretrain.checkpoint import MATCH_UNITS
    from metapretrain.matching import reading_name

    if match_unit not in MATCH_UNITS:
        raise ValueError(f"--match-unit must be one of {', '.join(MATCH_UNITS)}, got {match_unit!r}")
    meta_id, _ = _run_identity(Path(match_run))
    return reading_name(match_unit, meta_id)


def build_classifier(cfg, run_dir: Path, device: torch.device, checkpoint=None) -> Classifier:
    """A TokenClassifier (`finetune.head_type`) on the run's final checkpoint (or `checkpoint`, a
    CheckpointInfo), seeded by the fine-tuning seed."""
    import torch

    from metapretrain.checkpoint import final_checkpoint, load_model
    from metapretrain.data.tokenizer import load_tokenizer
    from metapretrain.finetune.data import WordEncoder, label_names
    from metapretrain.finetune.model import TokenClassifier

    ft = cfg.finetune
    ckpt = checkpoint if checkpoint is not None else final_checkpoint(run_dir)
    backbone = load_model(ckpt, device=device)
    tokenizer = load_tokenizer(paths.tokenizer_file(paths.pretrain_dir(run_dir)))
    names = label_names(ft.labels)
    torch.manual_seed(ft.seed_of(cfg.seed))
    clf = TokenClassifier(backbone, len(names), ft.head_type).to(device)
    counts = {"checkpoint_tokens": ckpt.tokens, "checkpoint_tokens_ntp": ckpt.tokens_ntp,
              "checkpoint_flops": ckpt.flops, "reading": "final"}
    return Classifier(clf, WordEncoder(tokenizer), names, min(ft.max_length, backbone.cfg.max_seq_len), device,
                      ckpt.step, counts)


def train_classifier(model: Classifier, data: FinetuneData, cfg, train_set: str, regime: str, out: Path):
    """Fit on the train sentences with early stopping on dev, resumable through `out/train_state.pt`;
    returns (the fit result, the dev batches or None)."""
    from metapretrain.finetune.train import fit
    from metapretrain.progress import Progress

    ft = cfg.finetune
    train_src = model.source(data.train, ft.batch_size, cache=regime == "head")
    dev_src = model.source(data.dev, ft.batch_size, cache=regime == "head") if data.dev else None
    n_batches = (sum(1 for x in train_src.items if x.starts) + ft.batch_size - 1) // ft.batch_size
    with Progress(f"finetune {train_set}~{regime}", total=ft.epochs * n_batches, unit="batches") as bar:
        result = fit(model.clf, train_src, dev_src, model.names, regime=regime, epochs=ft.epochs,
                     batch_size=ft.batch_size, lr=ft.lr, head_lr=ft.head_lr, weight_decay=ft.weight_decay,
                     patience=ft.patience, seed=ft.seed_of(cfg.seed), state_path=out / STATE_FILE, progress=bar,
                     log_every=ft.log_every)
    return result, dev_src


def evaluate(model: Classifier, data: FinetuneData, dev_src, ft, train_set: str, regime: str, run_id: str,
             method_axes: str) -> list[list]:
    """Score dev (in language) and every test set; returns the rows of results.csv (RESULT_COLUMNS).

    Scores are `finetune.f1_mode` (strict IOB2 or seqeval's default mode); each row carries its eval set's
    `finetune.eval_groups` group. Group members that are not in the data are reported, not an error."""
    from metapretrain.data.uner import absent_members, eval_group
    from metapretrain.finetune.evaluate import score
    from metapretrain.finetune.train import predict

    groups = dict(ft.eval_groups)
    for group, missing in absent_members(groups, data.tests).items():
        print(f"  eval group {group}: not in {data.uner_dir}: {', '.join(missing)}", flush=True)
    trained_on = set(data.sources)
    rows = []
    evals = ([(train_set, "dev", "in_language", dev_src)] if dev_src is not None else [])
    evals += [(tb, "test", eval_kind(tb, data.treebanks[tb], trained_on), None) for tb in data.tests]
    for eval_set, split, kind, src in evals:
        src = src or model.source(data.tests[eval_set], ft.batch_size, cache=regime == "head")
        metrics = score([list(x.gold) for x in src.items], predict(model.clf, src, model.names, ft.batch_size),
                        ft.labels, mode=ft.f1_mode)
        group = eval_group(eval_set, groups)
        for metric, value in metrics.items():
            rows.append([run_id, method_axes, train_set, regime, eval_set, split, kind, metric, value, group,
                         ft.f1_mode])
        if split == "test":
            print(f"  {eval_set:<22} {kind:<13} {group:<12} micro-F1 ({ft.f1_mode}) {metrics['micro_f1']:.4f}",
                  flush=True)
    return rows


def write_outputs(out: Path, run_id: str, data: FinetuneData, model: Classifier, result, rows: list[list], ft,
                  train_set: str, regime: str) -> None:
    """results.csv, history.csv, with `finetune.log_every` curve.csv (CURVE_COLUMNS: the train loss averaged
    over each interval of log_every optimizer steps, the dev micro-F1 at its end), then done.json; the resume
    state is removed once they are written."""
    from metapretrain.io import atomic_write_text, write_done

    atomic_write_text(out / "results.csv", _csv(RESULT_COLUMNS, rows))
    hist_rows = [[h["epoch"], h["train_loss"], h.get("dev_micro_f1", ""), h.get("dev_loss", "")]
                 for h in result.history]
    atomic_write_text(out / "history.csv", _csv(["epoch", "train_loss", "dev_micro_f1", "dev_loss"], hist_rows))
    outputs = ["results.csv", "history.csv"]
    curve = result.curve
    if curve:
        curve_rows = [[c["step"], c["epoch"], c["train_loss"], c.get("dev_micro_f1", "")] for c in curve]
        atomic_write_text(out / "curve.csv", _csv(list(CURVE_COLUMNS), curve_rows))
        outputs.append("curve.csv")
    else:  # a rerun without log_every must not leave an older curve behind
        (out / "curve.csv").unlink(missing_ok=True)
    write_done(out, "finetune", run_id, outputs,
               extra={"unofficial_train": {tb: str(p) for tb, p in data.extra.items() if tb in data.sources},
                      "train_set": train_set, "regime": regime, "checkpoint_step": model.checkpoint_step,
                      **(model.checkpoint or {}),
                      "best_epoch": result.best_epoch, "best_dev_f1": result.best_dev_f1,
                      "log_every": ft.log_every, "head_type": ft.head_type, "f1_mode": ft.f1_mode,
                      "data_dir": str(data.uner_dir),
                      "data": data.report})
    (out / STATE_FILE).unlink(missing_ok=True)  # only needed to resume an unfinished job


def _log_wandb(cfg, run_dir: Path, run_id: str, train_set: str, regime: str, history: list[dict],
               rows: list[list], reading: str | None = None) -> None:
    """Mirror one fine-tuning job to W&B (its own W&B run, grouped by experiment); never raises."""
    from metapretrain.wandb_run import stable_run_id, wandb_mode

    mode = wandb_mode(cfg.wandb.mode)
    if mode == "disabled":
        return
    try:
        import wandb

        from metapretrain.run_record import read_run_record

        rec = read_run_record(run_dir)
        experiment = rec.experiment if rec else None
        stage = stages.finetune(run_dir, train_set, regime, reading)
        name, out = f"{run_id}/{stage.key}", stage.directory
        run = wandb.init(project=cfg.wandb.project, entity=cfg.wandb.entity, id=stable_run_id(experiment, name),
                         name=name, group=experiment, job_type="finetune", resume="allow", mode=mode,
                         dir=os.environ.get("WANDB_DIR") or str(out), config={"finetune": cfg.finetune.to_dict(), "pretrain_run": run_id,
                                               "train_set": train_set, "regime": regime},
                         reinit="finish_previous", settings=wandb.Settings(silent=True, console="off"))
        for h in history:
            run.log({k: v for k, v in h.items() if k != "epoch" and v != ""}, step=h["epoch"])
        run.summary.update({f"{r[5]}/{r[4]}/{r[7]}": r[8] for r in rows})
        run.finish()
    except Exception as exc:  # W&B only mirrors results.csv; a failure must not fail the stage
        print(f"WARNING: W&B logging failed ({type(exc).__name__}: {exc}); results.csv has everything",
              file=sys.stderr, flush=True)


def _csv(header: list[str], rows: list[list]) -> str:
    import io

    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    w.writerows(rows)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="metapretrain finetune", description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", required=True, help="the pretrained run's directory (results/EXP/runs/RUN_ID)")
    p.add_argument("--train-set", required=True, help="treebank directory name with a train split, or 'all'")
    p.add_argument("--regime", required=True, choices=["head", "full"])
    from metapretrain.launch.run import add_threads_option, run_stage

    p.add_argument("--match-run", default=None,
                   help="a meta run's directory: fine-tune from this run's checkpoint matched to its final compute")
    p.add_argument("--match-unit", default=None, choices=["steps", "tokens", "flops"],
                   help="what --match-run is matched on (tokens = next-token tokens)")
    p.add_argument("--step", type=int, default=None,
                   help="fine-tune from the run's checkpoint of this step (a checkpoint sweep) instead of its final one")
    add_threads_option(p, "finetune")
    args = p.parse_args(argv)
    from metapretrain.config import load_run_config

    run_dir = Path(args.run_dir)
    try:
        reading = checkpoint_reading(args.match_run, args.match_unit, args.step)
    except ValueError as exc:
        print(f"metapretrain finetune: error: {exc}", file=sys.stderr)
        return 2
    stage = stages.finetune(run_dir, args.train_set, args.regime, reading)
    if done_is_valid(stage.directory, "finetune"):
        print(f"finetune {stage.variant} of {run_dir}: already done")
        return 0
    cfg_file = paths.resolved_config(run_dir)
    if not cfg_file.is_file():
        print(f"metapretrain finetune: {cfg_file} not found (materialize the run first)", file=sys.stderr)
        return 2
    cfg = load_run_config(cfg_file)
    return run_stage(stage=stage.key, run_dir=run_dir, cfg=cfg,
                     target="metapretrain.finetune.stage:finetune_run",
                     kwargs={"run_dir": str(run_dir.resolve()), "train_set": args.train_set, "regime": args.regime}
                     | ({"match_run": str(Path(args.match_run).resolve()), "match_unit": args.match_unit}
                        if args.match_run else {})
                     | ({"step": args.step} if args.step is not None else {}),
                     threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
