"""The LLaMA-style decoder, its presets and FLOP accounting.

`Decoder` is imported lazily so that `ModelConfig` and the presets are
available without importing torch (config validation uses them).
"""

from metapretrain.model.config import ModelConfig
from metapretrain.model.presets import PRESETS

__all__ = ["Decoder", "ModelConfig", "PRESETS"]


def __getattr__(name):
    if name == "Decoder":
        from metapretrain.model.decoder import Decoder

        return Decoder
    raise AttributeError(f"module 'metapretrain.model' has no attribute {name!r}")
