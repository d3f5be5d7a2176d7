# Grid → targets. The experiment file is config/config.yaml unless --configfile
# names another (it replaces, never merges). `--config 'train={lr: 1.0e-3}'` or
# `--config set="train.lr=1e-3 launch.slurm.partition=gpu"` overrides `defaults` keys.
import json
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from metapretrain import matching, paths, stages
from metapretrain.config.overrides import overrides_from_snakemake
from metapretrain.config.yamlpos import PositionedYAML
from metapretrain.grid import load_experiment
from metapretrain.grid_cli import write_grid_file, write_run_files, write_tokenize_config

# Rules call the `metapretrain` CLI of the environment Snakemake runs in, even when that
# environment is not activated (e.g. `.venv/bin/snakemake` from `make demo`). Snakemake's
# strict bash mode stays first, as without a prefix.
shell.prefix(f"set -euo pipefail; export PATH={shlex.quote(str(Path(sys.executable).parent))}:\"$PATH\"; ")

EXPERIMENT_FILE = str(workflow.config_settings.configfiles[-1]) if workflow.config_settings.configfiles else "config/config.yaml"
_overrides, _name = overrides_from_snakemake(dict(workflow.config_settings.config))
DATA_OVERRIDES = json.dumps(_overrides)  # for `metapretrain data fetch` (data.smk), which reloads the grid
EXP = load_experiment(EXPERIMENT_FILE, overrides=_overrides)
if _name:
    EXP.name = _name
# The experiment file is also checked by Snakemake's own validator against the same schema.
validate(PositionedYAML.from_file(EXPERIMENT_FILE).data, "../schemas/experiment.schema.yaml")

RESULTS = str(paths.results_root())
EXP_DIR = str(paths.experiment_dir(EXP.name))
RUNS = {r.run_id: r for r in EXP.runs}
TOKS = EXP.tokenize_configs()
FIGURES_DIR = str(paths.figures_dir(EXP.name))
NER_RESULTS = str(paths.ner_dir(EXP.name) / "results.csv")
GRID_FILE = str(paths.grid_file(EXP.name))
# Every stage instance of every run (metapretrain.stages), and the same stages as wildcard patterns
# for the rules: a rule's output, log and benchmark are its stage's files.
STAGES = [s for r in EXP.runs for s in stages.of_run(EXP.name, r)]
RUN_PATTERN = paths.run_dir(EXP.name, "{run}")
TOKENIZE = stages.tokenize(EXP.name, "{tok}")
PRETRAIN = stages.pretrain(RUN_PATTERN)
FINETUNE = stages.finetune(RUN_PATTERN, "{train_set}", "{regime}")
DYNAMICS = stages.dynamics(RUN_PATTERN)
# Compute-matched fine-tunes (compare.match; metapretrain.matching): a vanilla run read at a meta run's
# final FLOPs (or steps, next-token tokens), planned from the grid's configs before anything has trained.
MATCHED = {(m.vanilla, m.train_set, m.regime, m.reading): m for m in matching.plan(EXP)}
FINETUNE_MATCHED = stages.finetune(RUN_PATTERN, "{train_set}", "{regime}", "matched-{unit}-{tag}")
# A checkpoint sweep (finetune.checkpoints): the run fine-tuned from its own checkpoint of step N.
FINETUNE_STEP = stages.finetune(RUN_PATTERN, "{train_set}", "{regime}", "step-{ckpt_step}")
RUN_CONFIG = str(paths.resolved_config(RUN_PATTERN))


def run_dir(run_id):
    return str(paths.run_dir(EXP.name, run_id))


def tok_dir(tok_id):
    return str(paths.tokenize_dir(EXP.name, tok_id))


def data_marker(part, name):
    """What the data rule (data.smk) leaves once the data of a tokenize id / train set is in place."""
    return ancient(str(paths.data_marker(EXP.name, part, name)))


# A run id is `key~value` parts joined by slashes (or `base`); stage directories never contain
# a tilde, so this cannot swallow a path segment. (An alternation of every id is 2x slower on 1,000 runs.)
wildcard_constraints:
    run=r"base|[^/~]+~[^/~]+(?:/[^/~]+~[^/~]+)*",
    tok=r"[A-Za-z0-9_.-]+-[0-9a-f]{8}",
    regime="head|full",
    train_set="[A-Za-z0-9_.-]+",
    unit="steps|tokens|flops",
    ckpt_step="[0-9]+",
    tag="[0-9a-f]{8}",


def done_targets(kind):
    """The done markers of every stage instance of this kind, run by run."""
    return [str(s.done) for s in STAGES if s.kind == kind]


def matched_targets():
    """The done markers of every compute-matched fine-tune."""
    return [str(m.stage.done) for m in MATCHED.values()]


def matched(w):
    """The planned matched fine-tune a `finetune_matched` job's wildcards name."""
    key = (w.run, w.train_set, w.regime, f"matched-{w.unit}-{w.tag}")
    if key not in MATCHED:
        raise ValueError(f"no compute-matched fine-tune {key} in the plan of {EXPERIMENT_FILE} (compare.match)")
    return MATCHED[key]


def all_targets():
    targets = done_targets("pretrain") + done_targets("finetune") + matched_targets() + done_targets("dynamics")
    if done_targets("finetune"):
        targets.append(NER_RESULTS)
    targets.append(f"{FIGURES_DIR}/index.json")
    return targets


def stage_threads(run_id, stage):
    """A compute rule's `threads:` (launch.threads.<stage>): by default every --cores locally, so local
    compute jobs run one at a time and their wall times compare; 1 under SLURM, where the rule only waits."""
    launch = RUNS[run_id].config["launch"]
    if launch["threads"][stage] is not None:
        return launch["threads"][stage]
    return 1 if launch["launcher"] == "slurm" else workflow.cores


def write_log(path, text):
    """The one-line log of a rule that runs in the driver."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(f"{text}\n")


def figure_group(group, caption, category):
    """A figures subdirectory as a report item: every PNG in it, captioned by workflow/report/<caption>."""
    return report(directory(f"{FIGURES_DIR}/{group}"), patterns=["{figure}.png"], caption=f"../report/{caption}",
                  category=category, labels={"figure": "{figure}"})
