"""Meta-learning steps: episode builders and meta-learners, registered by name.

Importing this package registers the SMLMT episode builder and the learners
`fomaml`, `maml2`, `reptile`, `maml_ntp` as training step kinds.
"""

from metapretrain.meta import fomaml, maml2, maml_ntp, reptile, smlmt  # noqa: F401  (register on import)
from metapretrain.meta.registry import (
    episode_builder,
    known_learners,
    learner,
    register_episode_builder,
    register_learner,
)

__all__ = ["episode_builder", "known_learners", "learner", "register_episode_builder", "register_learner"]
