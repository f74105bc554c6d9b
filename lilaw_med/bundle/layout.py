"""Where LiLAW's pieces live in one MONAI classification bundle's training config: :func:`find_layout`.

MONAI merges config files by id, so an overlay must name the ids of the bundle it edits; model-zoo
bundles name the same things differently. :func:`find_layout` reads the training config with
MONAI's :class:`~monai.bundle.ConfigParser` and finds each piece by structure, never by an expected
name (the rules: configs/bundle/README.md); where a piece is missing or ambiguous,
:class:`LayoutError` names it and the option that sets it.
"""

from __future__ import annotations

import copy
import importlib
import os
import pydoc
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ComponentLocator, ConfigParser

from lilaw_med.errors import InputError, one_line

__all__ = ["TRAIN_CONFIG_NAMES", "BundleLayout", "LayoutError", "find_layout", "follow_ref", "get_value"]

# the training config of a bundle, in the order MONAI's model zoo uses them
TRAIN_CONFIG_NAMES = ("train.json", "train.yaml", "train.yml")

# a plain reference: the whole value is "@id" (an expression like "$@id.to(dev)" is not)
_PLAIN_REF = re.compile(r"^@([A-Za-z0-9_#:\-.]+)$")
_MODELS_FALLBACK = "$@bundle_root + '/models'"


class LayoutError(InputError):
    """A piece of the bundle that :func:`find_layout` could not find or choose; one line that names
    the option setting it (an ``InputError``: the CLI prints it without a traceback)."""


@dataclass(frozen=True)
class BundleLayout:
    """Where the pieces LiLAW needs live in one bundle's training config (ids as MONAI writes them).

    Attributes:
        bundle_root: the bundle folder.
        config_file: the training config, relative to ``bundle_root`` (``configs/train.json``).
        trainer_id: the ``SupervisedTrainer`` component.
        loss_id: the id holding the loss the trainer uses (``None`` when it is written inside the
            trainer: ``loss_inline`` then holds its raw config).
        loss_is_component: whether the loss is a component dict (``_target_``) whose ``reduction``
            the overlay can set; otherwise an expression, made per-sample by :func:`per_sample_loss`.
        loss_inline: the raw loss config written inside the trainer (``None`` for a loss under an id).
        handlers_id: the list the trainer's ``train_handlers`` refers to; ``None`` when the list is
            written inside the trainer (``handlers_inline``) or absent.
        handlers_inline: the trainer's own ``train_handlers`` list (``None`` for a list under an id).
        val_dataset_id: the validation dataset (the evaluator's loader's dataset).
        val_batch_size: its loader's batch size: an ``@id`` reference or an integer.
        val_loader_id: that loader (``None`` when the dataset was given by option).
        evaluator_id: the evaluator (``None`` when not found and not needed).
        train_loader_id: the trainer's ``train_data_loader``.
        ckpt_dir: where the bundle saves models, as a config value (``@ckpt_dir``, an expression).
        raw: the bundle's training config with macros and relative ids resolved.
    """

    bundle_root: Path
    config_file: str
    trainer_id: str
    loss_id: str | None
    loss_is_component: bool
    loss_inline: Any
    handlers_id: str | None
    handlers_inline: list[Any] | None
    val_dataset_id: str
    val_batch_size: str | int
    val_loader_id: str | None
    evaluator_id: str | None
    train_loader_id: str | None
    ckpt_dir: str
    raw: Mapping[str, Any]


# ------------------------------------------------------------------------------------ config walking
def _walk(node: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every (id, value) of a raw config, depth first; ids joined by ``#`` as MONAI writes them."""
    if isinstance(node, Mapping):
        items = ((str(k), v) for k, v in node.items())
    elif isinstance(node, list):
        items = ((str(i), v) for i, v in enumerate(node))
    else:
        return
    for key, value in items:
        cid = f"{prefix}#{key}" if prefix else key
        yield cid, value
        yield from _walk(value, cid)


def get_value(raw: Mapping[str, Any], cid: str) -> Any:
    """The raw value at ``cid`` (``None`` when there is none)."""
    node: Any = raw
    for key in cid.replace("::", "#").split("#"):
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return None
    return node


def _has(raw: Mapping[str, Any], cid: str) -> bool:
    parent, _, key = cid.replace("::", "#").rpartition("#")
    node = get_value(raw, parent) if parent else raw
    return (isinstance(node, Mapping) and key in node) or (
        isinstance(node, list) and key.isdigit() and int(key) < len(node)
    )


def follow_ref(raw: Mapping[str, Any], cid: str) -> str:
    """The id a chain of plain references (``"@a"`` -> ``"@b"`` -> value) ends at (``#``-separated)."""
    cid = cid.replace("::", "#")
    seen = {cid}
    while True:
        match = _PLAIN_REF.match(get_value(raw, cid)) if isinstance(get_value(raw, cid), str) else None
        if match is None:
            return cid
        cid = match.group(1).replace("::", "#")
        if cid in seen:
            raise LayoutError(f"the reference @{cid} of the bundle refers to itself.")
        seen.add(cid)


_LOCATOR: Any = None


def _component_class(target: Any) -> type | None:
    """The class a ``_target_`` names, as MONAI would find it; ``None`` when it cannot be imported
    here (a bundle's own ``scripts`` module, an expression)."""
    global _LOCATOR
    if not isinstance(target, str) or target[:1] in ("$", "@", "%"):
        return None
    try:
        if "." in target:
            found = pydoc.locate(target)
        else:
            if _LOCATOR is None:

                _LOCATOR = ComponentLocator()
            module = _LOCATOR.get_component_module_name(target)
            module = module[0] if isinstance(module, list) else module
            found = getattr(importlib.import_module(module), target) if module else None
    except Exception:  # an unimportable user module: fall back on the name
        return None
    return found if isinstance(found, type) else None


def _is_a(value: Any, base: str) -> bool:
    """Whether a raw component's ``_target_`` is the class ``base`` (a dotted name) or a subclass of
    it; by the class name when the target cannot be imported here."""
    if not isinstance(value, Mapping) or "_target_" not in value:
        return False
    target, base_cls = value["_target_"], pydoc.locate(base)
    cls = _component_class(target)
    if cls is None or not isinstance(base_cls, type):
        return isinstance(target, str) and target.rsplit(".", 1)[-1] == base.rsplit(".", 1)[-1]
    return issubclass(cls, base_cls)


def _components(raw: Mapping[str, Any], base: str) -> list[str]:
    return [cid for cid, value in _walk(raw) if _is_a(value, base)]


def _ids(ids: list[str]) -> str:
    return ", ".join(ids)


# ------------------------------------------------------------------------------------ the layout
def _train_config(bundle_root: Path, name: str | None) -> Path:
    configs = bundle_root / "configs"
    if name is not None:
        path = Path(name) if Path(name).is_absolute() else bundle_root / name
        if not path.is_file() and (configs / name).is_file():
            path = configs / name
        if not path.is_file():
            raise LayoutError(f"{bundle_root}: no training config {name} (--train-config).")
        return path
    found = [configs / n for n in TRAIN_CONFIG_NAMES if (configs / n).is_file()]
    if not found:
        raise LayoutError(
            f"{bundle_root}: no configs/train.json or configs/train.yaml; name the training config with --train-config."
        )
    if len(found) > 1:
        raise LayoutError(
            f"{bundle_root}: both {' and '.join(p.name for p in found)}; choose one with --train-config."
        )
    return found[0]


def _read_raw(path: Path) -> dict[str, Any]:

    parser = ConfigParser()
    try:
        parser.read_config(str(path))
        parser.resolve_macro_and_relative_ids()  # "%id" macros and "@##x" relative ids made absolute
    except Exception as e:  # a broken config is the user's
        raise LayoutError(f"{path}: cannot be read as a MONAI config: {one_line(e)}") from None
    raw = parser.get()
    if not isinstance(raw, dict):
        raise LayoutError(f"{path}: the config is not a mapping of ids.")
    return raw


def _find_trainer(raw: Mapping[str, Any], trainer_id: str | None) -> str:
    if trainer_id is not None:
        if not isinstance(get_value(raw, trainer_id), Mapping):
            raise LayoutError(f"--trainer-id {trainer_id}: no component with that id in the bundle's training config.")
        return trainer_id
    found = _components(raw, "monai.engines.SupervisedTrainer")
    if len(found) != 1:
        what = "no SupervisedTrainer" if not found else f"{len(found)} SupervisedTrainers ({_ids(found)})"
        raise LayoutError(f"could not find the trainer: {what} in the training config; set it with --trainer-id.")
    return found[0]


def _find_loss(raw: Mapping[str, Any], trainer: str, loss_id: str | None) -> tuple[str | None, bool, Any]:
    """``(loss_id, is_component, inline_raw)`` of the loss the trainer uses."""
    if loss_id is None:
        if get_value(raw, f"{trainer}#loss_function") is None:
            raise LayoutError(f"could not find the loss: {trainer} has no loss_function; set it with --loss-id.")
        loss_id = follow_ref(raw, f"{trainer}#loss_function")
    elif not _has(raw, loss_id):
        raise LayoutError(f"--loss-id {loss_id}: no such id in the bundle's training config.")
    value = get_value(raw, loss_id)
    is_component = isinstance(value, Mapping) and "_target_" in value
    if not is_component and not (isinstance(value, str) and value.startswith("$")):
        raise LayoutError(
            f"could not find the loss: {loss_id} is {value!r}, neither a component nor an expression; "
            "set it with --loss-id."
        )
    if loss_id == f"{trainer}#loss_function":  # written inside the trainer, which the overlay rewires
        return None, is_component, copy.deepcopy(value)
    return loss_id, is_component, None


def _find_handlers(raw: Mapping[str, Any], trainer: str, handlers_id: str | None) -> tuple[str | None, list | None]:
    if handlers_id is not None:
        if not isinstance(get_value(raw, handlers_id), list):
            raise LayoutError(f"--handlers-id {handlers_id}: no list with that id in the bundle's training config.")
        return handlers_id, None
    key = f"{trainer}#train_handlers"
    if get_value(raw, key) is None:
        return None, None  # no handlers yet: the overlay gives the trainer its own list
    target = follow_ref(raw, key)
    value = get_value(raw, target)
    if not isinstance(value, list):
        raise LayoutError(
            f"could not find the train handler list: {trainer}#train_handlers is {get_value(raw, key)!r}, not a list; "
            "set it with --handlers-id."
        )
    return (None, copy.deepcopy(value)) if target == key else (target, None)


def _find_evaluator(raw: Mapping[str, Any], trainer: str, handlers: list[Any]) -> str | None:
    """The evaluator the trainer's ValidationHandler runs, else the only SupervisedEvaluator."""
    for handler in handlers:
        if isinstance(handler, str) and _PLAIN_REF.match(handler):
            handler = get_value(raw, follow_ref(raw, handler[1:]))
        if _is_a(handler, "monai.handlers.ValidationHandler"):
            validator = handler.get("validator")
            if isinstance(validator, str) and _PLAIN_REF.match(validator):
                return follow_ref(raw, validator[1:])
    found = _components(raw, "monai.engines.SupervisedEvaluator")
    return found[0] if len(found) == 1 else None


def _find_val_data(
    raw: Mapping[str, Any], evaluator: str | None, val_dataset_id: str | None, val_batch_size: int | None
) -> tuple[str, str | int, str | None]:
    """``(dataset_id, batch_size, loader_id)`` of the validation data."""
    loader = follow_ref(raw, f"{evaluator}#val_data_loader") if evaluator and get_value(raw, f"{evaluator}#val_data_loader") else None
    if loader is not None and not isinstance(get_value(raw, loader), Mapping):
        loader = None  # an expression: its dataset cannot be read from the config
    if val_dataset_id is not None:
        if not _has(raw, val_dataset_id):
            raise LayoutError(f"--val-dataset-id {val_dataset_id}: no such id in the bundle's training config.")
        dataset = val_dataset_id
    else:
        if loader is None or get_value(raw, f"{loader}#dataset") is None:
            where = f"the loader of {evaluator} is not a DataLoader component" if evaluator else (
                "no evaluator (a ValidationHandler's validator or a single SupervisedEvaluator)")
            raise LayoutError(f"could not find the validation dataset: {where}; set it with --val-dataset-id.")
        dataset = follow_ref(raw, f"{loader}#dataset")
    if val_batch_size is not None:
        return dataset, int(val_batch_size), loader
    if loader is None:
        raise LayoutError(
            f"could not find the validation batch size: no validation loader for {dataset}; set it with --val-batch-size."
        )
    # the loader's own value, by reference; DataLoader's default when it sets none
    return dataset, (f"@{loader}#batch_size" if _has(raw, f"{loader}#batch_size") else 1), loader


def _find_ckpt_dir(raw: Mapping[str, Any], ckpt_dir: str | None) -> str:
    if ckpt_dir is not None:
        return ckpt_dir
    dirs: list[Any] = []
    for cid in _components(raw, "monai.handlers.CheckpointSaver"):
        value = get_value(raw, f"{cid}#save_dir")
        if value is not None and value not in dirs:
            dirs.append(value)
    if len(dirs) > 1:
        raise LayoutError(
            f"could not decide where the bundle saves models: its CheckpointSavers use {', '.join(map(repr, dirs))}; "
            "set it with --ckpt-dir."
        )
    if dirs:
        return dirs[0] if isinstance(dirs[0], str) else str(dirs[0])
    return "@ckpt_dir" if "ckpt_dir" in raw else _MODELS_FALLBACK


def find_layout(
    bundle_root: str | os.PathLike,
    *,
    train_config: str | None = None,
    trainer_id: str | None = None,
    loss_id: str | None = None,
    handlers_id: str | None = None,
    val_dataset_id: str | None = None,
    val_batch_size: int | None = None,
    ckpt_dir: str | None = None,
) -> BundleLayout:
    """Finds, by structure, where a bundle's training config keeps what LiLAW needs.

    Every keyword argument overrides one search (the CLI option of the same name).

    Args:
        bundle_root: the bundle folder (``configs/train.json`` or ``configs/train.yaml`` inside).
        train_config: the training config, relative to the bundle or under ``configs/``.
        trainer_id: the ``SupervisedTrainer``'s id.
        loss_id: the id of the loss to wrap (a component or an expression).
        handlers_id: the id of the train handler list to append to.
        val_dataset_id: the id of the dataset the meta step reads.
        val_batch_size: the meta step's batch size (default: the validation loader's).
        ckpt_dir: where ``lilaw.pt`` goes, as a config value (default: the bundle's model folder).

    Returns:
        The :class:`BundleLayout`.

    Raises:
        LayoutError: when a piece is missing or ambiguous; the message names it and its option.

    Example::

        layout = find_layout("spleen_classification_bundle")  # or loss_id="lossfn" where it is ambiguous
        layout.trainer_id, layout.loss_id, layout.val_dataset_id
    """
    root = Path(bundle_root)
    if not root.is_dir():
        raise LayoutError(f"--bundle {root}: not a folder.")
    path = _train_config(root, train_config)
    raw = _read_raw(path)
    trainer = _find_trainer(raw, trainer_id)
    loss, loss_is_component, loss_inline = _find_loss(raw, trainer, loss_id)
    handlers, handlers_inline = _find_handlers(raw, trainer, handlers_id)
    listed = handlers_inline if handlers_inline is not None else (get_value(raw, handlers) if handlers else [])
    evaluator = _find_evaluator(raw, trainer, list(listed or []))
    dataset, batch_size, loader = _find_val_data(raw, evaluator, val_dataset_id, val_batch_size)
    train_loader = follow_ref(raw, f"{trainer}#train_data_loader") if get_value(raw, f"{trainer}#train_data_loader") else None
    try:
        rel = path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        rel = str(path.resolve())
    return BundleLayout(
        bundle_root=root, config_file=rel, trainer_id=trainer, loss_id=loss, loss_is_component=loss_is_component,
        loss_inline=loss_inline, handlers_id=handlers, handlers_inline=handlers_inline, val_dataset_id=dataset,
        val_batch_size=batch_size, val_loader_id=loader, evaluator_id=evaluator, train_loader_id=train_loader,
        ckpt_dir=_find_ckpt_dir(raw, ckpt_dir), raw=raw,
    )
