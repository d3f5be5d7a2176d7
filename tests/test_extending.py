"""Extending from outside the package: the toy learner and metric of tests/plugins/toy_extension.py run
through a real Snakemake DAG (tokenize, pretrain, dynamics, figures) with no edit to metapretrain, and
docs/extending.md shows exactly that file."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PLUGIN_DIR = REPO / "tests" / "plugins"
PLUGIN = PLUGIN_DIR / "toy_extension.py"
NAMES = ("toy_random_window", "embedding_row_norm", "toy_extension")

EXPERIMENT = {
    "experiment": "toy",
    "defaults": {
        "corpus": {"name": "synth", "sources": [{"type": "files", "paths": ["corpus/*.txt"]}],
                   "validation_fraction": 0.1},
        "tokenizer": {"vocab_size": 128},
        "model": {"preset": "micro", "d_model": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 64,
                  "max_seq_len": 64},
        "train": {"budget": {"unit": "steps", "value": 12}, "batch_size": 2, "seq_len": 16, "lr": 3e-3,
                  "warmup_steps": 2, "eval_every": 4, "eval_batches": 2, "log_every": 1,
                  "checkpoint": {"every": 4, "log_spaced": 2, "export_hf": "none"}},
        "meta": {"learner": "toy_random_window", "hybrid_ratio": 0.5},
        "finetune": {"enabled": False},
        "dynamics": {"metrics": ["embedding_row_norm", "weight_norm"]},
        "launch": {"launcher": "debug"},
        "wandb": {"mode": "disabled"},
    },
    "grid": {"seed": [1]},
}


@pytest.fixture
def toy_experiment(tmp_path) -> Path:
    """The experiment file, and a small word corpus under its data root."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "house", "big", "red", "and", "saw", "it"]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus" / "synth.txt").write_text(
        "\n".join(" ".join(rng.choice(words, size=rng.integers(5, 15))) for _ in range(1500)) + "\n")
    exp = json.loads(json.dumps(EXPERIMENT))
    exp["defaults"]["data"] = {"root": str(tmp_path)}
    path = tmp_path / "toy.yaml"
    path.write_text(yaml.safe_dump(exp, sort_keys=False))
    return path


def _env(tmp_path: Path, plugins: str | None = "toy_extension") -> dict:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(PLUGIN_DIR)]), OMP_NUM_THREADS="1",
               METAPRETRAIN_RESULTS=str(tmp_path / "results"))
    env.pop("METAPRETRAIN_PLUGINS", None)
    if plugins is not None:
        env["METAPRETRAIN_PLUGINS"] = plugins
    return env


def _cli(args: list[str], env: dict, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "metapretrain", *args], env=env, cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_the_package_does_not_know_the_toy_extension():
    hits = [f"{f.relative_to(REPO)}:{n}" for f in sorted((REPO / "src").rglob("*"))
            if f.is_file() and f.suffix in (".py", ".yaml", ".smk")
            for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1) if any(k in line for k in NAMES)]
    assert hits == []


def test_a_plugin_learner_is_valid_only_with_its_plugin_loaded(toy_experiment):
    tmp = toy_experiment.parent
    without = _cli(["grid", "validate", str(toy_experiment)], _env(tmp, plugins=None), tmp)
    assert without.returncode == 2
    assert "defaults.meta.learner: got 'toy_random_window'" in without.stderr
    assert "METAPRETRAIN_PLUGINS" in without.stderr and "Traceback" not in without.stderr
    with_plugin = _cli(["grid", "validate", str(toy_experiment)], _env(tmp), tmp)
    assert with_plugin.returncode == 0, with_plugin.stderr
    missing = _cli(["grid", "validate", str(toy_experiment)], _env(tmp, plugins="toy_extension, no_such_plugin"), tmp)
    assert missing.returncode == 2 and "Traceback" not in missing.stderr
    assert "METAPRETRAIN_PLUGINS: plugin module 'no_such_plugin' cannot be imported" in missing.stderr


@pytest.mark.slow
def test_a_toy_learner_and_metric_run_through_pretrain_and_dynamics(toy_experiment):
    from metapretrain import checkpoint as ckpt
    from metapretrain import paths
    from metapretrain.metrics_log import read_records

    tmp = toy_experiment.parent
    proc = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(tmp),
                           "--configfile", str(toy_experiment), "--cores", "1", "-q"],
                          env=_env(tmp), cwd=tmp, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    run = tmp / "results" / "toy" / "runs" / "seed~1"

    train = [r for r in read_records(paths.metrics_file(run)) if r["kind"] == "train"]
    assert train[-1]["step"] == 12
    assert sum(r["n_meta"] for r in train) > 0 and sum(r["n_next_token"] for r in train) > 0
    starts = [r["meta/mean_start"] for r in train if "meta/mean_start" in r]  # the toy step's own metric
    assert starts and len(set(starts)) > 1

    with open(paths.dynamics_dir(run) / "dynamics.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["metric"] == "mean_row_norm"]
    steps = [c.step for c in ckpt.list_checkpoints(run)]
    assert sorted(int(r["step"]) for r in rows) == steps
    for r in rows:  # the metric's value, recomputed by hand from the checkpoint's weights
        w = ckpt.load_tensors(ckpt.at_step(run, int(r["step"])).path)["embed.weight"].double()
        assert float(r["value"]) == pytest.approx(float(w.norm(dim=1).mean()), rel=1e-12)
    assert (paths.figures_dir("toy", tmp / "results")).is_dir()


def test_docs_extending_shows_the_plugin_that_the_tests_run():
    doc = (REPO / "docs" / "extending.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert PLUGIN.read_text(encoding="utf-8") in blocks, "docs/extending.md must quote tests/plugins/toy_extension.py whole"


def test_an_installed_package_registers_through_its_entry_point(tmp_path):
    """A package's `metapretrain.plugins` entry point is loaded without METAPRETRAIN_PLUGINS."""
    (tmp_path / "mylab_metrics.py").write_text(
        "from metapretrain.dynamics.registry import Row, register_metric\n\n"
        "@register_metric('mylab_zero')\n"
        "def zero(ctx):\n    return [Row(None, 'model', None, 'zero', 0.0)]\n")
    dist = tmp_path / "mylab-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mylab\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[metapretrain.plugins]\nmylab = mylab_metrics\n")
    env = _env(tmp_path, plugins=None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(tmp_path)])
    code = ("from metapretrain.dynamics.registry import known_metrics\n"
            "print(sorted(known_metrics()))")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "'mylab_zero'" in out.stdout and "'weight_norm'" in out.stdout
    (dist / "entry_points.txt").write_text("[metapretrain.plugins]\nmylab = mylab_missing\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "plugin module 'mylab_missing' cannot be imported" in out.stderr
    assert "entry point 'mylab' (metapretrain.plugins)" in out.stderr
