"""Registries of the meta package: episode builders by name; meta-learners are step kinds.

Meta-learners register with `metapretrain.train.steps.register_step` under
their `meta.learner` name, so the training loop reaches them through
`step_kind(cfg.meta.learner)` without knowing which one it runs. Episode
builders (`meta.episode.builder`) register here.
"""

from __future__ import annotations

LEARNERS = ("fomaml", "maml2", "reptile", "maml_ntp")  # the schema's meta.learner values other than none

_BUILDERS: dict[str, type] = {}


def register_episode_builder(name: str):
    """Class decorator: make an episode builder available as `meta.episode.builder: name`."""

    def wrap(cls):
        if name in _BUILDERS and _BUILDERS[name] is not cls:
            raise ValueError(f"episode builder {name!r} is registered twice ({_BUILDERS[name].__name__}, {cls.__name__})")
        cls.name = name
        _BUILDERS[name] = cls
        return cls

    return wrap


def episode_builder(name: str) -> type:
    import metapretrain.meta  # noqa: F401  (builders register on import)

    try:
        return _BUILDERS[name]
    except KeyError:
        raise KeyError(f"unknown meta.episode.builder {name!r}; known: {', '.join(sorted(_BUILDERS))}") from None


def learner(name: str) -> type:
    """The step-kind class of a meta-learner (`meta.learner`)."""
    from metapretrain.train.steps import step_kind

    if name not in LEARNERS:
        raise KeyError(f"unknown meta.learner {name!r}; known: {', '.join(LEARNERS)}")
    return step_kind(name)
