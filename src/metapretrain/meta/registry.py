"""Registries of the meta package: meta-learners and episode builders, by name.

Meta-learners are step kinds: `@register_learner("name")` registers one as the
step kind `name` and as the value `meta.learner: name`, so the training loop
reaches it through `step_kind(name)` without knowing which one it runs. This
registry is the only list of learner names; the run schema's `meta.learner`
enum is checked against it (tests/test_meta.py). Episode builders
(`meta.episode.builder`) register here too.
"""

from __future__ import annotations

from metapretrain.registry import Registry
from metapretrain.train.steps import register_step, step_kind

_LEARNERS = Registry("meta.learner", modules=["metapretrain.meta"])  # learners register on import
_BUILDERS = Registry("meta.episode.builder", modules=["metapretrain.meta"])  # builders register on import


def register_learner(name: str):
    """Class decorator: make a step kind the meta-learner `meta.learner: name` (and the step kind `name`)."""

    def wrap(cls):
        register_step(name)(cls)
        _LEARNERS.add(name, cls)
        return cls

    return wrap


def known_learners() -> list[str]:
    """The registered `meta.learner` names (built-ins loaded), sorted; `none` is not one."""
    return _LEARNERS.names()


def learner(name: str) -> type:
    """The step-kind class of a meta-learner (`meta.learner`)."""
    _LEARNERS.lookup(name)  # KeyError naming meta.learner and the known learners
    return step_kind(name)


def register_episode_builder(name: str):
    """Class decorator: make an episode builder available as `meta.episode.builder: name`."""
    return _BUILDERS.register_class(name)


def known_episode_builders() -> list[str]:
    """The registered `meta.episode.builder` names (built-ins loaded), sorted."""
    return _BUILDERS.names()


def episode_builder(name: str) -> type:
    return _BUILDERS.lookup(name)
