"""A run's stages, one object per stage instance, with every name and file it has.

A run has a tokenize stage (the experiment's tokenize output it reads, shared with the other runs
of that tokenize id), a pretrain stage, one finetune stage per `<train set>~<regime>` when finetune
is enabled, and a dynamics stage when dynamics is. Each `Stage` spells itself two ways:

* `name`, unique within its run, as `metapretrain status` and `doctor` show it: `pretrain`,
  `finetune:Danish-DDT~head` (a compute-matched reading adds `~matched-flops-<tag>`);
* `key`, unique within its home directory, a relative path: `finetune/Danish-DDT~head`,
  `tokenize/<tok id>`. It names the stage's log (`<home>/logs/<key>.log`), its benchmark, the
  launcher's job record and submitit folder, and ends its SLURM job name (`<experiment>/<run>:<key>`).

The home directory is the run's, or the experiment's for tokenize. The Snakemake rules, `status`,
`doctor` and the launcher all take these from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from metapretrain import paths

if TYPE_CHECKING:
    from metapretrain.grid import Run

KINDS = ("tokenize", "pretrain", "finetune", "dynamics")
# The kinds a compute job runs through the launcher (launch/run.py): the stages of one run directory.
LAUNCHED = ("pretrain", "finetune", "dynamics")


@dataclass(frozen=True)
class Stage:
    kind: str
    variant: str | None  # finetune: `<train set>~<regime>[~<reading>]`; tokenize: the tokenize id; else None
    home: Path  # holds logs/ and benchmarks/
    directory: Path  # its outputs and its done marker

    @property
    def name(self) -> str:
        # A run reads one tokenize output, so its tokenize id need not tell its stages apart.
        return f"{self.kind}:{self.variant}" if self.kind == "finetune" else self.kind

    @property
    def key(self) -> str:
        return self.kind if self.variant is None else f"{self.kind}/{self.variant}"

    @property
    def done(self) -> Path:
        return paths.done_file(self.directory)

    @property
    def log(self) -> Path:
        return paths.log_file(self.home, self.key)

    @property
    def benchmark(self) -> Path:
        return paths.benchmark_file(self.home, self.key)

    @property
    def job_record(self) -> Path:
        return paths.job_record_file(self.home, self.key)

    @property
    def submitit_dir(self) -> Path:
        return paths.submitit_dir(self.home, self.key)


def tokenize(experiment: str, tok_id: str) -> Stage:
    return Stage("tokenize", tok_id, paths.experiment_dir(experiment), paths.tokenize_dir(experiment, tok_id))


def pretrain(run_dir: str | Path) -> Stage:
    return Stage("pretrain", None, Path(run_dir), paths.pretrain_dir(run_dir))


def finetune(run_dir: str | Path, train_set: str, regime: str, reading: str | None = None) -> Stage:
    """A finetune stage: from the final checkpoint, or with `reading` (`matched-<unit>-<tag>`) from the
    checkpoint matched to a meta run's compute (metapretrain.matching)."""
    directory = paths.finetune_dir(run_dir, train_set, regime, reading)
    return Stage("finetune", directory.name, Path(run_dir), directory)


def dynamics(run_dir: str | Path) -> Stage:
    return Stage("dynamics", None, Path(run_dir), paths.dynamics_dir(run_dir))


def kind_of(key: str) -> str:
    """The kind of a launched stage's key (`finetune/Danish-DDT~head` -> `finetune`); ValueError if none."""
    kind = key.split("/", 1)[0]
    if kind not in LAUNCHED:
        raise ValueError(f"unknown stage {key!r}: expected one of {', '.join(LAUNCHED)} "
                         "(finetune as finetune/<train set>~<regime>)")
    return kind


def launched(key: str, run_dir: str | Path) -> Stage:
    """The stage of `run_dir` a launcher key names: `pretrain`, `dynamics` or `finetune/<train set>~<regime>`."""
    kind = kind_of(key)
    if kind == "finetune":
        parts = key.removeprefix("finetune/").split("~")
        if len(parts) not in (2, 3) or not all(parts) or "/" in parts[0]:
            raise ValueError(f"stage {key!r}: expected finetune/<train set>~<regime>[~<reading>]")
        return finetune(run_dir, *parts)
    if key != kind:
        raise ValueError(f"stage {key!r}: {kind} has no variant")
    return pretrain(run_dir) if kind == "pretrain" else dynamics(run_dir)


def of_run(experiment: str, run: Run) -> list[Stage]:
    """The stages of one grid run, in the order the DAG runs them."""
    rd = paths.run_dir(experiment, run.run_id)
    out = [tokenize(experiment, run.tok_id), pretrain(rd)]
    ft = run.config["finetune"]
    if ft["enabled"]:
        sweep = []  # finetune.checkpoints: one more stage per earlier checkpoint
        if ft.get("checkpoints", "final") != "final":
            from metapretrain.config.types import RunConfig
            from metapretrain.matching import step_reading, sweep_steps

            sweep = [step_reading(s) for s in sweep_steps(RunConfig.from_dict(run.config))]
        for ts in ft["train_sets"]:
            for regime in ft["regimes"]:
                out.append(finetune(rd, ts, regime))
                out += [finetune(rd, ts, regime, reading) for reading in sweep]
    if run.config["dynamics"]["enabled"]:
        out.append(dynamics(rd))
    return out
