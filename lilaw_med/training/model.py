"""The network of a training run: its shape, its construction and placement, its checkpoint metadata,
and loading it back from a run folder (:func:`load_model`).

:func:`model_shape` is the one place that says what network a config trains: spatial dimensions
(``model.spatial_dims``, else the preset's), input channels (``model.in_channels``, else the
``channels`` transform option, else the preset's), and outputs (one logit for a single-logit loss
such as ``bce`` on a binary single-label task, else one per class; see
:meth:`lilaw_med.losses.BaseLoss.num_outputs`). Training, the bundle exporter and the CLI all ask it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from lilaw_med.data.presets import get_preset
from lilaw_med.errors import InputError, one_line
from lilaw_med.losses import BASE_LOSSES
from lilaw_med.networks import build_network
from lilaw_med.run.config import Config, ConfigError
from lilaw_med.run.model_file import model_file, read_model_file
from lilaw_med.run.run_dir import RunDir

__all__ = [
    "ModelShape",
    "build_model",
    "checkpoint_meta",
    "input_shape",
    "load_model",
    "model_shape",
    "use_channels_last",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelShape:
    """What the network of a config maps: (N, in_channels, *spatial) images to (N, num_outputs) logits.

    Attributes:
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_outputs: logits (classes; 1 for a single binary logit; labels for multi-label).
    """

    spatial_dims: int
    in_channels: int
    num_outputs: int


def input_shape(config: Config | Mapping[str, Any]) -> tuple[int, int]:
    """``(spatial_dims, in_channels)`` of the network a config trains (see the module docstring).

    Args:
        config: a config (validated here when it is a mapping).

    Returns:
        The spatial dimensions and input channels.
    """
    cfg = Config.from_mapping(config)
    preset = get_preset(cfg.data.preset)
    channels = cfg.model.in_channels or int(cfg.data.options.get("channels") or preset.channels)
    return int(cfg.model.spatial_dims or preset.spatial_dims), channels


def model_shape(config: Config | Mapping[str, Any], num_classes: int) -> ModelShape:
    """The network a config trains on data with ``num_classes`` classes (labels for multi-label).

    Args:
        config: a config (validated here when it is a mapping).
        num_classes: the datalist's number of classes.

    Returns:
        The :class:`ModelShape`.

    Raises:
        ConfigError: when the data has fewer than 2 classes, or a single-logit loss (``bce``) is
            asked for on single-label data that is not binary.
    """
    cfg = Config.from_mapping(config)
    multi = cfg.data.multi_label
    if num_classes < 2 and not multi:
        raise ConfigError(f"the datalist has {num_classes} class(es); classification needs at least 2.")
    loss = BASE_LOSSES[cfg.loss.name]
    if loss.single_logit and not multi and num_classes != 2:
        raise ConfigError(
            f"loss.name '{cfg.loss.name}' needs 2 classes (or data.multi_label) but the data has {num_classes}."
        )
    spatial_dims, in_channels = input_shape(cfg)
    return ModelShape(spatial_dims, in_channels, loss.num_outputs(num_classes, multi))


def use_channels_last(cfg: Config, device: torch.device, spatial_dims: int) -> bool:
    """Whether 2D inputs and the network use the channels-last memory format (``model.channels_last``;
    ``auto``: on CUDA). It applies to 2D networks only."""
    wanted = cfg.model.channels_last
    channels_last = (device.type == "cuda" and spatial_dims == 2) if wanted == "auto" else bool(wanted)
    if channels_last and spatial_dims != 2:
        logger.info("channels_last applies to 2D networks only; ignored for spatial_dims=3.")
        return False
    return channels_last


def build_model(
    cfg: Config, shape: ModelShape, device: torch.device, channels_last: bool = False
) -> tuple[nn.Module, nn.Module]:
    """Builds the network of a config on ``device``; under DDP wraps it for training.

    Args:
        cfg: the config.
        shape: from :func:`model_shape`.
        device: where the network lives.
        channels_last: use the channels-last memory format.

    Returns:
        ``(network, train_network)``: the plain network (saved, evaluated, exported) and the one the
        trainer steps (the same module, or its ``DistributedDataParallel`` wrapper when more than one
        process trains).
    """
    network = build_network(
        cfg.model.network, shape.spatial_dims, shape.in_channels, shape.num_outputs, pretrained=cfg.model.pretrained,
        weights=cfg.model.weights, dropout=cfg.model.dropout,
    ).to(device)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    # ignite: only a network that trains needs it (predict loads a model without it)
    from lilaw_med.training import distributed

    if distributed.get_world_size() == 1:
        return network, network
    # distributed: DDP, with SyncBatchNorm on request (CUDA only); the plain module is the one inside
    context = distributed.DistributedContext(
        rank=distributed.get_rank(), world_size=distributed.get_world_size(), device=device
    )
    train_network = distributed.wrap_ddp(network, context, sync_batchnorm=cfg.train.sync_batchnorm)
    return distributed.unwrap_network(train_network), train_network


def checkpoint_meta(cfg: Config, shape: ModelShape, class_names: list[str] | None) -> dict[str, Any]:
    """The plain values saved beside a run's model weights: enough to rebuild the network.

    Returns:
        ``{"network_name", "spatial_dims", "in_channels", "num_outputs", "class_names", "multi_label", "preset"}``.
    """
    return {
        "network_name": cfg.model.network,
        "spatial_dims": shape.spatial_dims,
        "in_channels": shape.in_channels,
        "num_outputs": shape.num_outputs,
        "class_names": list(class_names) if class_names else [],
        "multi_label": bool(cfg.data.multi_label),
        "preset": cfg.data.preset,
    }


def load_model(
    run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Loads a trained network from a run folder.

    Args:
        run_dir: the run folder.
        which: ``"best"`` (falls back to final when there is none) or ``"final"``.
        device: where to put the network.

    Returns:
        ``(network in eval mode, checkpoint metadata)``.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: on an unknown ``which``, or a model file that cannot be loaded or does not fit its
            network (one line).
    """
    rd = RunDir(run_dir)
    path = model_file(rd.root, which)
    ckpt = read_model_file(path)
    cfg = Config.from_mapping(rd.read_config())
    try:
        network = build_network(
            str(ckpt["network_name"]), int(ckpt["spatial_dims"]), int(ckpt["in_channels"]), int(ckpt["num_outputs"]),
            dropout=cfg.model.dropout,
        )
        network.load_state_dict(ckpt["network"])
    except (RuntimeError, KeyError, TypeError, ValueError) as e:
        raise InputError(
            f"{path}: the weights do not fit a {ckpt['network_name']!r} network ({one_line(e, limit=200)})."
        ) from None
    network.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "network"}
    meta["path"] = str(path)
    return network, meta
