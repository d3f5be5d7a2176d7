"""The run-config JSON Schema: loading, default filling and readable validation errors."""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

from metapretrain import plugins
from metapretrain.config.errors import ConfigError, dotted, suggest
from metapretrain.config.values import load_yaml

SCHEMA_DIR = Path(__file__).parent / "schema"


@functools.cache
def _run_schema_file() -> dict:
    return load_yaml((SCHEMA_DIR / "run.schema.yaml").read_text(encoding="utf-8"))


def run_schema() -> dict:
    """The run schema. The file lists the built-in learners and episode builders (tests keep it equal to
    the registries); with plugins loaded (metapretrain.plugins), its enums also hold what they registered."""
    return _with_plugins(tuple(plugins.load()))


@functools.cache
def _with_plugins(loaded: tuple[str, ...]) -> dict:
    schema = _run_schema_file()
    if not loaded:
        return schema
    from metapretrain.meta.registry import known_episode_builders, known_learners

    schema = copy.deepcopy(schema)
    meta = schema["properties"]["meta"]["properties"]
    for node, names in ((meta["learner"], known_learners()),
                        (meta["episode"]["properties"]["builder"], known_episode_builders())):
        node["enum"] += [name for name in names if name not in node["enum"]]
    return schema


@functools.cache
def experiment_schema() -> dict:
    return load_yaml((SCHEMA_DIR / "experiment.schema.yaml").read_text(encoding="utf-8"))


def subschema(path: tuple, schema: dict | None = None) -> dict | None:
    """The schema of a dotted key path in a run config, or None if no such key."""
    node = schema or run_schema()
    for part in path:
        props = node.get("properties")
        if props is None or part not in props:
            return None
        node = props[part]
    return node


def known_keys(path: tuple) -> list[str]:
    node = subschema(path)
    return sorted((node or {}).get("properties", {}))


def fill_defaults(cfg: dict, schema: dict | None = None) -> dict:
    """A copy of `cfg` with every missing key set to its schema default, recursively."""
    schema = schema or run_schema()
    out = copy.deepcopy(cfg) if cfg is not None else {}
    _fill(out, schema)
    return out


def _fill(value: Any, schema: dict) -> None:
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key not in value and "default" in sub:
                value[key] = copy.deepcopy(sub["default"])
            if key in value:
                _fill(value[key], sub)
    elif isinstance(value, list) and "items" in schema:
        items = schema["items"]
        for item in value:
            branch = items
            if "oneOf" in items and isinstance(item, dict):
                branch = next((b for b in items["oneOf"] if b["properties"]["type"].get("const") == item.get("type")), {})
            _fill(item, branch)


def _describe_expected(schema: dict) -> str:
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    types = schema.get("type")
    types = types if isinstance(types, list) else [types]
    words = {"integer": "an integer", "number": "a number", "string": "a string", "boolean": "true or false",
             "array": "a list", "object": "a mapping", "null": "null"}
    text = " or ".join(words.get(t, str(t)) for t in types if t)
    bounds = []
    if "minimum" in schema:
        bounds.append(f">= {schema['minimum']}")
    if "exclusiveMinimum" in schema:
        bounds.append(f"> {schema['exclusiveMinimum']}")
    if "maximum" in schema:
        bounds.append(f"<= {schema['maximum']}")
    if "exclusiveMaximum" in schema:
        bounds.append(f"< {schema['exclusiveMaximum']}")
    if bounds:
        text += " " + " and ".join(bounds)
    if "pattern" in schema:
        text += f" matching {schema['pattern']}"
    return text or "a valid value"


def validate(cfg: dict, schema: dict, *, file: str | None = None, lines=None, prefix: tuple = ()) -> None:
    """Raise ConfigError for the first (shallowest) problem in `cfg` against `schema`.

    `lines` maps a key path (with `prefix` prepended) to a source line.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(cfg), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    err = errors[0]
    if err.validator in ("oneOf", "anyOf") and err.context:
        # Report the error of the alternative whose `type` tag the value carries (e.g. a `files` source).
        tag = err.instance.get("type") if isinstance(err.instance, dict) else None
        branches = err.validator_value
        chosen = [i for i, b in enumerate(branches) if b.get("properties", {}).get("type", {}).get("const") == tag]
        context = [e for e in err.context if not chosen or e.schema_path[0] in chosen]
        err = sorted(context or err.context, key=lambda e: len(e.absolute_path))[0]
    err_path = tuple(err.absolute_path)
    full = prefix + err_path
    line = lines(full) if callable(lines) else None
    if err.validator == "additionalProperties":
        allowed = sorted(err.schema.get("properties", {}))
        extra = sorted(set(err.instance) - set(allowed))
        bad = extra[0]
        line = lines(full + (bad,)) if callable(lines) else line
        where = dotted(full) or "top level"
        raise ConfigError(f"unknown key '{bad}' in {where}{suggest(bad, allowed)}; allowed keys: {', '.join(allowed)}",
                          file=file, key=dotted(full + (bad,)), line=line)
    if err.validator == "required":
        raise ConfigError(f"missing required key: {err.message}", file=file, key=dotted(full) or None, line=line)
    expected = _describe_expected(err.schema) if err.validator in (
        "type", "enum", "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "const", "pattern") else err.message
    hint = f" ({err.schema['x-hint']})" if "x-hint" in err.schema else ""
    raise ConfigError(f"got {err.instance!r}; expected {expected}{hint}", file=file, key=dotted(full) or None, line=line)
