"""Read a YAML file into a pydantic model, with errors that point at the file's lines.

``load_yaml_model(path, Model)`` parses with PyYAML's node API so every mapping key and
sequence item keeps its line; a pydantic validation error's location (``policies.0.lam``) is
mapped back to the line that holds it: ``config.yaml:12: policies.0.lam: Input should be a
valid number``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file that cannot be read or validated; one line per problem."""


def _lines(node: yaml.Node, path: tuple[str, ...], out: dict[tuple[str, ...], int]) -> None:
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            sub = (*path, str(key.value))
            out[sub] = key.start_mark.line + 1
            _lines(value, sub, out)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _lines(item, (*path, str(i)), out)


def _line_of(loc: tuple[str, ...], lines: dict[tuple[str, ...], int]) -> int | None:
    while loc:
        if loc in lines:
            return lines[loc]
        loc = loc[:-1]
    return lines.get(())


def load_yaml_model(path: Path | str, model: type[M], *, base: dict[str, Any] | None = None) -> M:
    """Validate a YAML file against ``model``; a :class:`ConfigError` names file and lines."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: expected a mapping at the top, got {type(data).__name__}")
    lines: dict[tuple[str, ...], int] = {}
    if node is not None:
        _lines(node, (), lines)
    try:
        return model.model_validate({**(base or {}), **data})
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(str(p) for p in err["loc"])
            line = _line_of(loc, lines)
            where = f"{path}:{line}" if line else str(path)
            problems.append(f"{where}: {'.'.join(loc) or '(top)'}: {err['msg']}")
        raise ConfigError("invalid configuration\n  " + "\n  ".join(problems)) from None
