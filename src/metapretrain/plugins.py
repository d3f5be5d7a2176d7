"""Extensions from outside the package: modules whose import registers learners, step kinds or metrics.

A plugin is an ordinary Python module that uses the registries' decorators
(`meta.registry.register_learner`, `train.steps.register_step`,
`meta.registry.register_episode_builder`, `dynamics.registry.register_metric`).
Two ways name one, and both reach every process of a run (Snakemake jobs,
SLURM jobs and their ranks inherit the environment; installed packages are
installed everywhere):

* `METAPRETRAIN_PLUGINS=mylab.learners,mylab.metrics` (comma or space separated);
* an installed package's entry point in the group `metapretrain.plugins`
  (`[project.entry-points."metapretrain.plugins"] mylab = "mylab.learners"`).

Every registry lookup and every config validation loads them first, so a
plugin's learner is a valid `meta.learner` and its metric a valid
`dynamics.metrics` entry with no edit here. docs/extending.md walks through one.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys

from metapretrain.config.errors import ConfigError

PLUGINS_ENV = "METAPRETRAIN_PLUGINS"
ENTRY_POINT_GROUP = "metapretrain.plugins"

_loaded: dict[str, str] = {}  # module name -> where it was named (env var or entry point)


@functools.cache
def _entry_points() -> tuple[tuple[str, str], ...]:
    from importlib.metadata import entry_points

    return tuple((ep.value.split(":", 1)[0], f"entry point {ep.name!r} ({ENTRY_POINT_GROUP})")
                 for ep in entry_points(group=ENTRY_POINT_GROUP))


def configured() -> list[tuple[str, str]]:
    """[(module, where it is named)] from $METAPRETRAIN_PLUGINS, then the installed entry points."""
    env = [(name, PLUGINS_ENV) for name in os.environ.get(PLUGINS_ENV, "").replace(",", " ").split()]
    return env + list(_entry_points())


def load() -> list[str]:
    """Import every configured plugin module not yet imported; the names of all loaded so far.

    A module that cannot be imported is a ConfigError naming it and where it was named.
    """
    for name, where in configured():
        if name in _loaded:
            continue
        _loaded[name] = where  # before the import: a plugin that looks a name up must not recurse here
        try:
            importlib.import_module(name)
        except Exception as exc:
            del _loaded[name]
            sys.modules.pop(name, None)
            raise ConfigError(f"plugin module {name!r} cannot be imported: {type(exc).__name__}: {exc}",
                              key=where) from exc
    return list(_loaded)
