"""The machinery of the config schema: how one key is declared (:func:`setting`), checked
(:func:`check_value`) and compared (:func:`config_differences`).

The sections themselves (which keys exist, their defaults and ranges) are in
:mod:`lilaw_med.run.config`, which re-exports what callers use from here.

Example::

    from lilaw_med.run.config_schema import check_value, setting

    epochs: int = setting(10, (int,), minimum=1, resumable="the run goes on for more epochs")
"""

from __future__ import annotations

import copy
import difflib
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lilaw_med.errors import InputError

__all__ = ["ConfigError", "Field", "check_value", "config_differences", "setting", "suggest"]

_INT64 = 2**63 - 1


class ConfigError(InputError):
    """A config that does not follow the schema; the message names the field."""


@dataclass(frozen=True)
class Field:
    """How one config key is checked.

    Attributes:
        default: the value used when the key is absent.
        types: accepted Python types (``bool`` is never accepted for ``int``/``float``).
        choices: allowed values, when the field is an enumeration (a registry's live mapping is
            read at each check, so a preset or loss registered later is accepted).
        minimum: inclusive lower bound for numbers.
        maximum: inclusive upper bound for numbers.
        exclusive_minimum: ``minimum`` is exclusive.
        nullable: ``None`` (YAML ``null``) is allowed.
        help: one line describing the field (used in docs and error messages).
        item_types: accepted types of a list's items.
        words: the strings a number field also accepts (``"auto"``: decided at run time).
        resumable: why the field may change when a run is resumed (``--resume --set``) without
            changing what the run computes; ``None``: a change is refused.
    """

    default: Any
    types: tuple[type, ...]
    choices: Collection[Any] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    help: str = ""
    item_types: tuple[type, ...] | None = None
    words: Collection[str] | None = None
    resumable: str | None = None


def setting(default: Any, types: tuple[type, ...], **checks: Any) -> Any:
    """A section's dataclass field: its default, with its :class:`Field` (the checks) as metadata.

    Args:
        default: the default value (lists and dicts are copied for each instance).
        types: accepted Python types.
        checks: the other arguments of :class:`Field`.

    Returns:
        A ``dataclasses.field``.
    """
    spec = Field(default, types, **checks)
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata={"field": spec})
    return field(default=default, metadata={"field": spec})


def suggest(name: str, valid: Iterable[str]) -> str:
    """The end of an "unknown key" message: the closest valid name, or the list of valid ones."""
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(valid))}."


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "mapping"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_type(path: str, spec: Field, value: Any) -> None:
    if isinstance(value, bool) and bool not in spec.types:
        raise ConfigError(f"config field '{path}' must be {_type_name(spec.types)} but is the boolean {value}.")
    if not isinstance(value, spec.types):
        raise ConfigError(
            f"config field '{path}' must be {_type_name(spec.types)} but is {type(value).__name__} {value!r}."
        )


def _check_word(path: str, spec: Field, value: str) -> None:
    words = list(spec.words or ())
    if value not in words:
        raise ConfigError(
            f"config field '{path}' must be a number or one of {words} but is {value!r}" + suggest(value, words)
        )


def _check_choice(path: str, spec: Field, value: Any) -> None:
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(
            f"config field '{path}' must be one of {list(spec.choices)} but is {value!r}"
            + (suggest(value, [str(c) for c in spec.choices]) if isinstance(value, str) else ".")
        )


def _check_number(path: str, spec: Field, value: int | float) -> int | float:
    """Checks a number's size, finiteness and range; gives a float for a field that takes both."""
    if isinstance(value, int) and abs(value) > _INT64:
        # YAML reads any number of digits; torch and NumPy would overflow later, mid-run
        raise ConfigError(f"config field '{path}' must fit in a 64-bit integer but is {value}.")
    if not math.isfinite(value):
        raise ConfigError(f"config field '{path}' must be finite but is {value}.")
    _check_range(path, spec, value)
    return float(value) if float in spec.types and int in spec.types else value


def _check_range(path: str, spec: Field, value: int | float) -> None:
    if spec.minimum is not None:
        too_low = value <= spec.minimum if spec.exclusive_minimum else value < spec.minimum
        if too_low:
            op = ">" if spec.exclusive_minimum else ">="
            raise ConfigError(f"config field '{path}' must be {op} {spec.minimum} but is {value}.")
    if spec.maximum is not None and value > spec.maximum:
        raise ConfigError(f"config field '{path}' must be <= {spec.maximum} but is {value}.")


def _check_items(path: str, spec: Field, value: list) -> None:
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, spec.item_types or ()):
            raise ConfigError(f"config field '{path}[{i}]' must be {_type_name(spec.item_types or ())} but is {item!r}.")


def check_value(path: str, spec: Field, value: Any) -> Any:
    """Checks one value against its field and returns a copy (an ``int`` becomes a ``float`` for a
    field that takes both).

    Args:
        path: the dotted key, for the message (``"train.epochs"``).
        spec: the field.
        value: the value read.

    Returns:
        The value to keep.

    Raises:
        ConfigError: naming ``path``, on a wrong type, choice, range or list item.
    """
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"config field '{path}' must not be null (expected {_type_name(spec.types)}).")
    _check_type(path, spec, value)
    if spec.words is not None and isinstance(value, str):
        _check_word(path, spec, value)
        return value
    _check_choice(path, spec, value)
    if _is_number(value):
        value = _check_number(path, spec, value)
    if isinstance(value, list) and spec.item_types is not None:
        _check_items(path, spec, value)
    return copy.deepcopy(value)


def config_differences(a: Any, b: Any, path: str = "") -> dict[str, tuple[Any, Any]]:
    """The dotted keys whose values differ between two nested config dicts, with both values.

    Mappings are compared key by key (a key absent on one side counts as ``None``); anything else
    is compared whole (a list is one value).

    Args:
        a: the first config (or value).
        b: the second.
        path: the dotted key of ``a`` and ``b`` (empty at the top).

    Returns:
        ``{dotted_key: (value in a, value in b)}`` in sorted key order; empty when they are equal.

    Example::

        config_differences({"train": {"seed": 0}}, {"train": {"seed": 5}})  # {"train.seed": (0, 5)}
    """
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: dict[str, tuple[Any, Any]] = {}
        for key in sorted(set(a) | set(b), key=str):
            out.update(config_differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key)))
        return out
    return {} if a == b else {path: (a, b)}
