"""The one YAML loader for config files and the one parser for command-line values.

PyYAML follows YAML 1.1, where a float needs a dot and a signed exponent: `1e-3`,
`1E5` and `.5e-2` read as strings, and a researcher's `lr: 1e-3` fails validation.
`Loader` also accepts the floats of YAML 1.2's core schema; everything else (ints
such as `1_000` or `0x10`, booleans, dates, strings) reads as PyYAML reads it.
Every config path (experiment and run files, `--set`, Snakemake `--config`) goes
through here, so a value means the same wherever it is written.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

# YAML 1.2 core floats PyYAML's 1.1 resolver misses: an exponent without a sign or without a
# dot (`1e3`, `1.0e12`, `1E-5`), and a signed leading dot (`-.5`). Tried after PyYAML's int and
# timestamp resolvers, so `1_000`, `0x10` and `2024-01-01` keep their YAML 1.1 types.
YAML12_FLOAT = re.compile(r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
                              |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?)$""", re.X)


class Loader(yaml.SafeLoader):
    """`yaml.SafeLoader` that also reads YAML 1.2 floats (`1e-3`) as floats."""


Loader.add_implicit_resolver("tag:yaml.org,2002:float", YAML12_FLOAT, list("-+.0123456789"))


def load_yaml(text: str) -> Any:
    """The YAML document in `text` (None when empty); raises yaml.YAMLError."""
    return yaml.load(text, Loader=Loader)  # a SafeLoader: no arbitrary objects


def parse_value(text: str, *, where: str = "value") -> Any:
    """A command-line value as the same text would read in a config file: `1e-3` -> 0.001, `true` -> True,
    `[1, 2]` -> a list, `''` -> None, anything else a string. `where` names the argument in errors."""
    from metapretrain.config.errors import ConfigError

    try:
        return load_yaml(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: {text!r} is not a valid YAML value ({getattr(exc, 'problem', None) or exc}); "
                          "quote it to pass a string") from None


def coerce_strings(value: Any, *, where: str = "value") -> Any:
    """`value` with every string parsed by `parse_value`, recursively through mappings and lists.

    Snakemake reads `--config 'train={lr: 1e-3}'` with its own base YAML loader, which keeps every
    nested scalar a string (`'1e-3'`, `'true'`): this gives them the types a config file would.
    """
    if isinstance(value, dict):
        return {k: coerce_strings(v, where=f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [coerce_strings(v, where=f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, str):
        return parse_value(value, where=where)
    return value
