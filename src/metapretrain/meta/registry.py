"""Registries of the meta package: episode builders by name; meta-learners are step kinds.

Meta-learners register with `metapretrain.train.steps.register_step` under
their `meta.learner` name, so the training loop reaches them through
`step_kind(cfg.meta.learner)` without knowing which one it runs. Episode
builders (`meta.episode.builder`) register here.
"""

from __future__ import annotations

from metapretrain.registry import Registry

LEARNERS = ("fomaml", "maml2", "reptile", "maml_ntp")  # the schema's meta.learner values other than none


_BUILDERS = Registry("meta.episode.builder", modules=["metapretrain.meta"])  # builders register on import


def register_episode_builder(name: str):
    """Class decorator: make an episode builder available as `meta.episode.builder: name`."""
    return _BUILDERS.register_class(name)


def episode_builder(name: str) -> type:
    return _BUILDERS.lookup(name)


def learner(name: str) -> type:
    """The step-kind class of a meta-learner (`meta.learner`)."""
    from metapretrain.train.steps import step_kind

    if name not in LEARNERS:
        raise KeyError(f"unknown meta.learner {name!r}; known: {', '.join(LEARNERS)}")
    return step_kind(name)
