"""Config: JSON Schema, typed sections, loading with file:line errors."""

from metapretrain.config.errors import ConfigError
from metapretrain.config.load import load_run_config, write_run_config
from metapretrain.config.types import RunConfig

__all__ = ["ConfigError", "RunConfig", "load_run_config", "write_run_config"]
