"""Overrides of a config: dotted keys, deep merges, and every way a command line gives them.

`--set key.path=value` (the `metapretrain` commands), Snakemake's `--config set="a.b=v c=w"`,
`--config 'train={lr: 1e-3}'` and `--config a.b=v` all become one dict of dotted keys with
typed values, each value read as the same text in a config file would be (config.values).
"""

from __future__ import annotations

import copy
from typing import Any

from metapretrain.config.errors import ConfigError, suggest
from metapretrain.config.schema import known_keys, run_schema, subschema, validate
from metapretrain.config.values import coerce_strings, parse_value


def nest(overrides: dict) -> dict:
    """{'train.lr': 1, 'meta': {'learner': 'x'}} -> {'train': {'lr': 1}, 'meta': {'learner': 'x'}}."""
    out: dict = {}
    for key, value in (overrides or {}).items():
        parts = str(key).split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"'{key}' sets a key inside a non-mapping value")
        if isinstance(value, dict) and isinstance(node.get(parts[-1]), dict):
            node[parts[-1]] = deep_merge(node[parts[-1]], nest(value))
        else:
            node[parts[-1]] = nest(value) if isinstance(value, dict) and _nested_keys(value) else copy.deepcopy(value)
    return out


def _nested_keys(value: dict) -> bool:
    return any("." in str(k) for k in value) or any(isinstance(v, dict) for v in value.values())


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def flatten(cfg: dict, prefix: str = "") -> dict[str, object]:
    """Nested config dict -> {"a.b.c": value}; empty dicts stay values."""
    out: dict[str, object] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def check_dotted_key(key: str, *, file, line) -> None:
    """ConfigError naming `file:line` unless `key` is a run-config key (or lies inside a free-form mapping)."""
    parts = tuple(key.split("."))
    for i in range(len(parts)):
        if subschema(parts[: i + 1]) is None:
            allowed = known_keys(parts[:i])
            parent = ".".join(parts[:i]) or "top level"
            # Keys inside free-form mappings (launch.slurm.extra, ...stages) are not in the schema.
            parent_schema = subschema(parts[:i])
            if parent_schema is not None and parent_schema.get("type") == "object" and "properties" not in parent_schema:
                return
            raise ConfigError(f"unknown key '{parts[i]}' in {parent}{suggest(parts[i], allowed)}; allowed keys: {', '.join(allowed)}",
                              file=file, key=key, line=line)


def apply_overrides(base: dict, overrides: dict) -> dict:
    """`base` (a run config, maybe partial) with the command line's dotted `overrides`, each checked first."""
    for key, value in overrides.items():
        check_dotted_key(key, file="--config", line=None)
        validate(value, subschema(tuple(key.split("."))) or {}, file="--config", prefix=tuple(key.split(".")))
    return deep_merge(base, nest(overrides))


def parse_assignment(item: str, option: str) -> tuple[str, Any]:
    """`key.path=value` -> (key.path, its typed value). `option` is how the command line spells the item up
    to its key (`--set `, `--config set=`), to name it in errors."""
    if "=" not in item:
        raise ConfigError(f"{option.strip()} expects key.path=value, got '{item}'")
    key, value = item.split("=", 1)
    key = key.strip()
    return key, parse_value(value, where=f"{option}{key}")


def parse_sets(items: list[str] | None) -> dict:
    """['train.lr=1e-3', ...] (repeated `--set`) -> {'train.lr': 0.001}."""
    return dict(parse_assignment(item, "--set ") for item in items or [])


def overrides_from_snakemake(entries: dict) -> tuple[dict, str | None]:
    """Snakemake `--config` entries -> (dotted overrides of `defaults`, experiment name or None).

    Snakemake allows only identifier keys, so a key path is given either as
    a section mapping (`--config 'train={lr: 1.0e-3}'`) or through `set`
    (`--config set="train.lr=1e-3 launch.slurm.partition=gpu"`). Snakemake hands
    nested values over as strings: they are read as a config file would read them.
    """
    overrides: dict = {}
    name = None
    sections = set(run_schema()["properties"])
    for key, value in entries.items():
        if key == "experiment":
            name = str(value)
        elif key == "set":
            overrides.update(parse_assignment(item, "--config set=") for item in str(value).split())
        elif key in sections:
            leaves = flatten(value, f"{key}.") if isinstance(value, dict) else {key: value}
            # An empty mapping names no key to set.
            overrides.update({k: coerce_strings(v, where=f"--config {k}") for k, v in leaves.items() if v != {}})
        elif "." in key:
            overrides[key] = coerce_strings(value, where=f"--config {key}")
        else:
            raise ConfigError(f"unknown --config key '{key}'{suggest(key, sections | {'set', 'experiment'})}; use a "
                              "run section (train, model, launch, ...), set=\"a.b=v ...\" or experiment=NAME", file="--config")
    return overrides, name
