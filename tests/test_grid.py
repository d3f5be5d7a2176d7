"""Grid expansion: axes, bundles, zip groups, exclude/include, dedupe, stable ids, diff."""

from __future__ import annotations

import json
import textwrap

import pytest

from metapretrain.cli import main as cli
from metapretrain.config import ConfigError
from metapretrain.grid import load_experiment


def exp(tmp_path, text, name="e.yaml"):
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return load_experiment(p)


BASE = """
experiment: t
grid:
  method:
    vanilla: {meta.learner: none}
    fomaml: {meta: {learner: fomaml, episode: {n_way: 8}}}
  train.lr: [0.001, 0.0003]
  seed: [1, 2]
"""


def test_cross_product_and_named_bundles(tmp_path):
    e = exp(tmp_path, BASE)
    assert len(e.runs) == 8
    ids = {r.run_id for r in e.runs}
    assert "method~fomaml/seed~2/train.lr~0.0003" in ids
    r = e.run("method~fomaml/seed~1/train.lr~0.001")
    assert r.config["meta"]["learner"] == "fomaml" and r.config["meta"]["episode"]["n_way"] == 8
    assert r.config["meta"]["episode"]["k_shot"] == 4  # untouched sibling keeps its default
    assert r.config["train"]["lr"] == 0.001 and r.config["seed"] == 1
    assert e.run("method~vanilla/seed~1/train.lr~0.001").config["meta"]["learner"] == "none"


def test_ids_and_hashes_stable_under_key_reordering(tmp_path):
    a = exp(tmp_path, BASE, "a.yaml")
    b = exp(tmp_path, """
    grid:
      seed: [1, 2]
      train.lr: [0.001, 0.0003]
      method:
        fomaml: {meta: {episode: {n_way: 8}, learner: fomaml}}
        vanilla: {meta.learner: none}
    experiment: t
    """, "b.yaml")
    assert {(r.run_id, r.hash) for r in a.runs} == {(r.run_id, r.hash) for r in b.runs}


def test_exclude_and_include(tmp_path):
    e = exp(tmp_path, BASE + """
exclude:
  - {method: vanilla, seed: 2}
  - {train.lr: [0.0003], method: fomaml}
include:
  - {method: fomaml, seed: 3}
  - {method: vanilla, seed: 1, train.lr: 0.01}
""")
    ids = [r.run_id for r in e.runs]
    assert "method~vanilla/seed~2/train.lr~0.001" not in ids
    assert not any(i.startswith("method~fomaml") and "0.0003" in i for i in ids)
    assert "method~fomaml/seed~3" in ids
    assert "method~vanilla/seed~1/train.lr~0.01" in ids
    assert len(ids) == 8 - 2 - 2 + 2
    extra = e.run("method~fomaml/seed~3")
    assert extra.source == "include" and extra.config["seed"] == 3 and extra.config["train"]["lr"] == 1e-3


def test_identical_resolved_configs_collapse(tmp_path):
    e = exp(tmp_path, """
    experiment: t
    defaults: {train: {lr: 0.001}}
    grid:
      train.lr: [0.001, 0.002]
    include:
      - {train.lr: 0.002}
      - {seed: 42}
    """)
    # the include {train.lr: 0.002} is the grid point itself; {seed: 42} equals the default seed, so it is the same
    # config as train.lr~0.001 and collapses into it.
    assert [r.run_id for r in e.runs] == ["train.lr~0.001", "train.lr~0.002"]
    assert ("seed~42", "train.lr~0.001") in e.collapsed


def test_launch_and_wandb_do_not_change_identity(tmp_path):
    a = exp(tmp_path, "experiment: t\ndefaults: {launch: {launcher: slurm}, wandb: {mode: disabled}}\n", "a.yaml")
    b = exp(tmp_path, "experiment: t\n", "b.yaml")
    assert a.runs[0].hash == b.runs[0].hash


def test_zip_axes_expand_as_pairs(tmp_path):
    e = exp(tmp_path, """
    experiment: t
    zip:
      size:
        model.preset: [micro, mini]
        train.lr: [0.003, 0.001]
        train.batch_size: [8, 4]
    grid:
      seed: [1, 2]
    """)
    assert len(e.runs) == 4
    r = e.run("seed~1/size~mini")
    assert (r.config["model"]["preset"], r.config["train"]["lr"], r.config["train"]["batch_size"]) == ("mini", 0.001, 4)


def test_overrides_apply_to_defaults(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(BASE)
    e = load_experiment(p, overrides={"train.batch_size": 3, "launch.slurm.partition": "gpu"})
    assert all(r.config["train"]["batch_size"] == 3 for r in e.runs)
    assert all(r.config["launch"]["slurm"]["partition"] == "gpu" for r in e.runs)
    # axes still win over overrides of the same key
    assert {r.config["train"]["lr"] for r in e.runs} == {0.001, 0.0003}


@pytest.mark.parametrize(
    ("text", "needle", "line"),
    [
        ("experiment: t\ngrid:\n  train.lrr: [1, 2]\n", "unknown key 'lrr' in train (did you mean 'lr'?)", 3),
        ("experiment: t\ngrid:\n  train.lr: [0.1, -1]\n", "got -1; expected a number > 0", 3),
        ("experiment: t\ngrid:\n  model.preset: [micro, giant]\n", "expected one of", 3),
        ("experiment: t\ngrid:\n  m:\n    a: {meta.lerner: fomaml}\n", "did you mean 'learner'", 4),
        ("experiment: t\ngrid:\n  seed: [1, 2]\nexclude:\n  - {sed: 1}\n", "'sed' is not a grid axis (did you mean 'seed'?)", 5),
        ("experiment: t\ngrid:\n  seed: [1, 2]\nexclude:\n  - {seed: 7}\n", "7 is not a value of axis 'seed'", 5),
        ("experiment: t\ngrid:\n  seed: [1, 1]\n", "distinct", 3),
        ("experiment: t\nzip:\n  s:\n    seed: [1, 2]\n    train.lr: [0.1]\n", "equal lengths, got seed: 2, train.lr: 1", 3),
        ("experiment: t\ngrid: {seed: []}\n", "expected", 2),
        ("grid: {seed: [1]}\n", "missing required key", None),
        ("experiment: t\ntrain: {lr: 1}\n", "run settings go under `defaults:`", 2),
        ("experiment: t\ndefaults:\n  model: {preset: micro, n_heads: 5}\n", "not divisible", 3),
    ],
)
def test_grid_errors(tmp_path, text, needle, line):
    p = tmp_path / "e.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_experiment(p)
    assert needle in str(info.value)
    assert str(p) in str(info.value)
    if line is not None:
        assert info.value.line == line, str(info.value)


def test_duplicate_run_ids_rejected(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text("experiment: t\ngrid:\n  seed: [1, 2]\ninclude:\n  - {seed: 1}\n")
    e = load_experiment(p)  # identical config: collapses, no error
    assert len(e.runs) == 2
    p.write_text("experiment: t\ngrid:\n  x:\n    a: {train.lr: 0.1}\n    b: {train.lr: 0.2}\n"
                 "include:\n  - {x: a, train.lr: 0.3}\n  - {x: a, train.lr: 0.30}\n")
    e = load_experiment(p)
    assert [r.run_id for r in e.runs] == ["x~a", "x~b", "train.lr~0.3/x~a"]


def test_grid_cli_show_validate_diff(tmp_path, capsys):
    old = tmp_path / "old.yaml"
    new = tmp_path / "new.yaml"
    old.write_text("experiment: t\ngrid:\n  seed: [1, 2]\n")
    new.write_text("experiment: t\ngrid:\n  seed: [2, 3]\n  train.lr: [0.001]\n")
    assert cli(["grid", "validate", str(old), str(new)]) == 0
    capsys.readouterr()
    assert cli(["grid", "show", str(new), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in shown["runs"]] == ["seed~2/train.lr~0.001", "seed~3/train.lr~0.001"]
    assert cli(["grid", "diff", str(old), str(old), "--json"]) == 0
    same = json.loads(capsys.readouterr().out)
    assert same["added"] == same["removed"] == same["changed"] == []
    old.write_text("experiment: t\ngrid:\n  seed: [1, 2]\n  train.lr: [0.001]\n")
    assert cli(["grid", "diff", str(old), str(new), "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["added"] == ["seed~3/train.lr~0.001"]
    assert d["removed"] == ["seed~1/train.lr~0.001"]
    assert d["unchanged"] == ["seed~2/train.lr~0.001"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: t\ngrid:\n  sed: [1]\n")
    assert cli(["grid", "validate", str(bad)]) == 2
    assert "unknown key 'sed'" in capsys.readouterr().err


def test_materialize_writes_resolved_config(tmp_path):
    p = tmp_path / "e.yaml"
    p.write_text(BASE)
    out = tmp_path / "run"
    assert cli(["grid", "materialize", str(p), "--run", "method~fomaml/seed~1/train.lr~0.001", "--out", str(out)]) == 0
    from metapretrain.config import load_run_config

    cfg = load_run_config(out / "config.resolved.yaml")
    assert cfg.meta.learner == "fomaml"
    info = json.loads((out / "run.json").read_text())
    assert info["axes"] == {"method": "fomaml", "seed": "1", "train.lr": "0.001"}


def test_snakemake_config_entries_become_typed_overrides():
    from metapretrain.config.overrides import overrides_from_snakemake

    # Snakemake hands nested values over as strings.
    ov, name = overrides_from_snakemake({"train": {"lr": "0.001", "batch_size": "4"}, "launch": {"slurm": {"partition": "gpu"}},
                                         "set": "model.preset=mini wandb.mode=disabled dynamics.enabled=false", "experiment": "x"})
    assert ov == {"train.lr": 0.001, "train.batch_size": 4, "launch.slurm.partition": "gpu", "model.preset": "mini",
                  "wandb.mode": "disabled", "dynamics.enabled": False}
    assert name == "x"
    with pytest.raises(ConfigError, match="unknown --config key 'trian'"):
        overrides_from_snakemake({"trian": {"lr": "1"}})


BUDGET_OF = """
experiment: t
defaults:
  model: {preset: micro}
  train: {budget: {unit: steps, value: 40}}
grid:
  method:
    vanilla: {meta.learner: none}
    fomaml: {meta: {learner: fomaml, hybrid_ratio: 0.5}}
    vanilla_flops: {meta.learner: none, budget_of: {method: fomaml}}
  train.lr: [0.001, 0.003]
"""


def test_budget_of_gives_a_run_the_expected_flops_of_the_run_it_names(tmp_path):
    from metapretrain.cost import run_cost

    e = exp(tmp_path, BUDGET_OF)
    assert len(e.runs) == 6
    for lr in ("0.001", "0.003"):
        meta = e.run(f"method~fomaml/train.lr~{lr}")
        matched = e.run(f"method~vanilla_flops/train.lr~{lr}")
        assert matched.config["meta"]["learner"] == "none" and matched.config["train"]["lr"] == float(lr)
        assert matched.config["train"]["budget"] == {"unit": "flops", "value": run_cost(meta.typed).flops}
        assert run_cost(matched.typed).flops == pytest.approx(run_cost(meta.typed).flops, rel=0.05)
        assert e.run(f"method~vanilla/train.lr~{lr}").config["train"]["budget"] == {"unit": "steps", "value": 40}
    assert "budget_of" not in json.dumps(e.run("method~vanilla_flops/train.lr~0.001").config)


@pytest.mark.parametrize("directive,message", [
    ("{method: reptile}", r"axis 'method' has no value 'reptile'"),
    ("{size: tiny}", r"'size' is not an axis of the grid"),
    ("{unit: steps, method: fomaml}", r"budget_of.unit must be one of flops"),
    ("{unit: flops}", r"names no axis value"),
    ("{method: vanilla_flops}", r"itself has a budget_of budget"),
])
def test_budget_of_errors_name_the_key(tmp_path, directive, message):
    text = BUDGET_OF.replace("budget_of: {method: fomaml}", f"budget_of: {directive}")
    with pytest.raises(ConfigError, match=message) as err:
        exp(tmp_path, text)
    assert "grid.method.vanilla_flops.budget_of" in str(err.value) and "e.yaml" in str(err.value)


@pytest.mark.parametrize("compare,key,message", [
    ("{tuning: [train.lrr]}", "compare.tuning[0]", r"'train.lrr' is not an axis of the grid .*did you mean 'train.lr'"),
    ("{tuning: [seed]}", "compare.tuning[0]", "'seed' is a replicate axis"),
    ("{baselines: {reptile: [vanilla]}}", "compare.baselines.reptile", "no meta run has the method label 'reptile'"),
    ("{baselines: {fomaml: [vanila]}}", "compare.baselines.fomaml", "no vanilla run has the method label 'vanila'"),
])
def test_compare_names_what_the_grid_has(tmp_path, compare, key, message):
    with pytest.raises(ConfigError, match=message) as err:
        exp(tmp_path, BASE + f"\ncompare: {compare}\n")
    assert key in str(err.value) and "e.yaml:" in str(err.value)


def test_compare_accepts_tuning_axes_and_declared_labels(tmp_path):
    e = exp(tmp_path, BASE + "\ncompare: {tuning: [train.lr], baselines: {fomaml: [vanilla]}}\n")
    assert e.compare["tuning"] == ["train.lr"] and e.compare["baselines"] == {"fomaml": ["vanilla"]}
    assert e.compare["match"] == ["flops"] and e.compare["alpha"] == 0.05
