"""Meta-learning steps: episode builders and meta-learners, registered by name."""
