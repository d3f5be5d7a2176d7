"""The LLaMA-style decoder, its presets and FLOP accounting."""

from metapretrain.model.decoder import Decoder, ModelConfig
from metapretrain.model.presets import PRESETS

__all__ = ["Decoder", "ModelConfig", "PRESETS"]
