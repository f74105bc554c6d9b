"""Reading config YAML safely (size, text encoding, nesting depth) and ``--set`` overrides.

:mod:`lilaw_med.run.config` re-exports these; it validates what they read.

Example::

    raw = load_yaml_file("chest.yaml")                       # a plain mapping, not yet validated
    raw = apply_overrides(raw, ["train.epochs=5", "data.options.spatial_size=[64, 64]"])
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from lilaw_med.run.config_schema import ConfigError

__all__ = ["MAX_CONFIG_BYTES", "MAX_CONFIG_DEPTH", "apply_overrides", "load_yaml_file", "parse_override"]

MAX_CONFIG_DEPTH = 32
"""The deepest nesting of mappings and lists a config file or ``--set`` value may have (a config is
sections of keys with small values: 4 levels are used)."""
MAX_CONFIG_BYTES = 16 * 2**20
"""The largest config file read (configs are a few kB)."""


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A one-line description of a YAML error (with its line when known)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def _load_yaml(text: str, source: str) -> Any:
    """``yaml.safe_load`` of ``text`` after checking its nesting depth on the parser's event stream.

    PyYAML's parser is iterative but its composer recurses once per level, so a 20,000-deep document
    would end in a ``RecursionError``; the depth is checked first, without building anything.

    Raises:
        ConfigError: naming ``source``, when the text is not YAML or nests deeper than :data:`MAX_CONFIG_DEPTH`.
    """
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                depth += 1
                if depth > MAX_CONFIG_DEPTH:
                    raise ConfigError(
                        f"{source}: nested deeper than {MAX_CONFIG_DEPTH} levels (at line {event.start_mark.line + 1}); "
                        "a config holds sections of keys with small values."
                    )
            elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{source}: not valid YAML: {_yaml_problem(e)}") from None


def load_yaml_file(path: str | os.PathLike) -> Any:
    """Reads a YAML file (safe-loaded) with the limits of a config: size, text encoding, depth.

    Args:
        path: the file.

    Returns:
        What it holds (``None`` for an empty file).

    Raises:
        FileNotFoundError: when it does not exist.
        ConfigError: naming the file, when it is larger than :data:`MAX_CONFIG_BYTES`, not UTF-8 text
            (a binary file), not YAML, or nested deeper than :data:`MAX_CONFIG_DEPTH`.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: {size} bytes; a config is a small YAML text file (at most {MAX_CONFIG_BYTES} bytes).")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"{path}: not a YAML text file (byte 0x{data[e.start]:02x} at offset {e.start} is not UTF-8; a binary file?)"
        ) from None
    return _load_yaml(text, str(path))


def parse_override(text: str) -> tuple[str, Any]:
    """Parses one ``--set`` override ``section.key[.sub]=value``.

    The value is read with ``yaml.safe_load`` (``1`` -> int, ``true`` -> bool, ``[32, 32]`` -> list,
    ``null`` -> None); no code is ever evaluated.

    Args:
        text: e.g. ``"train.epochs=1"``.

    Returns:
        ``(dotted_key, value)``.

    Raises:
        ConfigError: when there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.epochs=1).")
    value = _load_yaml(raw, f"override {text!r}: the value") if raw.strip() else None
    return key, value


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``--set`` overrides to a (raw or validated) config.

    Args:
        config: the config to start from (not modified).
        overrides: strings ``section.key[.sub...]=value``.

    Returns:
        A new config dict with the overrides set (validate it afterwards).

    Raises:
        ConfigError: on a malformed override or a path through a non-mapping.
    """
    out: dict[str, Any] = copy.deepcopy(dict(config))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {text!r} must name a section and a key (e.g. train.epochs=1).")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(parts[: i + 1])}' is not a mapping.")
            node = child
        node[parts[-1]] = value
    return out
