"""Reading and writing one resolved run config (`config.resolved.yaml`)."""

from __future__ import annotations

from pathlib import Path

import yaml

from metapretrain.config.schema import fill_defaults, run_schema, validate
from metapretrain.config.types import RunConfig
from metapretrain.config.yamlpos import PositionedYAML


def run_config_from_dict(data: dict, *, file: str | None = None, lines=None) -> RunConfig:
    """Validate a (possibly partial) run config, fill defaults and return the typed view."""
    validate(data or {}, run_schema(), file=file, lines=lines)
    resolved = fill_defaults(data or {})
    from metapretrain.config.semantics import check

    check(resolved, file=file, lines=(lambda p: lines(p[1:])) if lines else None)
    return RunConfig.from_dict(resolved)


def load_run_config(path: str | Path) -> RunConfig:
    doc = PositionedYAML.from_file(path)
    return run_config_from_dict(doc.data, file=doc.file, lines=doc.line)


def dump_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=True, default_flow_style=False, allow_unicode=True)


def write_run_config(path: str | Path, config: dict | RunConfig) -> None:
    from metapretrain.io import atomic_write_text

    data = config.to_dict() if isinstance(config, RunConfig) else config
    atomic_write_text(path, dump_yaml(data))
