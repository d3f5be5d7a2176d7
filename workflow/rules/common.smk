# Grid → targets. The experiment file is config/config.yaml unless --configfile
# names another (it replaces, never merges). `--config 'train={lr: 1.0e-3}'` or
# `--config set="train.lr=1e-3 launch.slurm.partition=gpu"` overrides `defaults` keys.
import json
import os
import sys
from pathlib import Path

import yaml
from snakemake.utils import validate

from metapretrain import paths
from metapretrain.grid import load_experiment, overrides_from_snakemake
from metapretrain.grid_cli import write_run_files, write_tokenize_config

# Rules call the `metapretrain` CLI of the environment Snakemake runs in, even when that
# environment is not activated (e.g. `.venv/bin/snakemake` from `make demo`).
os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"

EXPERIMENT_FILE = str(workflow.config_settings.configfiles[-1]) if workflow.config_settings.configfiles else "config/config.yaml"
_overrides, _name = overrides_from_snakemake(dict(workflow.config_settings.config))
DATA_OVERRIDES = json.dumps(_overrides)  # for `metapretrain data fetch` (data.smk), which reloads the grid
EXP = load_experiment(EXPERIMENT_FILE, overrides=_overrides)
if _name:
    EXP.name = _name
# The experiment file is also checked by Snakemake's own validator against the same schema.
validate(yaml.safe_load(Path(EXPERIMENT_FILE).read_text()), "../schemas/experiment.schema.yaml")

RESULTS = str(paths.results_root())
EXP_DIR = str(paths.experiment_dir(EXP.name))
RUNS = {r.run_id: r for r in EXP.runs}
TOKS = EXP.tokenize_configs()


def run_dir(run_id):
    return str(paths.run_dir(EXP.name, run_id))


def tok_dir(tok_id):
    return str(paths.tokenize_dir(EXP.name, tok_id))


def data_marker(part, name):
    """What the data rule (data.smk) leaves once the data of a tokenize id / train set is in place."""
    return ancient(f"{EXP_DIR}/data/{part}/{name}.json")


# A run id is `key~value` parts joined by '/' (or `base`); stage directories never contain '~',
# so this cannot swallow a path segment. (An alternation of every id is 2x slower on 1,000 runs.)
wildcard_constraints:
    run=r"base|[^/~]+~[^/~]+(?:/[^/~]+~[^/~]+)*",
    tok=r"[A-Za-z0-9_.-]+-[0-9a-f]{8}",
    regime="head|full",
    train_set="[A-Za-z0-9_.-]+",


def finetune_jobs(run):
    ft = run.config["finetune"]
    if not ft["enabled"]:
        return []
    return [(ts, reg) for ts in ft["train_sets"] for reg in ft["regimes"]]


def finetune_targets():
    return [f"{run_dir(r.run_id)}/finetune/{ts}~{reg}/done.json" for r in EXP.runs for ts, reg in finetune_jobs(r)]


def dynamics_targets():
    return [f"{run_dir(r.run_id)}/dynamics/done.json" for r in EXP.runs if r.config["dynamics"]["enabled"]]


def all_targets():
    targets = [f"{run_dir(r.run_id)}/pretrain/done.json" for r in EXP.runs]
    targets += finetune_targets() + dynamics_targets()
    if finetune_targets():
        targets.append(f"{EXP_DIR}/ner/results.csv")
    targets.append(f"{EXP_DIR}/figures/index.json")
    return targets


rule grid:
    output:
        f"{EXP_DIR}/grid.yaml",
    params:
        runs=lambda w: {r.run_id: r.hash for r in EXP.runs},
    localrule: True
    run:
        from metapretrain.io import atomic_write_text

        atomic_write_text(output[0], yaml.safe_dump({"experiment": EXP.name, "file": EXPERIMENT_FILE,
                                                     "axes": EXP.axes, "runs": [{"run_id": r.run_id, "axes": r.axes,
                                                     "hash": r.hash} for r in EXP.runs]}, sort_keys=False))


rule run_config:
    output:
        f"{EXP_DIR}/runs/{{run}}/config.resolved.yaml",
    params:
        hash=lambda w: RUNS[w.run].hash,
    localrule: True
    run:
        write_run_files(EXP.name, RUNS[wildcards.run])


rule tokenize_config:
    output:
        f"{EXP_DIR}/tokenize/{{tok}}.yaml",
    params:
        # Not the data section: where the data lives is not what a tokenization is (its id has the content).
        cfg=lambda w: {k: v for k, v in TOKS[w.tok].items() if k != "data"},
    localrule: True
    run:
        write_tokenize_config(EXP, wildcards.tok, output[0])
