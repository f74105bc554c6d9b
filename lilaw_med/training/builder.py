"""Builds MONAI training components from a validated config and runs a training: :func:`run_training`.

The flow: config -> datalist (sample data generated when asked; exclusions/relabels; pre-flight)
-> transforms -> datasets and loaders (resumable samplers) -> network, per-sample loss wrapped in
:class:`~lilaw_med.losses.LiLAWLoss`, optimizer, LR schedule -> MONAI ``SupervisedTrainer`` with the
:class:`~lilaw_med.handlers.LiLAWHandler` meta step, the dynamics recorder, per-epoch validation
(best checkpoint by a key metric), the run logger and atomic checkpoints -> run folder.

``lilaw.enabled: false`` is the plain baseline with everything else identical: the same
``LiLAWLoss`` with its weighting switched off (``warmup_epochs = train.epochs``, so
``epoch > warmup_epochs`` never holds, and no meta-step handler), so the statistics and the audit
work for it too; no random number is drawn in one arm only (every loader and sampler has its own
seeded generator), so runs with the same seed pair up.

:func:`build_components` is exposed for the bundle exporter, the distributed launcher and
``refine``; :func:`run_training` is the one function the CLI, the bundle and refine call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Events
from torch import nn

from lilaw_med.data.curation import apply_exclusions, apply_relabels
from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.dataset import build_dataset
from lilaw_med.data.preflight import preflight_or_raise
from lilaw_med.handlers.dynamics import DynamicsRecorder
from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.handlers.nonfinite import NonFiniteLossHandler
from lilaw_med.handlers.run_logger import RunLogger
from lilaw_med.losses import GCELoss, LiLAWLoss, SCELoss
from lilaw_med.training.config import ConfigError, validate_config
from lilaw_med.training.evaluation import (
    apply_calibration,
    choose_threshold,
    classification_metrics,
    fit_temperature,
    run_inference,
)
from lilaw_med.training.networks import build_network
from lilaw_med.training.resume import attach_checkpointing, resume_from, run_is_complete
from lilaw_med.training.run_dir import RunDir, default_run_name
from lilaw_med.training.sampling import ClassBalancedSampler, inverse_frequency_weights
from lilaw_med.training.validation import EpochValidation
from lilaw_med.utils import atomic_save_torch, atomic_write
from lilaw_med.weighting import LiLAWWeighting

__all__ = [
    "PRESET_CHANNELS",
    "RunResult",
    "TrainingComponents",
    "build_base_loss",
    "build_components",
    "build_lilaw_loss",
    "build_optimizer",
    "build_scheduler",
    "load_model",
    "prepare_datalist",
    "resolve_device",
    "run_training",
    "transform_options",
]

logger = logging.getLogger(__name__)

# default input channels and spatial dims per transform preset
PRESET_CHANNELS = {"radiology_2d": (1, 2), "radiology_3d": (1, 3), "pathology": (3, 2)}
# write_sample_data keys per preset
_SAMPLE_KEYS = {"radiology_2d": "radiology_2d", "radiology_3d": "radiology_3d", "pathology": "pathology"}
_SAMPLE_INDEX = "sample_index.json"


@dataclass
class RunResult:
    """What a training run returns.

    Attributes:
        run_dir: the run folder.
        summary: the content of ``summary.json`` (final and best metrics, calibration, paths).
        epochs: the per-epoch records of ``metrics.json``.
    """

    run_dir: Path
    summary: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TrainingComponents:
    """Everything :func:`build_components` assembles (exposed for bundle export, DDP and tests)."""

    config: dict[str, Any]
    device: torch.device
    amp: bool
    channels_last: bool
    datalist: Any
    num_outputs: int
    network: nn.Module  # the unwrapped network
    train_network: nn.Module  # the network the trainer steps (DDP-wrapped when distributed)
    loss: LiLAWLoss
    optimizer: torch.optim.Optimizer
    scheduler: Any
    train_loader: Any
    train_sampler: Any
    meta_loader: Any
    val_loader: Any
    test_loader: Any
    trainer: Any
    lilaw_handler: LiLAWHandler | None
    rank: int = 0
    world_size: int = 1
    handlers: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------- helpers
def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present else CPU; ``cpu``; ``cuda``/``cuda:N`` (checked).

    Raises:
        ValueError: when CUDA is asked for but not available, or the name is unknown.
    """
    name = str(name).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device '{name}' was asked for but CUDA is not available on this machine; use --device cpu.")
        dev = torch.device(name)
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device '{name}' does not exist: {torch.cuda.device_count()} CUDA device(s) visible.")
        return dev
    raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' but is '{name}'.")


def _dist_info() -> tuple[int, int]:
    """(rank, world_size) from an initialised ``torch.distributed`` process group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sample_datalist(preset: str, sample_dir: Path) -> Path:
    """The generated sample datalist of ``preset``, generating the sample data when missing."""
    index_path = sample_dir / _SAMPLE_INDEX
    key = _SAMPLE_KEYS[preset]
    if index_path.is_file():
        with contextlib.suppress(ValueError, KeyError, OSError):
            path = Path(json.loads(index_path.read_text())[key])
            if path.is_file():
                return path
    from lilaw_med.data.sample import write_sample_data

    logger.info("generating the sample data into %s (once) ...", sample_dir)
    paths = write_sample_data(sample_dir, seed=0)
    atomic_write(index_path, json.dumps({k: str(Path(v).absolute()) for k, v in paths.items()}, indent=2))
    return Path(paths[key])


def prepare_datalist(config: Mapping[str, Any], run_dir: RunDir | None = None, datalist_path: str | None = None) -> Any:
    """Loads the datalist of a config: sample data, split, exclusions, relabels, subset, pre-flight.

    Args:
        config: a validated config.
        run_dir: where the pre-flight check writes ``rejected_items.csv`` (``None``: nowhere).
        datalist_path: use this datalist instead of the config's (``resume`` passes the run's copy).

    Returns:
        The resolved :class:`lilaw_med.data.datalist.Datalist`.

    Raises:
        FileNotFoundError: when the datalist (or an exclusion CSV) is missing.
        ValueError: when items are bad (pre-flight) or the datalist is invalid.
    """
    data = config["data"]
    if datalist_path is None:
        if data["datalist"]:
            datalist_path = data["datalist"]
        else:
            datalist_path = str(_sample_datalist(data["preset"], Path(data["sample_dir"]).absolute()))
    split_seed = data["split_seed"] if data["split_seed"] is not None else config["train"]["seed"]
    datalist = load_datalist(
        datalist_path, class_names=data["class_names"], val_fraction=data["val_fraction"], seed=split_seed,
        multi_label=data["multi_label"], strict=False,  # label and id problems go to the pre-flight report
    )
    if data["exclude"]:
        datalist = apply_exclusions(datalist, data["exclude"])
    if data["relabel"]:
        datalist = apply_relabels(datalist, data["relabel"])
    if data["max_items"]:
        n = data["max_items"]
        datalist.training, datalist.validation, datalist.test = (
            datalist.training[:n], datalist.validation[:n], datalist.test[:n]
        )
    datalist = preflight_or_raise(
        datalist, data["skip_bad"], run_dir.root if run_dir is not None else None,
        expected_dims=config["model"]["spatial_dims"] or PRESET_CHANNELS[data["preset"]][1],
    )
    if not datalist.training:
        raise ValueError(f"datalist {datalist_path}: the training split is empty.")
    if not datalist.validation:
        raise ValueError(f"datalist {datalist_path}: the validation split is empty (LiLAW's meta step needs one).")
    return datalist


class _PerSampleFocal(nn.Module):
    """MONAI's softmax focal loss, one value per sample: (N, C) logits and (N,) labels -> (N,)."""

    def __init__(self, gamma: float, weight: torch.Tensor | None):
        super().__init__()
        from monai.losses import FocalLoss

        self.focal = FocalLoss(use_softmax=True, gamma=gamma, reduction="none")
        self.register_buffer("class_weight", weight if weight is not None else None)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = target.reshape(-1).long()
        values = self.focal(pred, nn.functional.one_hot(y, pred.shape[1]).to(pred.dtype)).sum(dim=1)
        return values * self.class_weight[y] if self.class_weight is not None else values


class _BinaryBCE(nn.Module):
    """BCE on one logit: (N, 1) logits and (N,) 0/1 labels -> (N,), optionally class-weighted."""

    def __init__(self, weight: torch.Tensor | None):
        super().__init__()
        self.register_buffer("class_weight", weight if weight is not None else None)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        y = target.reshape(-1)
        values = nn.functional.binary_cross_entropy_with_logits(pred.reshape(-1), y.to(pred.dtype), reduction="none")
        return values * self.class_weight[y.long()] if self.class_weight is not None else values


class _ClassWeighted(nn.Module):
    """Multiplies a per-sample loss by the weight of each sample's class."""

    def __init__(self, base: nn.Module, weight: torch.Tensor):
        super().__init__()
        self.base = base
        self.register_buffer("class_weight", weight)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.base(pred, target) * self.class_weight[target.reshape(-1).long()]


def build_base_loss(loss_cfg: Mapping[str, Any], class_weights: torch.Tensor | None, multi_label: bool) -> nn.Module:
    """The per-sample (unreduced) loss named by ``loss.name``.

    Args:
        loss_cfg: the ``loss`` section.
        class_weights: (K,) weights per class, or ``None``.
        multi_label: (N, L) logits with 0/1 targets (``bce`` only).

    Returns:
        A module mapping (logits, labels) to per-sample losses (N,) ((N, L) for multi-label).
    """
    name = loss_cfg["name"]
    if name == "ce":
        return nn.CrossEntropyLoss(weight=class_weights, reduction="none")
    if name == "focal":
        return _PerSampleFocal(loss_cfg["focal_gamma"], class_weights)
    if name == "bce":
        if multi_label:
            return nn.BCEWithLogitsLoss(reduction="none")
        return _BinaryBCE(class_weights)
    base: nn.Module = (
        GCELoss(q=loss_cfg["gce_q"], reduction="none") if name == "gce"
        else SCELoss(alpha=loss_cfg["sce_alpha"], beta=loss_cfg["sce_beta"], reduction="none")
    )
    return _ClassWeighted(base, class_weights) if class_weights is not None else base


def build_lilaw_loss(config: Mapping[str, Any], base_loss: nn.Module) -> LiLAWLoss:
    """Wraps the per-sample loss in :class:`LiLAWLoss`; switched off (never active) for the baseline."""
    lilaw = config["lilaw"]
    weighting = LiLAWWeighting(lilaw["alpha"], lilaw["beta"], lilaw["delta"], alpha_min=lilaw["alpha_min"])
    warmup = lilaw["warmup_epochs"] if lilaw["enabled"] else config["train"]["epochs"]
    return LiLAWLoss(
        base_loss, weighting, warmup_epochs=warmup, multi_label=config["data"]["multi_label"],
        detach_weights=lilaw["detach_weights"],
    )


def build_optimizer(optim_cfg: Mapping[str, Any], params: Any) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD over ``params`` from the ``optim`` section."""
    name, lr, wd = optim_cfg["name"], optim_cfg["lr"], optim_cfg["weight_decay"]
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    return torch.optim.SGD(params, lr=lr, weight_decay=wd, momentum=optim_cfg["momentum"], nesterov=optim_cfg["nesterov"])


def build_scheduler(schedule_cfg: Mapping[str, Any], optimizer: torch.optim.Optimizer, epochs: int) -> Any:
    """An epoch-level ``LambdaLR`` (linear warm-up, then constant, cosine or step), or ``None``.

    The factor for epoch index ``e`` (0-based, the epoch about to run) is
    ``(e + 1) / (warmup + 1)`` during warm-up, then 1 (none), ``gamma ** ((e - warmup) // step_size)``
    (step), or the cosine from 1 to ``min_lr / lr`` over the remaining epochs.
    """
    name, warmup = schedule_cfg["name"], schedule_cfg["warmup_epochs"]
    if name == "none" and warmup == 0:
        return None
    base_lr = optimizer.param_groups[0]["lr"]
    floor = schedule_cfg["min_lr"] / base_lr if base_lr > 0 else 0.0
    step, gamma = schedule_cfg["step_size"], schedule_cfg["gamma"]
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


def _make_prepare_batch(channels_last: bool, spatial_dims: int) -> Callable:
    from monai.engines.utils import default_prepare_batch

    if not channels_last or spatial_dims != 2:
        return default_prepare_batch

    def prepare(batchdata: Any, device: Any = None, non_blocking: bool = False, **kwargs: Any) -> Any:
        image, label = default_prepare_batch(batchdata, device, non_blocking, **kwargs)[:2]
        return image.contiguous(memory_format=torch.channels_last), label

    return prepare


def _loader(dataset: Any, batch_size: int, sampler: Any, num_workers: int, seed: int, pin: bool) -> Any:
    from monai.data import DataLoader

    # every loader owns its generator, so no global random number is drawn by iterating it
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed), pin_memory=pin, persistent_workers=num_workers > 0,
    )


def _dataset(items: list[dict[str, Any]], transforms: Any, cache: str, cache_dir: Path | None) -> Any:
    return build_dataset(items, transforms, cache=cache, cache_dir=cache_dir)


def transform_options(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``data.options`` completed with the preset's defaults, ``multi_label`` kept in step with ``data``."""
    from lilaw_med.data.transforms import preset_defaults

    options = preset_defaults(cfg["data"]["preset"])
    options.update(cfg["data"]["options"])
    if "multi_label" in options:
        options["multi_label"] = bool(cfg["data"]["multi_label"])
    return options


def _labels(items: Sequence[Mapping[str, Any]]) -> list[int]:
    return [int(it["label"]) for it in items]


# ---------------------------------------------------------------------------------------- assembly
def build_components(
    config: Mapping[str, Any],
    run_dir: RunDir | None = None,
    datalist: Any = None,
    device: str | None = None,
) -> TrainingComponents:
    """Builds every training component from a config (no handler that writes files is attached).

    Args:
        config: a config (validated here).
        run_dir: the run folder (used for the pre-flight rejected list and the disk cache).
        datalist: an already prepared datalist (``None``: :func:`prepare_datalist`).
        device: overrides ``train.device``.

    Returns:
        The :class:`TrainingComponents`; the LiLAW handler is attached to the trainer when enabled.

    Raises:
        ConfigError: on an invalid config or one inconsistent with the data.
        ValueError, FileNotFoundError: from the data (datalist, pre-flight, transforms).
    """
    from monai.engines import SupervisedTrainer
    from monai.utils import set_determinism

    from lilaw_med.data.sampler import ResumableSampler
    from lilaw_med.data.transforms import build_transforms

    cfg = validate_config(config)
    data, model, train, lilaw = cfg["data"], cfg["model"], cfg["train"], cfg["lilaw"]
    seed = train["seed"]
    dev = resolve_device(device or train["device"])
    amp = (dev.type == "cuda") if train["amp"] == "auto" else bool(train["amp"])
    if amp and dev.type != "cuda":
        logger.warning("AMP asked for on %s: mixed precision is used on CUDA only; running in float32.", dev)
        amp = False
    rank, world_size = _dist_info()
    if train["deterministic"]:
        set_determinism(seed=seed)
    else:
        torch.manual_seed(seed)

    if datalist is None:
        datalist = prepare_datalist(cfg, run_dir if rank == 0 else None)  # only rank 0 writes
    num_classes = datalist.num_classes
    if num_classes < 2 and not data["multi_label"]:
        raise ConfigError(f"the datalist has {num_classes} class(es); classification needs at least 2.")
    if cfg["loss"]["name"] == "bce" and not data["multi_label"] and num_classes != 2:
        raise ConfigError(f"loss.name 'bce' needs 2 classes (or data.multi_label) but the data has {num_classes}.")
    num_outputs = 1 if cfg["loss"]["name"] == "bce" and not data["multi_label"] else num_classes
    if cfg["eval"]["calibration"] == "threshold" and (data["multi_label"] or num_classes != 2):
        raise ConfigError(
            "config field 'eval.calibration' is 'threshold', which applies to binary tasks only, but the data "
            f"has {num_classes} {'labels' if data['multi_label'] else 'classes'}; use 'temperature' or 'none'."
        )
    default_channels, default_dims = PRESET_CHANNELS[data["preset"]]
    options = transform_options(cfg)
    spatial_dims = model["spatial_dims"] or default_dims
    in_channels = model["in_channels"] or int(options.get("channels") or default_channels)
    channels_last = (dev.type == "cuda" and spatial_dims == 2) if model["channels_last"] == "auto" else bool(model["channels_last"])
    if channels_last and spatial_dims != 2:
        logger.info("channels_last applies to 2D networks only; ignored for spatial_dims=3.")
        channels_last = False

    # ---- data
    cache_dir = Path(data["cache_dir"]) if data["cache_dir"] else (run_dir.root / "cache" if run_dir else None)
    train_tf = build_transforms(data["preset"], options, train=True)
    eval_tf = build_transforms(data["preset"], options, train=False)
    with contextlib.suppress(AttributeError):
        train_tf.set_random_state(seed=seed)
    train_ds = _dataset(datalist.training, train_tf, data["cache"], cache_dir)
    val_ds = _dataset(datalist.validation, eval_tf, data["cache"], cache_dir)
    test_ds = _dataset(datalist.test, eval_tf, data["cache"], cache_dir) if datalist.test else None
    has_test_labels = bool(datalist.test) and all(it.get("label") is not None for it in datalist.test)

    class_weights = None
    loss_cfg = cfg["loss"]
    if loss_cfg["class_weights"] is not None:
        if len(loss_cfg["class_weights"]) != num_classes:
            raise ConfigError(
                f"config field 'loss.class_weights' must have {num_classes} entries (one per class) "
                f"but has {len(loss_cfg['class_weights'])}."
            )
        class_weights = torch.tensor(loss_cfg["class_weights"], dtype=torch.float32)
    elif loss_cfg["class_balance"] == "weights":
        class_weights = inverse_frequency_weights(_labels(datalist.training), num_classes)

    if loss_cfg["class_balance"] == "sampler":
        train_sampler: Any = ClassBalancedSampler(_labels(datalist.training), seed=seed, rank=rank, world_size=world_size)
    else:
        train_sampler = ResumableSampler(len(train_ds), shuffle=True, seed=seed, rank=rank, world_size=world_size)
    # the meta step's own sampler: seeded apart from the training order, reshuffled every pass
    meta_sampler = ResumableSampler(len(val_ds), shuffle=True, seed=seed + 1, rank=rank, world_size=world_size)
    pin = dev.type == "cuda"
    nw = train["num_workers"]
    meta_bs = lilaw["val_batch_size"] or train["batch_size"]
    train_loader = _loader(train_ds, train["batch_size"], train_sampler, nw, seed, pin)
    meta_loader = _loader(val_ds, meta_bs, meta_sampler, nw, seed + 1, pin)
    val_loader = _loader(val_ds, train["batch_size"], None, nw, seed + 2, pin)
    test_loader = _loader(test_ds, train["batch_size"], None, nw, seed + 3, pin) if has_test_labels else None

    # ---- model, loss, optimizer
    network = build_network(
        model["network"], spatial_dims, in_channels, num_outputs, pretrained=model["pretrained"],
        weights=model["weights"], dropout=model["dropout"],
    ).to(dev)
    if channels_last:
        network = network.to(memory_format=torch.channels_last)
    train_network: nn.Module = network
    if world_size > 1:  # distributed: DDP, with SyncBatchNorm on request (CUDA only)
        from lilaw_med.training.distributed import DistributedContext, unwrap_network, wrap_ddp

        context = DistributedContext(rank=rank, world_size=world_size, device=dev)
        train_network = wrap_ddp(network, context, sync_batchnorm=train["sync_batchnorm"])
        network = unwrap_network(train_network)
    base_loss = build_base_loss(loss_cfg, class_weights.to(dev) if class_weights is not None else None, data["multi_label"])
    loss = build_lilaw_loss(cfg, base_loss).to(dev)
    optimizer = build_optimizer(cfg["optim"], network.parameters())
    scheduler = build_scheduler(cfg["schedule"], optimizer, train["epochs"])

    trainer = SupervisedTrainer(
        device=dev,
        max_epochs=train["epochs"],
        train_data_loader=train_loader,
        network=train_network,
        optimizer=optimizer,
        loss_function=loss,
        prepare_batch=_make_prepare_batch(channels_last, spatial_dims),
        amp=amp,
        decollate=False,
        optim_set_to_none=True,
    )
    if not isinstance(train_sampler, ResumableSampler):  # MONAI sets the epoch of DistributedSamplers only
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: train_sampler.set_epoch(e.state.epoch))
    lilaw_handler = None
    if lilaw["enabled"]:
        lilaw_handler = LiLAWHandler(
            meta_loader, loss, lr=lilaw["lr"], weight_decay=lilaw["weight_decay"], val_mode=lilaw["val_mode"],
        )
        lilaw_handler.attach(trainer)
    else:  # keep the loss's epoch in step all the same (the statistics report it)
        trainer.add_event_handler(Events.EPOCH_STARTED, lambda e: loss.set_epoch(e.state.epoch))
    return TrainingComponents(
        config=cfg, device=dev, amp=amp, channels_last=channels_last, datalist=datalist, num_outputs=num_outputs,
        network=network, train_network=train_network, loss=loss, optimizer=optimizer, scheduler=scheduler,
        train_loader=train_loader, train_sampler=train_sampler, meta_loader=meta_loader, val_loader=val_loader,
        test_loader=test_loader, trainer=trainer, lilaw_handler=lilaw_handler, rank=rank, world_size=world_size,
    )


def _model_meta(c: TrainingComponents) -> dict[str, Any]:
    cfg = c.config
    default_channels, default_dims = PRESET_CHANNELS[cfg["data"]["preset"]]
    options = transform_options(cfg)
    return {
        "network_name": cfg["model"]["network"],
        "spatial_dims": cfg["model"]["spatial_dims"] or default_dims,
        "in_channels": cfg["model"]["in_channels"] or int(options.get("channels") or default_channels),
        "num_outputs": c.num_outputs,
        "class_names": list(c.datalist.class_names) if c.datalist.class_names else [],
        "multi_label": bool(cfg["data"]["multi_label"]),
        "preset": cfg["data"]["preset"],
    }


def _attach_run_handlers(c: TrainingComponents, run_dir: RunDir, progress: bool) -> dict[str, Any]:
    """Validation, dynamics, logging, LR schedule, non-finite stop, checkpoints, progress bar (in that order)."""
    cfg = c.config
    writer = c.rank == 0
    handlers: dict[str, Any] = {}
    extra = _model_meta(c)
    validation = EpochValidation(
        c.network, c.val_loader, c.device, key_metric=cfg["eval"]["key_metric"],
        best_path=run_dir.best_model if writer else None,
        test_loader=c.test_loader if cfg["eval"]["test_each_epoch"] else None, interval=cfg["eval"]["interval"],
        amp=c.amp, channels_last=c.channels_last, class_names=c.datalist.class_names,
        multi_label=cfg["data"]["multi_label"], n_bins=cfg["eval"]["ece_bins"], checkpoint_extra=extra,
    )
    validation.attach(c.trainer)
    handlers["validation"] = validation

    recorder = DynamicsRecorder(
        c.loss, [it["id"] for it in c.datalist.training], run_dir.dynamics,
        record_validation=c.lilaw_handler is not None, val_ids=[it["id"] for it in c.datalist.validation],
        meta_handler=c.lilaw_handler,
    )
    recorder.attach(c.trainer)
    handlers["dynamics"] = recorder

    if writer:
        run_logger = RunLogger(c.loss, run_dir, c.optimizer, plots=cfg["output"]["plots"], tensorboard=cfg["output"]["tensorboard"])
        run_logger.attach(c.trainer)
        handlers["run_logger"] = run_logger

    if c.scheduler is not None:
        from monai.handlers import LrScheduleHandler

        LrScheduleHandler(c.scheduler, print_lr=False, epoch_level=True).attach(c.trainer)

    # before the checkpoint handler: a non-finite loss stops the run before anything is saved
    handlers["nonfinite"] = NonFiniteLossHandler(loss=c.loss)
    handlers["nonfinite"].attach(c.trainer)

    objects = checkpoint_objects(c, handlers)
    if writer:
        handlers["checkpoint"] = attach_checkpointing(
            c.trainer, run_dir.root, objects,
            every_n_iterations=cfg["train"]["checkpoint_every_n_iterations"],
            every_n_epochs=cfg["train"]["checkpoint_every_n_epochs"],
            keep_last=cfg["train"]["keep_last"],
        )
    elif attach_checkpointing is None:
        logger.warning("lilaw_med.training.resume is not available: no resumable checkpoints are written.")

    if progress and writer:
        from ignite.handlers import ProgressBar

        def show(output: Any) -> dict[str, float]:
            loss_value = output.get("loss") if isinstance(output, Mapping) else None
            values = {"loss": float(loss_value.detach())} if isinstance(loss_value, torch.Tensor) else {}
            if c.lilaw_handler is not None:
                values.update({k[0]: v for k, v in c.loss.weighting.as_dict().items()})  # a, b, d
            return values

        ProgressBar(persist=True, desc="train").attach(c.trainer, output_transform=show)
    return handlers


def checkpoint_objects(c: TrainingComponents, handlers: Mapping[str, Any]) -> dict[str, Any]:
    """The stateful objects a resumable checkpoint must hold (names are the checkpoint's keys)."""
    objects: dict[str, Any] = {"network": c.network, "optimizer": c.optimizer, "trainer": c.trainer, "loss": c.loss}
    if c.scheduler is not None:
        objects["scheduler"] = c.scheduler
    if getattr(c.trainer, "scaler", None) is not None:
        objects["scaler"] = c.trainer.scaler
    if c.lilaw_handler is not None:
        objects["lilaw"] = c.lilaw_handler
    for name in ("validation", "dynamics", "run_logger"):
        if name in handlers and hasattr(handlers[name], "state_dict"):
            objects[name] = handlers[name]
    return objects


# ---------------------------------------------------------------------------------------- the run
def _resolve_run_dir(cfg: Mapping[str, Any], output_dir: str | os.PathLike | None) -> RunDir:
    if output_dir is not None:
        return RunDir(output_dir)
    out = cfg["output"]
    return RunDir(Path(out["dir"]) / (out["name"] or default_run_name(cfg["data"]["preset"])))


def _split_metrics(
    c: TrainingComponents, loader: Any, temperature: float = 1.0, threshold: float | None = None
) -> tuple[dict[str, Any], Any, Any]:
    logits, labels, _ = run_inference(c.network, loader, c.device, c.amp, channels_last=c.channels_last)
    metrics = classification_metrics(
        logits, labels, c.datalist.class_names, temperature=temperature, threshold=threshold,
        multi_label=c.config["data"]["multi_label"], n_bins=c.config["eval"]["ece_bins"],
    )
    return metrics, logits, labels


def _calibrate(c: TrainingComponents, val_logits: Any, val_labels: Any) -> dict[str, Any]:
    """Fits the configured calibration on the (noisy) validation split."""
    method = c.config["eval"]["calibration"]
    multi = c.config["data"]["multi_label"]
    out: dict[str, Any] = {"method": method, "temperature": 1.0, "threshold": None, "fitted_on": "validation"}
    if method == "temperature":
        out["temperature"] = fit_temperature(val_logits, val_labels, multi_label=multi)
    elif method == "threshold":
        if multi or c.num_outputs > 2:
            raise ConfigError("eval.calibration 'threshold' applies to binary tasks only; use 'temperature'.")
        probs, _ = apply_calibration(val_logits)
        out["threshold"] = choose_threshold(probs[:, 1], val_labels.numpy())
    return out


def run_training(
    config: Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    device: str | None = None,
    progress: bool | None = None,
    datalist: Any = None,
) -> RunResult:
    """Trains a classifier from a config and writes its run folder.

    Args:
        config: the config (validated and completed here).
        output_dir: the run folder (``None``: ``output.dir/output.name`` or a timestamped name).
        resume: continue the run in ``output_dir`` from its newest valid checkpoint (the config
            should be the run's own ``config.yaml``; the run's ``datalist.json`` is used).
        device: overrides ``train.device``.
        progress: overrides ``train.progress``.
        datalist: a prepared datalist (refine passes one; ``None``: from the config).

    Returns:
        The :class:`RunResult` (run folder, summary, per-epoch records).

    Raises:
        ConfigError: on an invalid config.
        FileNotFoundError, ValueError: on data problems (datalist, pre-flight) or a missing checkpoint.
        FileExistsError: when ``output_dir`` exists, is not empty and neither ``resume`` nor
            ``output.overwrite`` is set.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this: the process group is set up
    from torchrun's environment (:mod:`lilaw_med.training.distributed`), each rank trains on its
    shard with DDP, rank 0 alone writes the run folder and returns the summary (``{}`` elsewhere).
    """
    from lilaw_med.training import distributed as ddp

    if not (ddp.torchrun_env_present() or ddp.is_distributed()):
        return _run_training(config, output_dir, resume, device=device, progress=progress, datalist=datalist)
    # distributed (started by torchrun): the process group lives for this run; one device per process
    context = ddp.init_distributed(device=device or validate_config(config)["train"]["device"])
    try:
        with ddp.quiet_unless_rank0():
            return _run_training(
                config, output_dir, resume, device=str(context.device), progress=progress, datalist=datalist
            )
    finally:
        ddp.cleanup_distributed(context)


def _run_training(
    config: Mapping[str, Any],
    output_dir: str | os.PathLike | None,
    resume: bool,
    *,
    device: str | None,
    progress: bool | None,
    datalist: Any,
) -> RunResult:
    """The body of :func:`run_training`; under DDP every rank runs it, rank 0 alone writes."""
    t0 = time.time()
    cfg = validate_config(config)
    run_dir = _resolve_run_dir(cfg, output_dir)
    rank, world_size = _dist_info()
    if world_size > 1:  # distributed: every rank takes rank 0's folder (a default name holds a timestamp)
        from lilaw_med.training.distributed import broadcast_object

        run_dir = RunDir(broadcast_object(str(run_dir.root)))
    if resume:
        if not run_dir.exists():
            raise FileNotFoundError(f"cannot resume: {run_dir.root} is not a run folder (no {RunDir.CONFIG}).")
        if datalist is None and run_dir.datalist.is_file():
            # the run's resolved copy: exclusions, relabels, subset and pre-flight already applied
            from lilaw_med.data.datalist import load_datalist

            datalist = load_datalist(
                run_dir.datalist, class_names=cfg["data"]["class_names"], multi_label=cfg["data"]["multi_label"]
            )
    elif rank == 0:
        run_dir.create(overwrite=cfg["output"]["overwrite"])
    if world_size > 1 and datalist is None:
        # distributed: rank 0 alone generates the sample data and runs the pre-flight check (it writes
        # rejected_items.csv); every rank then trains on rank 0's datalist
        datalist = broadcast_object(prepare_datalist(cfg, run_dir) if rank == 0 else None)
    c = build_components(cfg, run_dir, datalist=datalist, device=device)
    if rank == 0:
        run_dir.write_config(c.config)
        from lilaw_med.data.datalist import save_datalist

        save_datalist(c.datalist, run_dir.datalist)
    show_progress = c.config["train"]["progress"] if progress is None else progress
    if world_size > 1:  # distributed: the handlers below see the loss averaged over the ranks
        from lilaw_med.training.distributed import AverageLossAcrossRanks

        AverageLossAcrossRanks().attach(c.trainer)
    handlers = _attach_run_handlers(c, run_dir, show_progress)
    c.handlers = handlers
    resumed_from = 0
    if resume:
        from lilaw_med.training.distributed import barrier

        if rank != 0:  # distributed: rank 0 reads first (it renames corrupt checkpoints), then the others
            barrier()
        resumed_from = int(resume_from(run_dir.root, c.trainer, checkpoint_objects(c, handlers), c.train_sampler))
        if rank == 0:
            barrier()
        logger.info("resumed %s at iteration %d", run_dir.root, resumed_from)
    logger.info(
        "training %s on %s: %d training / %d validation / %d test items, %d epochs, LiLAW %s",
        c.config["model"]["network"], c.device, len(c.datalist.training), len(c.datalist.validation),
        len(c.datalist.test), c.config["train"]["epochs"], "on" if c.loss.warmup_epochs < c.config["train"]["epochs"] else "off",
    )
    if resume and run_is_complete(c.trainer):
        logger.info("the run in %s had already finished; recomputing its summary only.", run_dir.root)
    else:
        c.trainer.run()
    summary = _finish(c, run_dir, handlers, t0, resumed_from) if rank == 0 else {}
    epochs = handlers["run_logger"].epochs if "run_logger" in handlers else []
    return RunResult(run_dir=run_dir.root, summary=summary, epochs=epochs)


def _finish(c: TrainingComponents, run_dir: RunDir, handlers: Mapping[str, Any], t0: float, resumed_from: int) -> dict[str, Any]:
    """Final model, calibration, final/best metrics on validation and test, ``summary.json``."""
    cfg = c.config
    meta = _model_meta(c)
    atomic_save_torch(
        {"network": {k: v.detach().cpu() for k, v in c.network.state_dict().items()}, "epoch": c.trainer.state.epoch, **meta},
        run_dir.final_model,
    )
    results: dict[str, Any] = {}
    final_state = {k: v.detach().clone() for k, v in c.network.state_dict().items()}
    validation: EpochValidation = handlers["validation"]
    calibration: dict[str, Any] = {}
    for which in ("best", "final"):
        if which == "best":
            if not run_dir.best_model.is_file():
                continue
            c.network.load_state_dict(torch.load(run_dir.best_model, map_location=c.device, weights_only=True)["network"])
        else:
            c.network.load_state_dict(final_state)
        val_metrics, val_logits, val_labels = _split_metrics(c, c.val_loader)
        cal = _calibrate(c, val_logits, val_labels)
        entry: dict[str, Any] = {"validation": val_metrics}
        if c.test_loader is not None:
            entry["test"] = _split_metrics(c, c.test_loader)[0]
            if cal["method"] != "none":
                entry["test_calibrated"] = _split_metrics(c, c.test_loader, cal["temperature"], cal["threshold"])[0]
        results[which] = entry
        calibration[which] = cal
    scalars = c.loss.weighting.as_dict()
    summary = {
        "run_dir": str(run_dir.root),
        "preset": cfg["data"]["preset"],
        "network": cfg["model"]["network"],
        "lilaw_enabled": cfg["lilaw"]["enabled"],
        "device": str(c.device),
        "amp": c.amp,
        "epochs": c.trainer.state.epoch,
        "iterations": c.trainer.state.iteration,
        "resumed_from_iteration": resumed_from,
        "seconds": round(time.time() - t0, 2),
        "num_items": {"training": len(c.datalist.training), "validation": len(c.datalist.validation), "test": len(c.datalist.test)},
        "class_names": meta["class_names"],
        "key_metric": cfg["eval"]["key_metric"],
        "best_epoch": validation.best_epoch,
        "best_val_metric": validation.best_metric,
        "lilaw": {**scalars, "meta_steps": c.lilaw_handler.steps if c.lilaw_handler else 0,
                  "skipped_meta_steps": c.lilaw_handler.skipped_steps if c.lilaw_handler else 0},
        "calibration": calibration,
        "final": results.get("final", {}),
        "best": results.get("best", {}),
        "checkpoints": {
            "best": str(run_dir.best_model) if run_dir.best_model.is_file() else None,
            "final": str(run_dir.final_model),
        },
        "rejected_items": str(run_dir.rejected) if run_dir.rejected.is_file() else None,
    }
    run_dir.write_json(RunDir.SUMMARY, summary)
    return summary


def load_model(run_dir: str | os.PathLike, which: str = "best", device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Loads a trained network from a run folder.

    Args:
        run_dir: the run folder.
        which: ``"best"`` (falls back to final when there is none) or ``"final"``.
        device: where to put the network.

    Returns:
        ``(network in eval mode, checkpoint metadata)``.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: on an unknown ``which``.
    """
    rd = RunDir(run_dir)
    if which not in ("best", "final"):
        raise ValueError(f"which must be 'best' or 'final' but is {which!r}.")
    path = rd.best_model if which == "best" and rd.best_model.is_file() else rd.final_model
    if not path.is_file():
        raise FileNotFoundError(f"{rd.root}: no model checkpoint ({RunDir.CHECKPOINTS}/{RunDir.BEST_MODEL} or {RunDir.FINAL_MODEL}).")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    cfg = validate_config(rd.read_config())
    network = build_network(
        ckpt["network_name"], int(ckpt["spatial_dims"]), int(ckpt["in_channels"]), int(ckpt["num_outputs"]),
        dropout=cfg["model"]["dropout"],
    )
    network.load_state_dict(ckpt["network"])
    network.to(device).eval()
    meta = {k: v for k, v in ckpt.items() if k != "network"}
    meta["path"] = str(path)
    return network, meta
