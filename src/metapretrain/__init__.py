"""metapretrain: meta-learning during language-model pretraining, as a grid of experiments."""

__version__ = "0.1.0"
