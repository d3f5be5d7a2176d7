"""Experiment file → runs: axes, named bundles, zip groups, exclude, include, dedupe.

A run's id is built from its axis values, axis names sorted, so reordering
YAML keys never changes an id: `method~fomaml/model.preset~micro/seed~42`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from metapretrain.config.errors import ConfigError, suggest
from metapretrain.config.overrides import apply_overrides, check_dotted_key, deep_merge, nest
from metapretrain.config.schema import experiment_schema, fill_defaults, run_schema, subschema, validate
from metapretrain.config.types import RunConfig
from metapretrain.config.yamlpos import PositionedYAML
from metapretrain.data.errors import DataError
from metapretrain.data.identity import ContentIndex, corpus_identity

# Sections that say how and where a run executes, or where its data lives, not what it computes:
# they are left out of the run hash, so changing them never changes a run's identity. The data
# enters the identity by content instead (`data.identity`: the corpus files' sha256).
NON_IDENTITY_SECTIONS = ("launch", "wandb", "data")
TOKENIZE_SECTIONS = ("data", "corpus", "tokenizer")


@dataclass
class Run:
    run_id: str
    axes: dict[str, str]  # axis name -> value label
    config: dict  # fully resolved run config
    hash: str
    source: str = "grid"  # grid | include
    tok_id: str = ""

    @property
    def typed(self) -> RunConfig:
        return RunConfig.from_dict(self.config)


@dataclass
class Experiment:
    name: str
    description: str
    file: str | None
    axes: list[str]
    runs: list[Run]
    collapsed: list[tuple[str, str]] = field(default_factory=list)  # (dropped id, kept id)
    replicates: list[str] = field(default_factory=lambda: ["seed"])  # axes the figures aggregate over
    compare: dict = field(default_factory=lambda: compare_settings({}))  # how figures compare (experiment key)

    def run(self, run_id: str) -> Run:
        for r in self.runs:
            if r.run_id == run_id:
                return r
        raise KeyError(f"no run {run_id!r} in experiment {self.name!r}; runs: {', '.join(r.run_id for r in self.runs)}")

    def tokenize_configs(self) -> dict[str, dict]:
        out: dict[str, dict] = {}
        for r in self.runs:
            out.setdefault(r.tok_id, {k: r.config[k] for k in TOKENIZE_SECTIONS} | {"seed": r.config["seed"]})
        return out


# --------------------------------------------------------------------------- helpers


def compare_settings(compare: dict) -> dict:
    """The experiment's `compare:` section with every default filled (schema: experiment.schema.yaml)."""
    return {"tuning": [str(a) for a in compare.get("tuning") or []],
            "baselines": {str(k): [str(x) for x in v] for k, v in (compare.get("baselines") or {}).items()},
            "match": [str(u) for u in compare.get("match", ["flops"])],
            "alpha": float(compare.get("alpha", 0.05))}


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def short_hash(obj: Any, n: int = 10) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()[:n]


def run_hash(config: dict, index: ContentIndex | None = None) -> str:
    identity = {k: v for k, v in config.items() if k not in NON_IDENTITY_SECTIONS}
    identity["corpus"] = corpus_identity(config, index)
    return short_hash(identity)


def tokenize_id(config: dict, index: ContentIndex | None = None) -> str:
    # The seed matters to tokenization only through the validation split, which is hash-based: leave it out.
    identity = {"corpus": corpus_identity(config, index), "tokenizer": config["tokenizer"]}
    return f"{config['corpus']['name']}-{short_hash(identity, 8)}"


def format_value(value: Any) -> str:
    """A path-safe, readable label for an axis value."""
    if isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, float):
        text = repr(value) if math.isfinite(value) else str(value)
    elif value is None:
        text = "null"
    elif isinstance(value, (list, dict)):
        text = short_hash(value, 8)
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "-", text)


# --------------------------------------------------------------------------- loading


def load_experiment(path: str | Path | None = None, *, data: dict | None = None,
                    overrides: dict | None = None) -> Experiment:
    """Load, validate and expand an experiment file (or an already-parsed dict, e.g. Snakemake's `config`).

    `overrides` are dotted keys applied to `defaults` (Snakemake `--config train.lr=1e-3`).
    Top-level dotted keys in `data` are treated the same way.
    """
    if data is None:
        doc = PositionedYAML.from_file(path)
        data, lines, file = doc.data, doc.line, doc.file
    else:
        file = str(path) if path else None
        try:
            doc = PositionedYAML.from_file(path) if path and os.path.exists(path) else None
        except ConfigError:
            doc = None
        lines = doc.line if doc else (lambda p: None)
    if not isinstance(data, dict):
        raise ConfigError("an experiment file must be a mapping with at least `experiment:`", file=file, line=1)
    data = dict(data)
    cli = {k: data.pop(k) for k in list(data) if "." in str(k)}
    cli.update(overrides or {})
    run_sections = set(run_schema()["properties"])
    for key in data:
        if key not in experiment_schema()["properties"]:
            close = suggest(key, run_sections)
            if key in run_sections or close:
                target = key if key in run_sections else close.split("'")[1]
                raise ConfigError(f"unknown top-level key '{key}': run settings go under `defaults:` "
                                  f"(did you mean 'defaults.{target}'?)", file=file, key=str(key), line=lines((key,)))
    validate(data, experiment_schema(), file=file, lines=lines)
    data = fill_defaults(data, experiment_schema())

    defaults = data["defaults"] or {}
    validate(defaults, run_schema(), file=file, lines=lines, prefix=("defaults",))
    base = apply_overrides(defaults, cli)

    budget_refs: dict[tuple[str, str], dict] = {}
    axes = _parse_axes(data["grid"], data["zip"], file, lines, budget_refs)
    budget_refs = {k: _check_budget_of(v, axes, k, file, lines) for k, v in budget_refs.items()}
    points = [dict(p) for p in itertools.product(*[[(name, v) for v in values] for name, values in axes.items()])]
    points = [p for p in points if not _excluded(p, data["exclude"], axes, file, lines)]

    runs: list[Run] = []
    index = ContentIndex()
    try:
        for point in points:
            budget = _matched_budget(point, budget_refs, axes, base, file, lines, index)
            runs.append(_make_run(point, axes, base, file, lines, index, source="grid", budget=budget))
        for i, item in enumerate(data["include"]):
            point, extra = _parse_include(item, axes, file, lines, i)
            budget = _matched_budget(point, budget_refs, axes, base, file, lines, index)
            runs.append(_make_run(point, axes, base, file, lines, index, source="include", extra=extra,
                                  budget=budget))
    except DataError as exc:
        if exc.file:
            raise
        from metapretrain.data.plan import key_line

        raise DataError(exc.problem, key=exc.key, value=exc.value, file=file or "--config",
                        line=key_line(doc, exc.key, exc.value) if doc else None) from None

    unique: list[Run] = []
    seen: dict[str, str] = {}
    ids: dict[str, Run] = {}
    collapsed = []
    for run in runs:
        if run.hash in seen:
            collapsed.append((run.run_id, seen[run.hash]))
            continue
        if run.run_id in ids:
            raise ConfigError(f"two different runs share the id '{run.run_id}' (an include repeats a grid point "
                              "with other overrides?); give them distinct axis values", file=file)
        seen[run.hash] = run.run_id
        ids[run.run_id] = run
        unique.append(run)
    exp = Experiment(name=data["experiment"], description=data.get("description", ""), file=file,
                     axes=list(axes), runs=unique, collapsed=collapsed, replicates=list(data["replicates"]),
                     compare=compare_settings(data.get("compare") or {}))
    _check_compare(exp, file, lines)
    return exp


def _check_compare(exp: Experiment, file, lines) -> None:
    """`compare:` names what the grid has: tuning axes that are axes (not replicate axes), declared baselines
    whose labels are the figures' method labels. A typo would silently compare with an untuned baseline."""
    cmp = exp.compare
    for i, axis in enumerate(cmp["tuning"]):
        where = {"file": file, "key": f"compare.tuning[{i}]", "line": lines(("compare", "tuning", i))}
        if axis not in exp.axes:
            raise ConfigError(f"'{axis}' is not an axis of the grid "
                              f"({', '.join(exp.axes) or 'none'})" + suggest(axis, exp.axes), **where)
        if axis in exp.replicates:
            raise ConfigError(f"'{axis}' is a replicate axis; a tuning axis is one whose best value "
                              "the baseline takes (e.g. train.lr)", **where)
    if not cmp["baselines"]:
        return
    from metapretrain import paths
    from metapretrain.figures.load import RunData
    from metapretrain.figures.pairing import design

    runs = [RunData(r.run_id, dict(r.axes), r.config, paths.run_dir(exp.name, r.run_id)) for r in exp.runs]
    d = design(runs, exp.axes, exp.replicates, compare=cmp)
    labels = {"meta": set(), "vanilla": set()}
    for r in runs:
        labels["vanilla" if r.is_vanilla else "meta"] |= {d.label[r.run_id], d._base_label.get(r.run_id, "")}
    for meta, bases in cmp["baselines"].items():
        where = {"file": file, "key": f"compare.baselines.{meta}", "line": lines(("compare", "baselines", meta))}
        if meta not in labels["meta"]:
            raise ConfigError(f"no meta run has the method label '{meta}' (meta labels: "
                              f"{', '.join(sorted(labels['meta'] - {''})) or 'none'})", **where)
        for base in bases:
            if base not in labels["vanilla"]:
                raise ConfigError(f"no vanilla run has the method label '{base}' (vanilla "
                                  f"labels: {', '.join(sorted(labels['vanilla'] - {''})) or 'none'})", **where)


def _parse_axes(grid: dict, zips: dict, file, lines, budget_refs: dict | None = None
                ) -> dict[str, list[tuple[str, dict]]]:
    """axis name -> [(value label, nested overrides)]; a bundle's `budget_of` goes to `budget_refs`
    ((axis, label) -> the directive), checked once every axis is known (`_check_budget_of`)."""
    axes: dict[str, list[tuple[str, dict]]] = {}
    for name, spec in grid.items():
        name = str(name)
        if isinstance(spec, list):  # dotted key axis
            check_dotted_key(name, file=file, line=lines(("grid", name)))
            sch = subschema(tuple(name.split("."))) or {}
            values = []
            for i, v in enumerate(spec):
                validate(v, sch, file=file, lines=lambda p, i=i, name=name: lines(("grid", name, i)), prefix=tuple(name.split(".")))
                values.append((format_value(v), nest({name: v})))
            _unique_labels(name, values, file, lines(("grid", name)))
            axes[name] = values
        else:  # named axis of bundles
            if "." in name:
                raise ConfigError(f"a named axis maps value names to override bundles, but '{name}' looks like a "
                                  "dotted key: give it a list of values instead", file=file, key=f"grid.{name}",
                                  line=lines(("grid", name)))
            values = []
            for label, bundle in spec.items():
                bundle = dict(bundle or {})
                if BUDGET_OF in bundle:
                    if budget_refs is None:
                        raise ConfigError(f"{BUDGET_OF} is not allowed here", file=file, key=f"grid.{name}.{label}")
                    budget_refs[(name, format_value(label))] = bundle.pop(BUDGET_OF)
                overrides = nest(bundle)
                for key in _flat_keys(bundle or {}):
                    check_dotted_key(key, file=file, line=lines(("grid", name, label, key)) or lines(("grid", name, label)))
                validate(overrides, run_schema(), file=file,
                         lines=lambda p, label=label, name=name: lines(("grid", name, label) + tuple(p)), prefix=())
                values.append((format_value(label), overrides))
            axes[name] = values
    for name, group in zips.items():
        name = str(name)
        if name in axes:
            raise ConfigError(f"zip group '{name}' has the same name as a grid axis", file=file, key=f"zip.{name}",
                              line=lines(("zip", name)))
        lengths = {k: len(v) for k, v in group.items()}
        if len(set(lengths.values())) > 1:
            raise ConfigError("zip lists must have equal lengths, got " + ", ".join(f"{k}: {n}" for k, n in lengths.items()),
                              file=file, key=f"zip.{name}", line=lines(("zip", name)))
        keys = list(group)
        for key in keys:
            check_dotted_key(key, file=file, line=lines(("zip", name, key)))
            sch = subschema(tuple(key.split("."))) or {}
            for i, v in enumerate(group[key]):
                validate(v, sch, file=file, lines=lambda p, key=key, i=i, name=name: lines(("zip", name, key, i)),
                         prefix=tuple(key.split(".")))
        values = []
        for i in range(len(group[keys[0]])):
            values.append((format_value(group[keys[0]][i]), nest({k: group[k][i] for k in keys})))
        _unique_labels(f"zip.{name}", values, file, lines(("zip", name)))
        axes[name] = values
    return axes


def _flat_keys(bundle: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in bundle.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        sch = subschema(tuple(key.split(".")))
        if isinstance(v, dict) and sch is not None and "properties" in sch:
            keys.extend(_flat_keys(v, key))
        else:
            keys.append(key)
    return keys


def _unique_labels(name, values, file, line) -> None:
    labels = [label for label, _ in values]
    dup = sorted({x for x in labels if labels.count(x) > 1})
    if dup:
        raise ConfigError(f"axis values must be distinct, '{dup[0]}' appears twice", file=file, key=name, line=line)


def _label_of(axes, name, value, file, line, where) -> str:
    if name not in axes:
        raise ConfigError(f"'{name}' is not a grid axis{suggest(name, axes)}; axes: {', '.join(axes) or '(none)'}",
                          file=file, key=where, line=line)
    labels = [label for label, _ in axes[name]]
    label = format_value(value)
    if label not in labels:
        raise ConfigError(f"{value!r} is not a value of axis '{name}'; values: {', '.join(labels)}",
                          file=file, key=where, line=line)
    return label


def _excluded(point: dict, rules: list[dict], axes, file, lines) -> bool:
    for i, rule in enumerate(rules):
        match = True
        for name, value in rule.items():
            vals = value if isinstance(value, list) else [value]
            labels = [_label_of(axes, str(name), v, file, lines(("exclude", i, name)), f"exclude[{i}].{name}") for v in vals]
            if point[str(name)][0] not in labels:
                match = False
        if match:
            return True
    return False


def _parse_include(item: dict, axes, file, lines, i) -> tuple[dict, dict]:
    point, extra = {}, {}
    for name, value in item.items():
        name = str(name)
        if name in axes and (subschema(tuple(name.split("."))) is None
                             or format_value(value) in [label for label, _ in axes[name]]):
            label = _label_of(axes, name, value, file, lines(("include", i, name)), f"include[{i}].{name}")
            point[name] = next(v for v in axes[name] if v[0] == label)
        else:  # a dotted key (possibly a value outside its axis): a plain override of this one run
            check_dotted_key(name, file=file, line=lines(("include", i, name)))
            validate(value, subschema(tuple(name.split("."))) or {}, file=file,
                     lines=lambda p, name=name: lines(("include", i, name)), prefix=tuple(name.split(".")))
            extra[name] = value
    return point, extra


BUDGET_OF = "budget_of"
MATCHABLE_BUDGETS = ("flops",)


def _check_budget_of(directive, axes, where: tuple[str, str], file, lines) -> dict:
    """A bundle's `budget_of: {unit: flops, <axis>: <value>, ...}`: the unit, and the axis values that turn a run
    of this bundle into the run whose expected compute it gets."""
    name, label = where
    key = f"grid.{name}.{label}.{BUDGET_OF}"
    line = lines(("grid", name, label, BUDGET_OF)) or lines(("grid", name, label))
    if not isinstance(directive, dict) or not directive:
        raise ConfigError(f"{BUDGET_OF} must map `unit` and axis names to values, e.g. "
                          f"{{unit: flops, {name}: fomaml}}", file=file, key=key, line=line)
    directive = dict(directive)
    unit = directive.pop("unit", "flops")
    if unit not in MATCHABLE_BUDGETS:
        raise ConfigError(f"{BUDGET_OF}.unit must be one of {', '.join(MATCHABLE_BUDGETS)}, got {unit!r}",
                          file=file, key=f"{key}.unit", line=line)
    if not directive:
        raise ConfigError(f"{BUDGET_OF} names no axis value: which run's compute should this run get?",
                          file=file, key=key, line=line)
    ref = {}
    for axis, value in directive.items():
        axis = str(axis)
        if axis not in axes:
            raise ConfigError(f"{BUDGET_OF}: '{axis}' is not an axis of the grid ({', '.join(axes)})",
                              file=file, key=f"{key}.{axis}", line=line)
        labels = [lb for lb, _ in axes[axis]]
        if format_value(value) not in labels:
            raise ConfigError(f"{BUDGET_OF}: axis '{axis}' has no value {value!r} ({', '.join(labels)})",
                              file=file, key=f"{key}.{axis}", line=line)
        ref[axis] = next(v for v in axes[axis] if v[0] == format_value(value))
    return {"unit": unit, "ref": ref, "key": key, "line": line}


def _matched_budget(point: dict, refs: dict, axes, base: dict, file, lines, index: ContentIndex) -> dict | None:
    """`train.budget` of a run whose bundle says `budget_of`: the expected FLOPs of the run it names (this run's
    point with the named axis values), as `metapretrain.cost.run_cost` predicts them from the config."""
    hits = [refs[(name, value[0])] for name, value in point.items() if (name, value[0]) in refs]
    if not hits:
        return None
    if len(hits) > 1:
        raise ConfigError(f"a run has two {BUDGET_OF} bundles ({hits[0]['key']}, {hits[1]['key']})", file=file,
                          key=hits[1]["key"], line=hits[1]["line"])
    directive = hits[0]
    ref_point = dict(point) | directive["ref"]
    if any((name, value[0]) in refs for name, value in ref_point.items()):
        raise ConfigError(f"{BUDGET_OF} names a run that itself has a {BUDGET_OF} budget", file=file,
                          key=directive["key"], line=directive["line"])
    from metapretrain.cost import run_cost

    ref = _make_run(ref_point, axes, base, file, lines, index, source="budget_of")
    return {"train": {"budget": {"unit": directive["unit"], "value": float(run_cost(ref.typed).flops)}}}


def _make_run(point: dict, axes, base: dict, file, lines, index: ContentIndex, source: str,
              extra: dict | None = None, budget: dict | None = None) -> Run:
    cfg = base
    for name in axes:
        if name in point:
            cfg = deep_merge(cfg, point[name][1])
    if budget is not None:  # a `budget_of` bundle: the compute of the run it names
        cfg = deep_merge(cfg, budget)
    cfg = deep_merge(cfg, nest(extra or {}))  # an include's own overrides win over its axis bundles
    resolved = fill_defaults(cfg)
    labels = {name: point[name][0] for name in point} | {k: format_value(v) for k, v in (extra or {}).items()}
    run_id = "/".join(f"{k}~{v}" for k, v in sorted(labels.items())) or "base"
    # Every part merged here (defaults, each axis value, include overrides, CLI overrides) was validated on its
    # own and schema defaults are valid, so the merged config is schema-valid; only cross-key checks remain.
    from metapretrain.config.semantics import check

    check(resolved, file=file, run_id=run_id, lines=lines)
    return Run(run_id=run_id, axes=labels, config=resolved, hash=run_hash(resolved, index), source=source,
               tok_id=tokenize_id(resolved, index))
