"""metapretrain.stages: one object per stage instance; and run.json's one reader (metapretrain.run_record)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from metapretrain import paths, stages
from metapretrain.io import InputError
from metapretrain.run_record import read_run_record, run_identity, write_run_record


def test_a_finetune_instance_derives_every_spelling_and_file_from_one_object(tmp_path):
    s = stages.finetune(tmp_path, "Danish-DDT", "head")
    assert (s.kind, s.variant, s.name, s.key) == ("finetune", "Danish-DDT~head", "finetune:Danish-DDT~head",
                                                  "finetune/Danish-DDT~head")
    # The files on disk keep the names they had before stages.py existed.
    assert s.directory == tmp_path / "finetune" / "Danish-DDT~head"
    assert s.done == tmp_path / "finetune" / "Danish-DDT~head" / "done.json"
    assert s.log == tmp_path / "logs" / "finetune" / "Danish-DDT~head.log"
    assert s.benchmark == tmp_path / "benchmarks" / "finetune" / "Danish-DDT~head.tsv"
    assert s.job_record == tmp_path / "logs" / "finetune" / "Danish-DDT~head.job.json"
    assert s.submitit_dir == tmp_path / "logs" / "submitit" / "finetune" / "Danish-DDT~head"


def test_run_stages_and_tokenize_live_where_the_layout_says(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.RESULTS_ENV, str(tmp_path))
    run = SimpleNamespace(run_id="method~fomaml/seed~1", tok_id="shared-0123abcd",
                          config={"finetune": {"enabled": True, "train_sets": ["A", "B"], "regimes": ["head", "full"]},
                                  "dynamics": {"enabled": True}})
    got = stages.of_run("e", run)
    assert [s.name for s in got] == ["tokenize", "pretrain", "finetune:A~head", "finetune:A~full", "finetune:B~head",
                                     "finetune:B~full", "dynamics"]
    tok, pre, dyn = got[0], got[1], got[-1]
    rd = tmp_path / "e" / "runs" / "method~fomaml" / "seed~1"
    assert tok.key == "tokenize/shared-0123abcd" and tok.directory == tmp_path / "e" / "tokenize" / "shared-0123abcd"
    assert tok.log == tmp_path / "e" / "logs" / "tokenize" / "shared-0123abcd.log"
    assert pre.done == rd / "pretrain" / "done.json" and pre.log == rd / "logs" / "pretrain.log"
    assert dyn.directory == rd / "dynamics" and dyn.job_record == rd / "logs" / "dynamics.job.json"
    run.config["finetune"]["enabled"] = run.config["dynamics"]["enabled"] = False
    assert [s.name for s in stages.of_run("e", run)] == ["tokenize", "pretrain"]


def test_a_launcher_key_names_the_same_stage(tmp_path):
    for stage in (stages.pretrain(tmp_path), stages.dynamics(tmp_path), stages.finetune(tmp_path, "X", "full")):
        assert stages.launched(stage.key, tmp_path) == stage
        assert stages.kind_of(stage.key) == stage.kind
    for bad in ("tokenize/x", "finetune", "finetune/X", "pretrain/x", "figures", "finetune:X~head"):
        with pytest.raises(ValueError, match="stage"):
            stages.launched(bad, tmp_path)


def test_run_record_round_trip_and_its_errors(tmp_path):
    run = SimpleNamespace(run_id="seed~1", hash="abc", axes={"seed": "1"}, source="grid", tok_id="t-1")
    path = write_run_record(tmp_path, run, "exp")
    assert path == paths.run_record(tmp_path)
    assert json.loads(path.read_text()) == {"run_id": "seed~1", "hash": "abc", "axes": {"seed": "1"},
                                            "experiment": "exp", "source": "grid", "tok_id": "t-1"}
    rec = read_run_record(tmp_path)
    assert (rec.run_id, rec.experiment, rec.hash, rec.axes) == ("seed~1", "exp", "abc", {"seed": "1"})
    assert run_identity(tmp_path) == ("exp", "seed~1")

    other = tmp_path / "other"
    other.mkdir()
    assert read_run_record(other) is None and run_identity(other) == (None, "other")
    path = paths.run_record(other)
    path.write_text(json.dumps({"experiment": "exp"}))
    assert read_run_record(other).run_id is None and run_identity(other) == (None, "other")
    path.write_text("[1]")
    with pytest.raises(InputError, match=r"run.json:1: expected a JSON object, got list"):
        read_run_record(other)
    path.write_text('{"run_id": "r",\n "axes": [1]}')
    with pytest.raises(InputError, match="axes: expected a mapping"):
        read_run_record(other)
    path.write_text('{"run_id": ')
    with pytest.raises(InputError, match="not valid JSON"):
        run_identity(other)


def test_every_command_line_form_of_an_override_reads_the_same():
    from metapretrain.config.errors import ConfigError
    from metapretrain.config.overrides import overrides_from_snakemake, parse_assignment, parse_sets

    assert parse_assignment(" train.lr=1e-3", "--set ") == ("train.lr", 0.001)
    from_set = parse_sets(["train.lr=1e-3", "launch.slurm.partition=gpu"])
    from_config, _ = overrides_from_snakemake({"set": "train.lr=1e-3 launch.slurm.partition=gpu"})
    from_sections, _ = overrides_from_snakemake({"train": {"lr": "1e-3"}, "launch": {"slurm": {"partition": "gpu"}}})
    assert from_set == from_config == from_sections == {"train.lr": 0.001, "launch.slurm.partition": "gpu"}
    assert overrides_from_snakemake({"train": {}, "launch": {"slurm": {}}}) == ({}, None)
    with pytest.raises(ConfigError, match="--set expects key.path=value, got 'lr'"):
        parse_sets(["lr"])
    with pytest.raises(ConfigError, match="--config set= expects key.path=value, got 'lr'"):
        overrides_from_snakemake({"set": "lr"})
    with pytest.raises(ConfigError, match=r"--config set=seed: '\[1,' is not a valid YAML value"):
        overrides_from_snakemake({"set": "seed=[1,"})

