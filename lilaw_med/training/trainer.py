"""Assembles a training from a config: :func:`build_components` (data, network, LiLAW loss,
optimizer, LR schedule, MONAI ``SupervisedTrainer`` with the :class:`~lilaw_med.handlers.LiLAWHandler`).

``lilaw.enabled: false`` is the plain baseline with everything else identical: the same
``LiLAWLoss`` with its weighting switched off (``warmup_epochs = train.epochs``, so
``epoch > warmup_epochs`` never holds, and no meta-step handler), so the statistics and the audit
work for it too; no random number is drawn in one arm only (every loader and sampler has its own
seeded generator), so runs with the same seed pair up.

Nothing here writes a file: the handlers that write the run folder are attached by
:func:`lilaw_med.training.run.run_training`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.engines.utils import default_prepare_batch
from monai.utils import set_determinism
from torch import nn

from lilaw_med.data.datalist import Datalist
from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.losses import LiLAWLoss, build_base_loss
from lilaw_med.run.config import Config, ConfigError, OptimConfig, ScheduleConfig
from lilaw_med.run.run_dir import RunDir
from lilaw_med.training import distributed
from lilaw_med.training.data import TrainingData, build_data, prepare_datalist, training_labels
from lilaw_med.training.devices import resolve_device
from lilaw_med.training.model import ModelShape, build_model, model_shape, use_channels_last
from lilaw_med.training.sampling import inverse_frequency_weights
from lilaw_med.weighting import LiLAWWeighting

__all__ = [
    "TrainingComponents",
    "build_components",
    "build_lilaw_loss",
    "build_optimizer",
    "build_scheduler",
    "class_weights",
]

logger = logging.getLogger(__name__)


@dataclass
class TrainingComponents:
    """Everything :func:`build_components` assembles (exposed for bundle export, DDP and tests).

    Attributes:
        config: the validated config.
        device: where the network trains.
        amp: mixed precision (CUDA only).
        channels_last: 2D inputs and network in the channels-last memory format.
        shape: the network's spatial dims, input channels and outputs.
        data: the datalist and its loaders.
        network: the unwrapped network.
        train_network: the network the trainer steps (DDP-wrapped when distributed).
        loss: the per-sample loss wrapped in :class:`LiLAWLoss`.
        optimizer: the network's optimizer.
        scheduler: the per-epoch LR schedule, or ``None``.
        trainer: the MONAI ``SupervisedTrainer``.
        lilaw_handler: the attached meta-step handler (``None`` for the baseline).
        rank: this process's rank.
        world_size: the number of processes.
        handlers: the run's handlers by name, once attached (validation, dynamics, ...).
    """

    config: Config
    device: torch.device
    amp: bool
    channels_last: bool
    shape: ModelShape
    data: TrainingData
    network: nn.Module
    train_network: nn.Module
    loss: LiLAWLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    trainer: Any
    lilaw_handler: LiLAWHandler | None
    rank: int = 0
    world_size: int = 1
    handlers: dict[str, Any] = field(default_factory=dict)

    @property
    def datalist(self) -> Datalist:
        """The prepared datalist."""
        return self.data.datalist

    @property
    def num_outputs(self) -> int:
        """The network's outputs."""
        return self.shape.num_outputs


# ---------------------------------------------------------------------------------------- pieces
def _use_amp(cfg: Config, device: torch.device) -> bool:
    amp = (device.type == "cuda") if cfg.train.amp == "auto" else bool(cfg.train.amp)
    if amp and device.type != "cuda":
        logger.warning("AMP asked for on %s: mixed precision is used on CUDA only; running in float32.", device)
        return False
    return amp


def class_weights(cfg: Config, datalist: Datalist) -> torch.Tensor | None:
    """The per-class loss weights: ``loss.class_weights``, inverse frequencies (``class_balance:
    weights``), or ``None``.

    Returns:
        (K,) float32 weights, or ``None``.

    Raises:
        ConfigError: when ``loss.class_weights`` does not have one entry per class.
    """
    given, num_classes = cfg.loss.class_weights, datalist.num_classes
    if given is not None:
        if len(given) != num_classes:
            raise ConfigError(
                f"config field 'loss.class_weights' must have {num_classes} entries (one per class) but has {len(given)}."
            )
        return torch.tensor(given, dtype=torch.float32)
    if cfg.loss.class_balance == "weights":
        return inverse_frequency_weights(training_labels(datalist.training), num_classes)
    return None


def build_lilaw_loss(cfg: Config, base_loss: nn.Module) -> LiLAWLoss:
    """Wraps the per-sample loss in :class:`LiLAWLoss`; switched off (never active) for the baseline."""
    lilaw = cfg.lilaw
    weighting = LiLAWWeighting(lilaw.alpha, lilaw.beta, lilaw.delta, alpha_min=lilaw.alpha_min)
    warmup = lilaw.warmup_epochs if lilaw.enabled else cfg.train.epochs
    return LiLAWLoss(
        base_loss, weighting, warmup_epochs=warmup, multi_label=cfg.data.multi_label,
        detach_weights=lilaw.detach_weights, normalize_weights=lilaw.normalize_weights,
        meta_objective=lilaw.meta_objective,
    )


def build_optimizer(optim: OptimConfig, params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over ``params`` from the ``optim`` section."""
    if optim.name == "adam":
        return torch.optim.Adam(params, lr=optim.lr, weight_decay=optim.weight_decay)
    if optim.name == "adamw":
        return torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    return torch.optim.SGD(
        params, lr=optim.lr, weight_decay=optim.weight_decay, momentum=optim.momentum, nesterov=optim.nesterov
    )


def build_scheduler(schedule: ScheduleConfig, optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """An epoch-level ``LambdaLR`` (linear warm-up, then constant, cosine or step), or ``None``.

    The factor for epoch index ``e`` (0-based, the epoch about to run) is
    ``(e + 1) / (warmup + 1)`` during warm-up, then 1 (none), ``gamma ** ((e - warmup) // step_size)``
    (step), or the cosine from 1 to ``min_lr / lr`` over the remaining epochs.
    """
    name, warmup = schedule.name, schedule.warmup_epochs
    if name == "none" and warmup == 0:
        return None
    base_lr = optimizer.param_groups[0]["lr"]
    floor = schedule.min_lr / base_lr if base_lr > 0 else 0.0
    step, gamma = schedule.step_size, schedule.gamma
    span = max(epochs - warmup, 1)

    def factor(e: int) -> float:
        if e < warmup:
            return (e + 1) / (warmup + 1)
        k = e - warmup
        if name == "step":
            return gamma ** (k // step)
        if name == "cosine":
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(k, span) / span))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _prepare_batch(channels_last: bool) -> Callable:
    """MONAI's batch preparation; for channels-last 2D networks the images in that memory format too."""

    if not channels_last:
        return default_prepare_batch

    def prepare(batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)[:2]
        return image.contiguous(memory_format=torch.channels_last), label

    return prepare


def _build_trainer(
    cfg: Config, data: TrainingData, train_network: nn.Module, loss: LiLAWLoss, optimizer: torch.optim.Optimizer,
    device: torch.device, amp: bool, channels_last: bool,
) -> tuple[Any, LiLAWHandler | None]:
    """The ``SupervisedTrainer`` and, when LiLAW is on, its attached meta-step handler."""

    trainer = SupervisedTrainer(
        device=device, max_epochs=cfg.train.epochs, train_data_loader=data.train_loader, network=train_network,
        optimizer=optimizer, loss_function=loss, prepare_batch=_prepare_batch(channels_last), amp=amp,
        decollate=False, optim_set_to_none=True,
    )
    sampler = data.train_sampler
    if not isinstance(sampler, ResumableSampler):  # MONAI sets the epoch of DistributedSamplers only
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: sampler.set_epoch(e.state.epoch))
    if not cfg.lilaw.enabled:  # keep the loss's epoch in step all the same (the statistics report it)
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: loss.set_epoch(e.state.epoch))
        return trainer, None
    handler = LiLAWHandler(
        data.meta_loader, loss, lr=cfg.lilaw.lr, weight_decay=cfg.lilaw.weight_decay, val_mode=cfg.lilaw.val_mode,
        every=cfg.lilaw.meta_every, epoch_budget=cfg.lilaw.epoch_budget,
    )
    handler.attach(trainer)
    return trainer, handler


def _seed(cfg: Config) -> None:

    if cfg.train.deterministic:
        set_determinism(seed=cfg.train.seed)
    else:
        torch.manual_seed(cfg.train.seed)


def _check_calibration(cfg: Config, num_classes: int) -> None:
    if cfg.eval.calibration == "threshold" and (cfg.data.multi_label or num_classes != 2):
        raise ConfigError(
            "config field 'eval.calibration' is 'threshold', which applies to binary tasks only, but the data "
            f"has {num_classes} {'labels' if cfg.data.multi_label else 'classes'}; use 'temperature' or 'none'."
        )
    if cfg.eval.calibration == "prior" and (cfg.data.multi_label or num_classes < 3):
        raise ConfigError(
            "config field 'eval.calibration' is 'prior', which applies to single-label tasks with 3 or more classes, "
            f"but the data has {num_classes} {'labels' if cfg.data.multi_label else 'classes'}; "
            "use 'threshold' (binary), 'temperature' or 'none'."
        )


# ---------------------------------------------------------------------------------------- assembly
def build_components(
    config: Config | Mapping[str, Any],
    run_dir: RunDir | None = None,
    datalist: Datalist | None = None,
    device: str | None = None,
) -> TrainingComponents:
    """Builds every training component from a config (no handler that writes files is attached).

    The order is fixed (seeding, datalist, data, network, loss, optimizer, trainer) because the
    network's initial weights come from the global generator seeded first.

    Args:
        config: a config (validated here when it is a mapping).
        run_dir: the run folder (used for the pre-flight rejected list and the disk cache).
        datalist: an already prepared datalist (``None``: :func:`~lilaw_med.training.data.prepare_datalist`).
        device: overrides ``train.device``.

    Returns:
        The :class:`TrainingComponents`; the LiLAW handler is attached to the trainer when enabled.

    Raises:
        ConfigError: on an invalid config or one inconsistent with the data.
        ValueError, FileNotFoundError: from the data (datalist, pre-flight, transforms).
    """
    cfg = Config.from_mapping(config)
    dev = resolve_device(device or cfg.train.device)
    amp = _use_amp(cfg, dev)
    rank, world_size = distributed.get_rank(), distributed.get_world_size()
    _seed(cfg)
    if datalist is None:
        datalist = prepare_datalist(cfg, run_dir if rank == 0 else None)  # only rank 0 writes
    shape = model_shape(cfg, datalist.num_classes)
    _check_calibration(cfg, datalist.num_classes)
    channels_last = use_channels_last(cfg, dev, shape.spatial_dims)
    weights = class_weights(cfg, datalist)
    data = build_data(cfg, datalist, run_dir, dev, rank, world_size)
    network, train_network = build_model(cfg, shape, dev, channels_last)
    base_loss = build_base_loss(
        cfg.loss.name, dataclasses.asdict(cfg.loss), weights.to(dev) if weights is not None else None,
        cfg.data.multi_label,
    )
    loss = build_lilaw_loss(cfg, base_loss).to(dev)
    optimizer = build_optimizer(cfg.optim, network.parameters())
    scheduler = build_scheduler(cfg.schedule, optimizer, cfg.train.epochs)
    trainer, lilaw_handler = _build_trainer(cfg, data, train_network, loss, optimizer, dev, amp, channels_last)
    return TrainingComponents(
        config=cfg, device=dev, amp=amp, channels_last=channels_last, shape=shape, data=data, network=network,
        train_network=train_network, loss=loss, optimizer=optimizer, scheduler=scheduler, trainer=trainer,
        lilaw_handler=lilaw_handler, rank=rank, world_size=world_size,
    )
