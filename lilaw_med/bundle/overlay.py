"""The LiLAW overlay for one existing MONAI classification bundle, written with the bundle's own ids.

MONAI merges config files by id (``a#b`` sets one nested value, ``+a#b`` appends to a list), so an
overlay must name the ids of the bundle it edits. Model-zoo bundles name the same things
differently (``loss`` / ``lossfn``, ``train#trainer`` / ``trainer``, ``validate#dataset`` /
``val_dataset``), and some write the loss as an expression (``"$torch.nn.CrossEntropyLoss()"``).
:func:`find_layout` therefore reads the bundle's training config with MONAI's
:class:`~monai.bundle.ConfigParser` and finds each piece by STRUCTURE, never by an expected name:

- the trainer: the one component whose ``_target_`` is a :class:`monai.engines.SupervisedTrainer`;
- the loss: what the trainer's ``loss_function`` refers to (a component or an expression);
- the train handlers: the list the trainer's ``train_handlers`` refers to;
- the validation dataset: the dataset of the loader of the evaluator that the trainer's
  ``ValidationHandler`` runs (else of the only ``SupervisedEvaluator``), and that loader's batch size;
- where models go: the ``save_dir`` of the bundle's ``CheckpointSaver``, else ``@ckpt_dir``, else
  ``$@bundle_root + '/models'``.

Where a piece is missing or ambiguous, :class:`LayoutError` names it and the option that sets it.
:func:`lilaw_overlay` and :func:`multi_gpu_overlay` then write the two config files.
"""

from __future__ import annotations

import copy
import importlib
import inspect
import os
import pydoc
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monai.bundle import ComponentLocator, ConfigParser
from torch import nn

from lilaw_med.bundle.command import META_FILE, bundle_run_command
from lilaw_med.bundle.yaml_text import config_yaml
from lilaw_med.errors import InputError, one_line
from lilaw_med.losses import LiLAWLoss
from lilaw_med.meta_step_defaults import META_STEP_DEFAULTS
from lilaw_med.utils import atomic_write
from lilaw_med.weighting import LiLAWWeighting

__all__ = [
    "TRAIN_CONFIG_NAMES",
    "BundleLayout",
    "LayoutError",
    "find_layout",
    "lilaw_overlay",
    "multi_gpu_overlay",
    "per_sample_loss",
    "run_command",
    "write_overlays",
]

# the training config of a bundle, in the order MONAI's model zoo uses them
TRAIN_CONFIG_NAMES = ("train.json", "train.yaml", "train.yml")

# a plain reference: the whole value is "@id" (an expression like "$@id.to(dev)" is not)
_PLAIN_REF = re.compile(r"^@([A-Za-z0-9_#:\-.]+)$")
_MODELS_FALLBACK = "$@bundle_root + '/models'"

def _signature_defaults(func: Any, names: tuple[str, ...]) -> dict[str, Any]:
    params = inspect.signature(func).parameters
    return {name: params[name].default for name in names}


# the LiLAW settings of the overlay: the classes' own defaults (the packaged lilaw_overlay.yaml
# writes them out for readers; tests/bundle keeps it equal)
_SETTINGS: dict[str, Any] = {
    **_signature_defaults(LiLAWWeighting.__init__, ("alpha", "beta", "delta")),
    "lr": META_STEP_DEFAULTS["lr"],
    "weight_decay": META_STEP_DEFAULTS["weight_decay"],
    **_signature_defaults(LiLAWLoss.__init__, ("warmup_epochs",)),
    "val_mode": META_STEP_DEFAULTS["val_mode"],
    **_signature_defaults(LiLAWLoss.__init__, ("detach_weights", "normalize_weights")),
    "meta_every": META_STEP_DEFAULTS["every"],
    "epoch_budget": META_STEP_DEFAULTS["epoch_budget"],
    **_signature_defaults(LiLAWLoss.__init__, ("reduce_classes", "multi_label")),
}


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


def _get(raw: Mapping[str, Any], cid: str) -> Any:
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
    node = _get(raw, parent) if parent else raw
    return (isinstance(node, Mapping) and key in node) or (
        isinstance(node, list) and key.isdigit() and int(key) < len(node)
    )


def _follow(raw: Mapping[str, Any], cid: str) -> str:
    """The id a chain of plain references (``"@a"`` -> ``"@b"`` -> value) ends at (``#``-separated)."""
    cid = cid.replace("::", "#")
    seen = {cid}
    while True:
        match = _PLAIN_REF.match(_get(raw, cid)) if isinstance(_get(raw, cid), str) else None
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
        if not isinstance(_get(raw, trainer_id), Mapping):
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
        if _get(raw, f"{trainer}#loss_function") is None:
            raise LayoutError(f"could not find the loss: {trainer} has no loss_function; set it with --loss-id.")
        loss_id = _follow(raw, f"{trainer}#loss_function")
    elif not _has(raw, loss_id):
        raise LayoutError(f"--loss-id {loss_id}: no such id in the bundle's training config.")
    value = _get(raw, loss_id)
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
        if not isinstance(_get(raw, handlers_id), list):
            raise LayoutError(f"--handlers-id {handlers_id}: no list with that id in the bundle's training config.")
        return handlers_id, None
    key = f"{trainer}#train_handlers"
    if _get(raw, key) is None:
        return None, None  # no handlers yet: the overlay gives the trainer its own list
    target = _follow(raw, key)
    value = _get(raw, target)
    if not isinstance(value, list):
        raise LayoutError(
            f"could not find the train handler list: {trainer}#train_handlers is {_get(raw, key)!r}, not a list; "
            "set it with --handlers-id."
        )
    return (None, copy.deepcopy(value)) if target == key else (target, None)


def _find_evaluator(raw: Mapping[str, Any], trainer: str, handlers: list[Any]) -> str | None:
    """The evaluator the trainer's ValidationHandler runs, else the only SupervisedEvaluator."""
    for handler in handlers:
        if isinstance(handler, str) and _PLAIN_REF.match(handler):
            handler = _get(raw, _follow(raw, handler[1:]))
        if _is_a(handler, "monai.handlers.ValidationHandler"):
            validator = handler.get("validator")
            if isinstance(validator, str) and _PLAIN_REF.match(validator):
                return _follow(raw, validator[1:])
    found = _components(raw, "monai.engines.SupervisedEvaluator")
    return found[0] if len(found) == 1 else None


def _find_val_data(
    raw: Mapping[str, Any], evaluator: str | None, val_dataset_id: str | None, val_batch_size: int | None
) -> tuple[str, str | int, str | None]:
    """``(dataset_id, batch_size, loader_id)`` of the validation data."""
    loader = _follow(raw, f"{evaluator}#val_data_loader") if evaluator and _get(raw, f"{evaluator}#val_data_loader") else None
    if loader is not None and not isinstance(_get(raw, loader), Mapping):
        loader = None  # an expression: its dataset cannot be read from the config
    if val_dataset_id is not None:
        if not _has(raw, val_dataset_id):
            raise LayoutError(f"--val-dataset-id {val_dataset_id}: no such id in the bundle's training config.")
        dataset = val_dataset_id
    else:
        if loader is None or _get(raw, f"{loader}#dataset") is None:
            where = f"the loader of {evaluator} is not a DataLoader component" if evaluator else (
                "no evaluator (a ValidationHandler's validator or a single SupervisedEvaluator)")
            raise LayoutError(f"could not find the validation dataset: {where}; set it with --val-dataset-id.")
        dataset = _follow(raw, f"{loader}#dataset")
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
        value = _get(raw, f"{cid}#save_dir")
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
    """
    root = Path(bundle_root)
    if not root.is_dir():
        raise LayoutError(f"--bundle {root}: not a folder.")
    path = _train_config(root, train_config)
    raw = _read_raw(path)
    trainer = _find_trainer(raw, trainer_id)
    loss, loss_is_component, loss_inline = _find_loss(raw, trainer, loss_id)
    handlers, handlers_inline = _find_handlers(raw, trainer, handlers_id)
    listed = handlers_inline if handlers_inline is not None else (_get(raw, handlers) if handlers else [])
    evaluator = _find_evaluator(raw, trainer, list(listed or []))
    dataset, batch_size, loader = _find_val_data(raw, evaluator, val_dataset_id, val_batch_size)
    train_loader = _follow(raw, f"{trainer}#train_data_loader") if _get(raw, f"{trainer}#train_data_loader") else None
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


# ------------------------------------------------------------------------------------ the overlays
def per_sample_loss(loss: nn.Module) -> nn.Module:
    """A copy of a reducing loss that returns one value per sample (``reduction="none"``).

    The overlay calls it on a loss the bundle writes as an expression, whose arguments a config
    key cannot reach. The bundle's own object is left as it is (other components may use it).

    Args:
        loss: a loss with a ``reduction`` attribute (every ``torch.nn`` loss, MONAI's losses).

    Returns:
        ``loss`` itself when it does not reduce, else a deep copy with ``reduction = "none"``.

    Raises:
        ValueError: when the loss has no ``reduction`` attribute.
    """
    reduction = getattr(loss, "reduction", None)
    if not isinstance(reduction, str):
        raise InputError(
            f"the bundle's loss {type(loss).__name__} has no 'reduction' setting, so LiLAW cannot get one value "
            "per sample from it: define a per-sample loss under an id and pass --loss-id."
        )
    if reduction == "none":
        return loss
    per_sample = copy.deepcopy(loss)
    per_sample.reduction = "none"
    return per_sample


def _base_loss(layout: BundleLayout) -> Any:
    if layout.loss_id is not None:
        ref = f"@{layout.loss_id}"
        return ref if layout.loss_is_component else f"$lilaw_med.bundle.overlay.per_sample_loss({ref})"
    if layout.loss_is_component:  # written inside the trainer: a copy of it, per sample
        return {**layout.loss_inline, "reduction": "none"}
    return f"$lilaw_med.bundle.overlay.per_sample_loss({layout.loss_inline[1:]})"


def _handler_key(layout: BundleLayout) -> str:
    if layout.handlers_id is not None:
        return f"+{layout.handlers_id}"
    key = f"{layout.trainer_id}#train_handlers"
    return f"+{key}" if layout.handlers_inline is not None else key


def lilaw_overlay(layout: BundleLayout) -> dict[str, Any]:
    """The LiLAW overlay of one bundle: the packaged ``lilaw_overlay.yaml`` with the bundle's ids.

    Args:
        layout: from :func:`find_layout`.

    Returns:
        The overlay config (top-level keys in MONAI's merge order).
    """
    trainer = layout.trainer_id
    overlay: dict[str, Any] = {
        "lilaw_imports": ["$import lilaw_med", "$import lilaw_med.bundle.overlay"],
        "lilaw": {
            **copy.deepcopy(_SETTINGS),
            "ckpt_dir": layout.ckpt_dir,
            "weighting": {
                "_target_": "lilaw_med.LiLAWWeighting",
                "alpha": "@lilaw#alpha", "beta": "@lilaw#beta", "delta": "@lilaw#delta",
            },
            "base_loss": _base_loss(layout),
            "loss_def": {
                "_target_": "lilaw_med.LiLAWLoss",
                "base_loss": "@lilaw#base_loss",
                "weighting": "@lilaw#weighting",
                "warmup_epochs": "@lilaw#warmup_epochs",
                "reduce_classes": "@lilaw#reduce_classes",
                "multi_label": "@lilaw#multi_label",
                "detach_weights": "@lilaw#detach_weights",
                "normalize_weights": "@lilaw#normalize_weights",
            },
            # on the trainer's device, so the meta step's gradients and loss live on one device
            "loss": f"$@lilaw#loss_def.to(@{trainer}#device)",
            "val_loader": {
                "_target_": "monai.data.DataLoader",
                "dataset": f"@{layout.val_dataset_id}",
                "batch_size": layout.val_batch_size,
                "shuffle": True,
                "num_workers": 0,
            },
            "handler": {
                "_target_": "lilaw_med.LiLAWHandler",
                "val_loader": "@lilaw#val_loader",
                "loss": "@lilaw#loss",
                "lr": "@lilaw#lr",
                "weight_decay": "@lilaw#weight_decay",
                "val_mode": "@lilaw#val_mode",
                "every": "@lilaw#meta_every",
                "epoch_budget": "@lilaw#epoch_budget",
            },
            "saver": {
                "_target_": "monai.handlers.CheckpointSaver",
                "save_dir": "@lilaw#ckpt_dir",
                "save_dict": {"lilaw": "@lilaw#handler"},
                "save_final": True,
                "final_filename": "lilaw.pt",
            },
        },
    }
    if layout.loss_id is not None and layout.loss_is_component:
        overlay[f"{layout.loss_id}#reduction"] = "none"
    overlay[f"{trainer}#loss_function"] = "@lilaw#loss"
    overlay[_handler_key(layout)] = ["@lilaw#handler", "@lilaw#saver"]
    return overlay


def _sampler(dataset: str, even: bool, shuffle: bool) -> dict[str, Any]:
    return {"_target_": "DistributedSampler", "dataset": dataset, "even_divisible": even, "shuffle": shuffle}


def _loader_dataset(layout: BundleLayout, loader: str) -> str:
    target = _follow(layout.raw, f"{loader}#dataset")
    return f"@{target}"


def _rank_handlers(overlay: dict[str, Any], layout: BundleLayout, owner: str, key: str, extra: list[str]) -> None:
    """Sets ``owner#key`` to this rank's share of its handler list (the writers on rank 0 only).

    A list under its own id is filtered by reference; a list written inside ``owner`` (plus the
    ``extra`` handlers the LiLAW overlay appended to it) is copied to ``lilaw_ddp#<key>`` first,
    since ``owner#key`` itself is replaced.
    """
    value = _get(layout.raw, f"{owner}#{key}")
    if value is None and not extra:
        return
    target = _follow(layout.raw, f"{owner}#{key}") if value is not None else None
    if target is not None and target != f"{owner}#{key}":
        source = f"@{target}"
    else:
        overlay["lilaw_ddp"][key] = [*copy.deepcopy(value or []), *extra]
        source = f"@lilaw_ddp#{key}"
    overlay[f"{owner}#{key}"] = f"$lilaw_distributed.handlers_for_rank({source})"


def multi_gpu_overlay(layout: BundleLayout) -> dict[str, Any]:
    """The multi-GPU (DDP, torchrun) override of one bundle with the LiLAW overlay, passed after it.

    As the packaged ``multi_gpu_train.yaml``, with the bundle's ids: the process group from
    torchrun's variables, this process's device, the network wrapped in DDP, distributed samplers
    for the training, validation and meta-step loaders, and the writers/loggers among the
    handlers on rank 0 only (:func:`lilaw_med.training.distributed.handlers_for_rank`).

    Args:
        layout: from :func:`find_layout`.

    Returns:
        The override config.

    Raises:
        LayoutError: when the trainer's network or training loader cannot be found.
    """
    raw, trainer = layout.raw, layout.trainer_id
    if _get(raw, f"{trainer}#network") is None:
        raise LayoutError(f"could not find the network: {trainer} has no network.")
    if layout.train_loader_id is None or not isinstance(_get(raw, layout.train_loader_id), Mapping):
        raise LayoutError(f"could not find the training DataLoader component of {trainer} (multi-GPU needs its sampler).")
    network = _follow(raw, f"{trainer}#network")
    overlay: dict[str, Any] = {
        "lilaw_ddp_imports": ["$import lilaw_med.training.distributed as lilaw_distributed"],
        "distributed": {"_target_": "lilaw_med.training.distributed.init_distributed", "device": "auto"},
        "lilaw_ddp": {
            "sync_batchnorm": False,
            # the bundle's own network definition, moved here so that its id can hold the DDP wrapper
            "network": copy.deepcopy(_get(raw, network)),
            "train_sampler": _sampler(_loader_dataset(layout, layout.train_loader_id), True, True),
            "lilaw_sampler": _sampler(f"@{layout.val_dataset_id}", True, True),
        },
    }
    # every device the trainer and the evaluator use becomes this process's device
    owners = [trainer] + ([layout.evaluator_id] if layout.evaluator_id else [])
    for device in dict.fromkeys(_follow(raw, f"{o}#device") for o in owners if _get(raw, f"{o}#device") is not None):
        overlay[device] = "$@distributed.device"
    overlay[network] = {
        "_target_": "lilaw_med.training.distributed.wrap_ddp",
        "network": "$@lilaw_ddp#network.to(@distributed.device)",
        "context": "@distributed",
        "sync_batchnorm": "@lilaw_ddp#sync_batchnorm",
    }
    overlay[f"{layout.train_loader_id}#sampler"] = "@lilaw_ddp#train_sampler"
    overlay[f"{layout.train_loader_id}#shuffle"] = False
    if layout.val_loader_id is not None:
        overlay["lilaw_ddp"]["val_sampler"] = _sampler(_loader_dataset(layout, layout.val_loader_id), False, False)
        overlay[f"{layout.val_loader_id}#sampler"] = "@lilaw_ddp#val_sampler"
        overlay[f"{layout.val_loader_id}#shuffle"] = False
    overlay["lilaw#val_loader#sampler"] = "@lilaw_ddp#lilaw_sampler"
    overlay["lilaw#val_loader#shuffle"] = False
    # the trainer's handlers: a list under an id is filtered by reference; a list the trainer holds
    # itself (where the overlay put LiLAW's handlers) is moved under lilaw_ddp to be filtered
    trainer_list = _follow(raw, f"{trainer}#train_handlers") if _get(raw, f"{trainer}#train_handlers") else None
    if layout.handlers_id is None:
        _rank_handlers(overlay, layout, trainer, "train_handlers", ["@lilaw#handler", "@lilaw#saver"])
    elif trainer_list == layout.handlers_id:
        _rank_handlers(overlay, layout, trainer, "train_handlers", [])
    if layout.evaluator_id is not None:
        _rank_handlers(overlay, layout, layout.evaluator_id, "val_handlers", [])
    initialize = raw.get("initialize")
    initialize = initialize if isinstance(initialize, list) else ([initialize] if initialize else [])
    finalize = raw.get("finalize")
    finalize = finalize if isinstance(finalize, list) else ([finalize] if finalize else [])
    overlay["initialize"] = ["$@distributed", *copy.deepcopy(initialize)]
    overlay["finalize"] = [*copy.deepcopy(finalize), "$lilaw_distributed.cleanup_distributed(@distributed)"]
    return overlay


# ------------------------------------------------------------------------------------ files, command
def _describe(layout: BundleLayout) -> str:
    loss = layout.loss_id or f"{layout.trainer_id}#loss_function"
    kind = "component: its reduction set to none" if layout.loss_is_component else "expression: a per-sample copy"
    handlers = layout.handlers_id or f"{layout.trainer_id}#train_handlers"
    return (
        f"LiLAW overlay for the bundle {layout.bundle_root.resolve().name} ({layout.config_file}), written by\n"
        "`lilaw-med bundle overlay`. It edits nothing in the bundle: pass it AFTER the training config.\n"
        "Found by structure in the training config:\n"
        f"  trainer             {layout.trainer_id}\n"
        f"  loss                {loss} ({kind})\n"
        f"  train handlers      {handlers}\n"
        f"  validation dataset  {layout.val_dataset_id} (batch size {layout.val_batch_size})\n"
        f"  models              {layout.ckpt_dir} (lilaw.pt goes there)\n"
        "What each key does: lilaw_med's configs/bundle/README.md. Settings on the command line, e.g.\n"
        "--lilaw#lr 0.005 --lilaw#normalize_weights True."
    )


def run_command(layout: BundleLayout, overlay: Path, multi_gpu: Path | None = None, nproc: int = 2) -> str:
    """The ``monai.bundle run`` command that trains the bundle with the overlay, run from its folder.

    Args:
        layout: from :func:`find_layout`.
        overlay: the written LiLAW overlay.
        multi_gpu: the written multi-GPU override (the command then starts ``torchrun``).
        nproc: processes per node for ``torchrun``.

    Returns:
        One shell command line.
    """
    root = layout.bundle_root.resolve()

    def rel(path: Path) -> str:
        return os.path.relpath(path.resolve(), root)

    files = [layout.config_file, rel(overlay)] + ([rel(multi_gpu)] if multi_gpu is not None else [])
    return bundle_run_command(
        files, bundle_root=".", meta_file=META_FILE if (root / META_FILE).is_file() else None,
        nproc=nproc if multi_gpu is not None else None,
    )


def write_overlays(layout: BundleLayout, output: str | os.PathLike, multi_gpu: bool = False) -> tuple[Path, Path | None]:
    """Writes the overlay (and the multi-GPU override beside it, ``<stem>_multi_gpu.yaml``).

    Args:
        layout: from :func:`find_layout`.
        output: the overlay file, or a folder to write ``lilaw_overlay.yaml`` into.
        multi_gpu: also write the multi-GPU override.

    Returns:
        ``(overlay, multi_gpu_override or None)``.
    """
    target = Path(output)
    if target.is_dir():
        target = target / "lilaw_overlay.yaml"
    extra = multi_gpu_overlay(layout) if multi_gpu else None  # decided before anything is written
    atomic_write(target, config_yaml(lilaw_overlay(layout), _describe(layout)))
    if extra is None:
        return target, None
    second = target.with_name(f"{target.stem}_multi_gpu.yaml")
    header = (
        "Multi-GPU (DDP) override for the same bundle, passed AFTER the training config and the LiLAW overlay,\n"
        "under torchrun (one process per GPU; gloo on CPU). Batch sizes are per process. Written by\n"
        "`lilaw-med bundle overlay --multi-gpu`; see lilaw_med's docs/distributed.md."
    )
    atomic_write(second, config_yaml(extra, header))
    return target, second
