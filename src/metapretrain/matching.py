"""Compute-matched readings: a vanilla run read at the point where a meta run's budget ran out.

"Under equal compute" is a comparison of two checkpoints: the meta run's final one and the vanilla
run's checkpoint at the meta run's final count of some unit (`steps`, `tokens` = next-token tokens,
`flops`). A meta run that spends part of its updates on episodes uses fewer FLOPs per step than it
would as vanilla (the demo's step-matched FOMAML run used 70% of vanilla's FLOPs), so the vanilla
run's final checkpoint had more compute than the meta run; the matched checkpoint did not.

**Rule.** For a meta run R, a vanilla run V that could be its baseline (`Design.candidates` of
metapretrain.figures.pairing: same facet values, same replicate values, any value of the experiment's
tuning axes, restricted to declared baselines) and each unit U of the experiment's `compare.match`,
V is fine-tuned on each train set × regime that R is fine-tuned on, from V's **last checkpoint whose
count of U is at or before R's final count of U** (`checkpoint.at_or_before`; never one beyond, so
vanilla never gets more compute than the meta run). How close that lands depends on how densely V
wrote checkpoints (`train.checkpoint_every`): the fine-tune's `done.json` records the target, the
count actually read and their ratio, and the NER tables carry them.

The reading's stage is V's `finetune/<train set>~<regime>~matched-<U>-<tag>`, `tag` the first 8 hex
digits of the SHA-256 of R's run id (run ids hold `/` and `~`); its `done.json` names R in full.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metapretrain import paths, stages

if TYPE_CHECKING:
    from metapretrain.checkpoint import CheckpointInfo
    from metapretrain.grid import Experiment

READING_PREFIX = "matched-"
STEP_PREFIX = "step-"


def step_reading(step: int) -> str:
    """`step-<N>`: the reading of a fine-tune from the run's own checkpoint of step N (a checkpoint sweep)."""
    return f"{STEP_PREFIX}{int(step)}"


def reading_step(reading: str) -> int | None:
    """N of `step-<N>`; None for any other reading."""
    if reading.startswith(STEP_PREFIX) and reading[len(STEP_PREFIX):].isdigit():
        return int(reading[len(STEP_PREFIX):])
    return None


def scheduled_steps(cfg) -> set[int]:
    """The checkpoint steps a run (RunConfig) is planned to write, its planned final step included. Exact for a
    steps budget; for a token or FLOP budget the final step is the expected one (`train.schedule`)."""
    from metapretrain.cost import processes, update_cost
    from metapretrain.train.loop import checkpoint_steps
    from metapretrain.train.schedule import planned_updates

    model_cfg = cfg.model.resolved(tokenizer_vocab=cfg.tokenizer.vocab_size)
    updates = planned_updates(cfg.train, update_cost(cfg, model_cfg, processes(cfg)))
    return checkpoint_steps(cfg.train, updates) | {updates}


def sweep_steps(cfg) -> list[int]:
    """The checkpoint steps `finetune.checkpoints` asks to fine-tune from, the planned final step left out (the
    `final` reading covers it); [] for `final`."""
    spec = cfg.finetune.checkpoints
    if spec == "final" or not cfg.finetune.enabled:
        return []
    planned = scheduled_steps(cfg)
    final = max(planned)
    if spec == "all":
        steps = planned
    elif isinstance(spec, dict):
        steps = {s for s in planned if s % int(spec["every"]) == 0}
    else:
        steps = set(spec)
    return sorted(s for s in steps if s != final)


def reading_name(unit: str, meta_run_id: str) -> str:
    """`matched-<unit>-<8 hex digits of sha256(meta run id)>`: the reading's part of the stage directory."""
    return f"{READING_PREFIX}{unit}-{hashlib.sha256(meta_run_id.encode()).hexdigest()[:8]}"


def reading_unit(reading: str) -> str:
    """`flops` of `matched-flops-1a2b3c4d`; ValueError for a name that is not a matched reading."""
    unit, sep, tag = reading.removeprefix(READING_PREFIX).partition("-")
    if not reading.startswith(READING_PREFIX) or not sep or len(tag) != 8:
        raise ValueError(f"{reading!r} is not a matched reading (expected matched-<unit>-<8 hex digits>)")
    return unit


@dataclass(frozen=True)
class MatchedFinetune:
    """One compute-matched fine-tune: vanilla run `vanilla` read at meta run `meta`'s final count of `unit`."""

    experiment: str
    vanilla: str
    meta: str
    unit: str
    train_set: str
    regime: str

    @property
    def reading(self) -> str:
        return reading_name(self.unit, self.meta)

    @property
    def stage(self) -> stages.Stage:
        return stages.finetune(paths.run_dir(self.experiment, self.vanilla), self.train_set, self.regime,
                               self.reading)

    @property
    def meta_dir(self) -> Path:
        return paths.run_dir(self.experiment, self.meta)


def plan(exp: Experiment) -> list[MatchedFinetune]:
    """Every compute-matched fine-tune the experiment asks for (`compare.match`), known before any run has
    trained: the candidates come from the grid's configs alone."""
    from metapretrain.figures.load import RunData
    from metapretrain.figures.pairing import design

    units = list(exp.compare.get("match") or [])
    if not units:
        return []
    runs = [RunData(r.run_id, dict(r.axes), r.config, paths.run_dir(exp.name, r.run_id)) for r in exp.runs]
    d = design(runs, exp.axes, exp.replicates, compare=exp.compare)
    by_id = {r.run_id: r for r in exp.runs}
    out = []
    for meta_id in sorted(d.candidates):
        ft_meta = by_id[meta_id].config["finetune"]
        if not ft_meta["enabled"]:
            continue
        for vanilla_id in d.candidates[meta_id]:
            ft_v = by_id[vanilla_id].config["finetune"]
            if not ft_v["enabled"]:
                continue
            for unit in units:
                for ts in ft_meta["train_sets"]:
                    for regime in ft_meta["regimes"]:
                        if ts in ft_v["train_sets"] and regime in ft_v["regimes"]:
                            out.append(MatchedFinetune(exp.name, vanilla_id, meta_id, unit, ts, regime))
    return out


def stages_by_run(exp: Experiment) -> dict[str, list[stages.Stage]]:
    """Run id -> the matched fine-tune stages of that (vanilla) run, for `status` and `doctor`."""
    out: dict[str, list[stages.Stage]] = {}
    for m in plan(exp):
        out.setdefault(m.vanilla, []).append(m.stage)
    return out


def meta_target(meta_dir: str | Path, unit: str) -> tuple[float, CheckpointInfo]:
    """(the meta run's final count of `unit`, its final checkpoint); CheckpointError when unfinished or unrecorded."""
    from metapretrain.checkpoint import CheckpointError, final_checkpoint

    final = final_checkpoint(meta_dir)
    value = final.count(unit)
    if value is None:
        raise CheckpointError(f"{final.path}: its manifest does not record {unit} (written before checkpoints "
                              "recorded next-token tokens as tokens_ntp); match on steps or flops")
    return float(value), final


def matched_checkpoint(vanilla_dir: str | Path, meta_dir: str | Path, unit: str) -> tuple[CheckpointInfo, dict]:
    """The vanilla checkpoint a matched reading fine-tunes from, and what to record about the match."""
    from metapretrain.checkpoint import at_or_before
    from metapretrain.run_record import read_run_record

    target, meta_final = meta_target(meta_dir, unit)
    info = at_or_before(vanilla_dir, unit, target)
    rec = read_run_record(Path(meta_dir))
    actual = float(info.count(unit))
    return info, {
        "reading": reading_name(unit, rec.run_id if rec and rec.run_id else Path(meta_dir).name),
        "matched_to": rec.run_id if rec and rec.run_id else str(meta_dir),
        "match_unit": unit,
        "match_target": target,
        "match_actual": actual,
        "match_ratio": actual / target if target else None,
        "meta_final_step": meta_final.step,
        "rule": f"last vanilla checkpoint with {unit} <= the meta run's final {unit} (never beyond)",
    }
