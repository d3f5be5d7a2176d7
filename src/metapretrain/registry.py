"""Name → implementation tables that decorators fill at import time.

Four of the project's extension points are registries: step kinds (`train.steps.register_step`),
meta-learners (`meta.registry.register_learner`, step kinds too), episode builders
(`meta.registry.register_episode_builder`) and dynamics metrics (`dynamics.registry.register_metric`).
They share this class: one name maps to one implementation, registering another under a taken
name is an error, and a lookup first imports the modules that register the built-in entries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any


def _label(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None) or repr(obj)


class Registry(dict):
    """A dict of name → entry with duplicate checks, lazy loading and errors that list the known names.

    `what` names the kind of entry in messages (e.g. "step kind"); `modules` are the modules
    whose import registers the built-in entries (decorators run at import); `identity(entry)` is
    what must stay the same when a name is registered again (a module imported twice
    re-registers the same object).
    """

    def __init__(self, what: str, modules: Iterable[str] = (),
                 identity: Callable[[Any], Any] = lambda entry: entry) -> None:
        super().__init__()
        self.what = what
        self._modules = tuple(modules)
        self._identity = identity

    def add(self, name: str, entry: Any) -> Any:
        if name in self and self._identity(self[name]) is not self._identity(entry):
            raise ValueError(f"{self.what} {name!r} is registered twice "
                             f"({_label(self._identity(self[name]))}, {_label(self._identity(entry))})")
        self[name] = entry
        return entry

    def register_class(self, name: str):
        """Class decorator: register the class under `name` and set its `name` attribute."""

        def wrap(cls):
            self.add(name, cls)
            cls.name = name
            return cls

        return wrap

    def load(self) -> None:
        """Import the plugins (metapretrain.plugins) and the modules that register the built-in entries
        (a no-op once imported)."""
        from metapretrain import plugins

        plugins.load()
        for module in self._modules:
            importlib.import_module(module)

    def names(self) -> list[str]:
        """Every registered name (built-ins loaded), sorted."""
        self.load()
        return sorted(self)

    def lookup(self, name: str) -> Any:
        """The entry registered as `name`; KeyError listing the known names otherwise."""
        if name not in self:
            self.load()
        try:
            return self[name]
        except KeyError:
            raise KeyError(f"unknown {self.what} {name!r}; known: {', '.join(sorted(self))}") from None
