"""Read YAML while remembering the line of every key, for error messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from metapretrain.config.errors import ConfigError
from metapretrain.config.values import Loader, load_yaml


class PositionedYAML:
    """A YAML document (`data`, read by config.values.Loader) plus the 1-based line of each key path."""

    def __init__(self, text: str, file: str | None = None):
        self.file = file
        loader = Loader(text)
        try:  # one parse for the data and the line map, so both see the same types
            node = loader.get_single_node()
            self.data = loader.construct_document(node) if node is not None else None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            raise ConfigError(f"not valid YAML: {getattr(exc, 'problem', exc)}", file=file,
                              line=mark.line + 1 if mark else None) from None
        finally:
            loader.dispose()
        self.lines: dict[tuple, int] = {}
        if node is not None:
            self._walk(node, ())

    @classmethod
    def from_file(cls, path: str | Path) -> PositionedYAML:
        from metapretrain.io import InputError, read_text

        path = Path(path)
        try:
            text = read_text(path)
        except FileNotFoundError:
            raise ConfigError("file not found", file=str(path)) from None
        except InputError as exc:
            raise ConfigError(exc.problem, file=exc.file, line=exc.line) from None
        return cls(text, str(path))

    def _walk(self, node: yaml.Node, path: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                key = load_yaml(yaml.serialize(key_node)) if not isinstance(key_node, yaml.ScalarNode) else key_node.value
                self.lines[path + (key,)] = key_node.start_mark.line + 1
                self._walk(value_node, path + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                self._walk(item, path + (i,))

    def line(self, path: tuple) -> int | None:
        """Line of the deepest existing prefix of `path` (the key itself, else its parent)."""
        path = tuple(path)
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None


def get(data: Any, path: tuple) -> Any:
    for part in path:
        data = data[part]
    return data
