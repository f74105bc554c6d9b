"""The LiLAW overlay for one existing MONAI classification bundle, written with the bundle's own ids.

:func:`~lilaw_med.bundle.layout.find_layout` finds the ids; :func:`lilaw_overlay` and
:func:`multi_gpu_overlay` build the two config files and :func:`write_overlays` writes them (docs/bundle.md).
"""

from __future__ import annotations

import copy
import inspect
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lilaw_med.bundle.command import META_FILE, bundle_run_command
from lilaw_med.bundle.layout import (
    TRAIN_CONFIG_NAMES,
    BundleLayout,
    LayoutError,
    find_layout,
    follow_ref,
    get_value,
)
from lilaw_med.bundle.yaml_text import config_yaml
from lilaw_med.errors import InputError
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
    **_signature_defaults(LiLAWLoss.__init__, ("detach_weights", "normalize_weights", "meta_objective")),
    "meta_every": META_STEP_DEFAULTS["every"],
    "epoch_budget": META_STEP_DEFAULTS["epoch_budget"],
    **_signature_defaults(LiLAWLoss.__init__, ("reduce_classes", "multi_label")),
}


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

    Example::

        overlay = lilaw_overlay(find_layout("my_bundle"))      # id -> value, merged by MONAI after train.json
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
                "meta_objective": "@lilaw#meta_objective",
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
    target = follow_ref(layout.raw, f"{loader}#dataset")
    return f"@{target}"


def _rank_handlers(overlay: dict[str, Any], layout: BundleLayout, owner: str, key: str, extra: list[str]) -> None:
    """Sets ``owner#key`` to this rank's share of its handler list (the writers on rank 0 only).

    A list under its own id is filtered by reference; a list written inside ``owner`` (plus the
    ``extra`` handlers the LiLAW overlay appended to it) is copied to ``lilaw_ddp#<key>`` first,
    since ``owner#key`` itself is replaced.
    """
    value = get_value(layout.raw, f"{owner}#{key}")
    if value is None and not extra:
        return
    target = follow_ref(layout.raw, f"{owner}#{key}") if value is not None else None
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

    Example::

        override = multi_gpu_overlay(find_layout("my_bundle"))
    """
    raw, trainer = layout.raw, layout.trainer_id
    if get_value(raw, f"{trainer}#network") is None:
        raise LayoutError(f"could not find the network: {trainer} has no network.")
    if layout.train_loader_id is None or not isinstance(get_value(raw, layout.train_loader_id), Mapping):
        raise LayoutError(f"could not find the training DataLoader component of {trainer} (multi-GPU needs its sampler).")
    network = follow_ref(raw, f"{trainer}#network")
    overlay: dict[str, Any] = {
        "lilaw_ddp_imports": ["$import lilaw_med.training.distributed as lilaw_distributed"],
        "distributed": {"_target_": "lilaw_med.training.distributed.init_distributed", "device": "auto"},
        "lilaw_ddp": {
            "sync_batchnorm": False,
            # the bundle's own network definition, moved here so that its id can hold the DDP wrapper
            "network": copy.deepcopy(get_value(raw, network)),
            "train_sampler": _sampler(_loader_dataset(layout, layout.train_loader_id), True, True),
            "lilaw_sampler": _sampler(f"@{layout.val_dataset_id}", True, True),
        },
    }
    for device in _device_ids(layout):
        overlay[device] = "$@distributed.device"
    overlay[network] = {
        "_target_": "lilaw_med.training.distributed.wrap_ddp",
        "network": "$@lilaw_ddp#network.to(@distributed.device)",
        "context": "@distributed",
        "sync_batchnorm": "@lilaw_ddp#sync_batchnorm",
    }
    _distributed_samplers(overlay, layout)
    _handlers_for_rank(overlay, layout)
    overlay["initialize"] = ["$@distributed", *_steps(raw, "initialize")]
    overlay["finalize"] = [*_steps(raw, "finalize"), "$lilaw_distributed.cleanup_distributed(@distributed)"]
    return overlay


def _device_ids(layout: BundleLayout) -> list[str]:
    """The ids of every device the trainer and the evaluator use: each becomes this process's device."""
    owners = [layout.trainer_id] + ([layout.evaluator_id] if layout.evaluator_id else [])
    raw = layout.raw
    return list(dict.fromkeys(follow_ref(raw, f"{o}#device") for o in owners if get_value(raw, f"{o}#device") is not None))


def _distributed_samplers(overlay: dict[str, Any], layout: BundleLayout) -> None:
    """Points the training, validation and meta-step loaders at distributed samplers (no shuffle of their own)."""
    overlay[f"{layout.train_loader_id}#sampler"] = "@lilaw_ddp#train_sampler"
    overlay[f"{layout.train_loader_id}#shuffle"] = False
    if layout.val_loader_id is not None:
        overlay["lilaw_ddp"]["val_sampler"] = _sampler(_loader_dataset(layout, layout.val_loader_id), False, False)
        overlay[f"{layout.val_loader_id}#sampler"] = "@lilaw_ddp#val_sampler"
        overlay[f"{layout.val_loader_id}#shuffle"] = False
    overlay["lilaw#val_loader#sampler"] = "@lilaw_ddp#lilaw_sampler"
    overlay["lilaw#val_loader#shuffle"] = False


def _handlers_for_rank(overlay: dict[str, Any], layout: BundleLayout) -> None:
    """Keeps the trainer's and the evaluator's writers and loggers on rank 0: a list under an id is
    filtered by reference; a list the trainer holds itself (where the overlay put LiLAW's handlers)
    is moved under ``lilaw_ddp`` to be filtered."""
    raw, trainer = layout.raw, layout.trainer_id
    trainer_list = follow_ref(raw, f"{trainer}#train_handlers") if get_value(raw, f"{trainer}#train_handlers") else None
    if layout.handlers_id is None:
        _rank_handlers(overlay, layout, trainer, "train_handlers", ["@lilaw#handler", "@lilaw#saver"])
    elif trainer_list == layout.handlers_id:
        _rank_handlers(overlay, layout, trainer, "train_handlers", [])
    if layout.evaluator_id is not None:
        _rank_handlers(overlay, layout, layout.evaluator_id, "val_handlers", [])


def _steps(raw: Mapping[str, Any], key: str) -> list[Any]:
    """A copy of the bundle's ``initialize`` or ``finalize`` steps, as a list."""
    steps = raw.get(key)
    return copy.deepcopy(steps if isinstance(steps, list) else ([steps] if steps else []))


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

    Example::

        overlay, multi_gpu = write_overlays(find_layout("my_bundle"), "lilaw_overlay.yaml", multi_gpu=True)
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
