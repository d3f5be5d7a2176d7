"""Data that a config names but that is missing or unusable."""

from __future__ import annotations

from metapretrain.config.errors import ConfigError


class DataError(ConfigError):
    """A missing data file or set; `key` is the config key that names it and `value` the entry of it
    (a corpus pattern, a train set), so the experiment file's line can be found."""

    def __init__(self, message: str, *, key: str, value: str | None = None, file: str | None = None,
                 line: int | None = None):
        super().__init__(message, file=file, key=key, line=line)
        self.value = value
