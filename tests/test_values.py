"""YAML 1.2 numbers (`lr: 1e-3`) read as floats on every config path: files, `--set`, Snakemake `--config`."""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from metapretrain.config.errors import ConfigError
from metapretrain.config.values import coerce_strings, load_yaml, parse_value
from metapretrain.config.yamlpos import PositionedYAML

REPO = Path(__file__).resolve().parents[1]
SNAKEMAKE = shutil.which("snakemake", path=str(Path(sys.executable).parent)) or "snakemake"

# (YAML text, value): YAML 1.2 floats become floats; ints, dates, booleans and strings stay as PyYAML reads them.
SCALARS = [
    ("1e-3", 0.001), ("1E5", 100000.0), (".5e-2", 0.005), ("1e3", 1000.0), ("-1e-3", -0.001), ("+1e3", 1000.0),
    ("1.0e12", 1e12), ("1.e3", 1000.0), ("1.0e+12", 1e12), ("-.5", -0.5), ("+.5", 0.5), ("0e0", 0.0),
    ("3.0e-4", 3e-4), ("1.5", 1.5), (".inf", math.inf), ("-.inf", -math.inf),
    ("10", 10), ("1_000", 1000), ("0x10", 16), ("-7", -7), ("1:30", 90),
    ("true", True), ("no", False), ("~", None), ("", None), ("2024-01-01", datetime.date(2024, 1, 1)),
    ("1e", "1e"), ("e3", "e3"), ("1e3x", "1e3x"), ("1e-3e", "1e-3e"), ("1.2.3", "1.2.3"), ("'1e-3'", "1e-3"),
    ('"1e3"', "1e3"), ("gpu", "gpu"), ("a1e3", "a1e3"),
]


@pytest.mark.parametrize(("text", "value"), SCALARS, ids=[t or "empty" for t, _ in SCALARS])
def test_scalars_read_as_yaml_1_2_numbers(text, value):
    got = load_yaml(text)
    assert got == value and type(got) is type(value), (text, got)
    assert parse_value(text) == value and type(parse_value(text)) is type(value)


def test_nan_and_pyyaml_left_as_it_is():
    assert math.isnan(load_yaml(".nan"))
    assert yaml.safe_load("1e-3") == "1e-3"  # the global SafeLoader is not changed for other libraries


def test_positioned_yaml_data_and_lines_share_the_loader():
    doc = PositionedYAML("train:\n  lr: 1e-3\n  budget: {unit: flops, value: 1e12}\nmeta:\n  inner: {lr: 5E-2}\n")
    assert doc.data == {"train": {"lr": 0.001, "budget": {"unit": "flops", "value": 1e12}}, "meta": {"inner": {"lr": 0.05}}}
    assert doc.line(("train", "lr")) == 2 and doc.line(("meta", "inner", "lr")) == 5


def test_experiment_file_resolves_1e_minus_3(tmp_path):
    from metapretrain.grid import load_experiment

    f = tmp_path / "e.yaml"
    f.write_text("experiment: num\ndefaults:\n  train: {lr: 1e-3, budget: {unit: flops, value: 2e12}}\n"
                 "grid:\n  meta.inner.lr: [1e-2, 5e-3]\n")
    exp = load_experiment(f)
    assert [r.config["train"]["lr"] for r in exp.runs] == [0.001, 0.001]
    assert exp.runs[0].config["train"]["budget"]["value"] == 2e12
    assert sorted(r.config["meta"]["inner"]["lr"] for r in exp.runs) == [0.005, 0.01]
    assert sorted(r.run_id for r in exp.runs) == ["meta.inner.lr~0.005", "meta.inner.lr~0.01"]


def test_snakemake_strings_get_config_file_types():
    # What Snakemake's base loader hands over for `--config 'train={lr: 1e-3, x: [1, true]}'`.
    assert coerce_strings({"lr": "1e-3", "x": ["1", "true"], "n": 3}) == {"lr": 0.001, "x": [1, True], "n": 3}
    from metapretrain.config.overrides import overrides_from_snakemake

    over, name = overrides_from_snakemake({"train": {"lr": "1e-3", "budget": {"value": "1E6"}},
                                           "set": "meta.inner.lr=5e-3 seed=7 launch.slurm.partition=gpu",
                                           "experiment": "x"})
    assert over == {"train.lr": 0.001, "train.budget.value": 1e6, "meta.inner.lr": 0.005, "seed": 7,
                    "launch.slurm.partition": "gpu"}
    assert name == "x"


def test_bad_command_line_value_names_the_argument():
    from metapretrain.config.overrides import parse_sets

    assert parse_sets(["train.lr=1e-3", "seed=3"]) == {"train.lr": 0.001, "seed": 3}
    with pytest.raises(ConfigError, match=r"--set train.lr: '\[1,' is not a valid YAML value"):
        parse_sets(["train.lr=[1,"])


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "METAPRETRAIN_RESULTS"}
    return subprocess.run([sys.executable, "-m", "metapretrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=env)


EXP = "experiment: num\ndefaults: {finetune: {enabled: false}, dynamics: {enabled: false}}\n"


def test_grid_cli_set_resolves_1e_minus_3(tmp_path):
    from metapretrain.grid import load_experiment

    f = tmp_path / "e.yaml"
    f.write_text(EXP)
    proc = _cli(["grid", "show", str(f), "--json", "--set", "train.lr=1e-3", "--set", "meta.inner.lr=2E-2"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    want = load_experiment(f, overrides={"train.lr": 0.001, "meta.inner.lr": 0.02}).runs[0].hash
    assert json.loads(proc.stdout)["runs"][0]["hash"] == want
    proc = _cli(["grid", "materialize", str(f), "--run", "base", "--out", str(tmp_path / "run"),
                 "--set", "train.lr=1e-3"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert load_yaml((tmp_path / "run" / "config.resolved.yaml").read_text())["train"]["lr"] == 0.001
    proc = _cli(["grid", "show", str(f), "--set", "train.lr=[1,"], tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "metapretrain grid: error: --set train.lr: '[1,' is not a valid YAML value" in proc.stderr


@pytest.mark.parametrize("config", [["set=train.lr=1e-3"], ["train={lr: 1e-3}"], ["set=seed=1 train.lr=1e-3"], []],
                         ids=["set", "section-mapping", "set-two-items", "experiment-file"])
def test_snakemake_config_resolves_1e_minus_3(tmp_path, config):
    """Each --config form, and the experiment file itself (which the workflow also checks with Snakemake's own
    validator), is accepted by a dry run and writes lr 0.001 into the run config (the one localrule that writes
    it is run for real: a dry run writes nothing to look at)."""
    (tmp_path / "e.yaml").write_text(EXP.replace("finetune:", "train: {lr: 1e-3}, finetune:") if not config else EXP)
    base = [SNAKEMAKE, "-s", str(REPO / "Snakefile"), "-d", str(tmp_path), "--configfile", str(tmp_path / "e.yaml")]
    base += ["--config", *config] if config else []
    env = {k: v for k, v in os.environ.items() if k != "METAPRETRAIN_RESULTS"}
    dry = subprocess.run([*base, "-n"], capture_output=True, text=True, timeout=300, env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    target = "results/num/runs/base/config.resolved.yaml"
    proc = subprocess.run([*base, "--cores", "1", target], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert load_yaml((tmp_path / target).read_text())["train"]["lr"] == 0.001
