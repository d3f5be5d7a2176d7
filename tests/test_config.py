"""Config schema, typed sections and error messages."""

from __future__ import annotations

import dataclasses
import typing

import pytest

from metapretrain.config import ConfigError, RunConfig
from metapretrain.config.load import load_run_config, run_config_from_dict, write_run_config
from metapretrain.config.schema import fill_defaults, run_schema
from metapretrain.config.types import _Section


def _walk(schema, path=()):
    for key, sub in schema.get("properties", {}).items():
        yield path + (key,), sub
        if sub.get("type") == "object" and "properties" in sub:
            yield from _walk(sub, path + (key,))


def test_every_schema_key_has_default_and_description():
    missing = [".".join(p) for p, sub in _walk(run_schema())
               if len(p) and p[-2:-1] != ("stages",) and ("default" not in sub or ("description" not in sub and p[-2] != "stages"))]
    assert missing == []


def test_dataclasses_mirror_schema():
    def check(cls, schema, path):
        fields = {f.name for f in dataclasses.fields(cls)}
        assert fields == set(schema["properties"]), f"{path}: dataclass {cls.__name__} and schema differ"
        hints = typing.get_type_hints(cls)
        for name, sub in schema["properties"].items():
            hint = hints[name]
            if isinstance(hint, type) and issubclass(hint, _Section):
                check(hint, sub, f"{path}.{name}")

    check(RunConfig, run_schema(), "run")


def test_defaults_fill_everything_and_round_trip(tmp_path):
    cfg = run_config_from_dict({})
    assert cfg.train.lr == 1e-3 and cfg.model.preset == "micro" and cfg.meta.learner == "none"
    assert fill_defaults(cfg.to_dict()) == cfg.to_dict()
    write_run_config(tmp_path / "c.yaml", cfg)
    assert load_run_config(tmp_path / "c.yaml") == cfg


def test_model_section_resolves_preset_with_overrides():
    cfg = run_config_from_dict({"model": {"preset": "small", "n_layers": 2}})
    m = cfg.model.resolved()
    assert (m.d_model, m.n_layers, m.n_heads, m.n_kv_heads, m.ffn_hidden, m.vocab_size) == (384, 2, 12, 4, 1536, 50304)
    micro = run_config_from_dict({}).model.resolved(tokenizer_vocab=777)
    assert micro.vocab_size == 777


@pytest.mark.parametrize(
    ("text", "key", "line", "needle"),
    [
        ("trian:\n  lr: 1\n", "trian", 1, "did you mean 'train'"),
        ("train:\n  lr: fast\n", "train.lr", 2, "expected a number > 0"),
        ("train:\n  lr: 0\n", "train.lr", 2, "got 0; expected a number > 0"),
        ("train:\n  batch_size: 2.5\n", "train.batch_size", 2, "expected an integer >= 1"),
        ("train:\n  schedule: cosin\n", "train.schedule", 2, "one of 'cosine', 'linear', 'constant'"),
        ("model:\n  preset: huge\n", "model.preset", 2, "'micro'"),
        ("meta:\n  episode:\n    n_wya: 3\n", "meta.episode.n_wya", 3, "did you mean 'n_way'"),
        ("model:\n  preset: micro\n  n_heads: 3\n", "model.n_heads", 3, "not divisible"),
        ("model:\n  n_heads: 4\n  n_kv_heads: 3\n", "model.n_kv_heads", 3, "not divisible"),
        ("model:\n  d_model: 0\n", "model.d_model", 2, ">= 8"),
        ("train:\n  seq_len: 4096\n", "train.seq_len", 2, "exceeds the model's max_seq_len"),
        ("tokenizer:\n  vocab_size: 100\nmeta:\n  learner: fomaml\n  episode:\n    n_way: 101\n", "meta.episode.n_way", 6, "larger than the vocabulary"),
        ("tokenizer:\n  kind: pretrained\n", "tokenizer.path", 1, "tokenizer.path is not set"),
        ("corpus:\n  sources: []\n", "corpus.sources", 2, "expected"),
        ("corpus:\n  sources:\n    - {type: files}\n", "corpus.sources[0]", 3, "paths"),
        ("train: [1, 2]\n", "train", 1, "expected a mapping"),
        ("seed: -1\n", "seed", 1, ">= 0"),
        ("train:\n  lr: '1e-3'\n", "train.lr", 2, "got '1e-3'; expected a number > 0"),  # quoted: a string
    ],
)
def test_config_errors_name_file_line_key(tmp_path, text, key, line, needle):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_run_config(path)
    err = info.value
    assert err.file == str(path)
    assert err.key == key, str(err)
    assert err.line == line, str(err)
    assert needle in str(err)
    assert str(err).startswith(f"{path}:{line}: {key}: ")


def test_invalid_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:\d+: not valid YAML"):
        load_run_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_run_config(tmp_path / "nope.yaml")
    bad.write_bytes(b"train:\n  lr: na\xefve\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml:2: invalid UTF-8") as info:
        load_run_config(bad)
    assert (info.value.file, info.value.line) == (str(bad), 2)
