"""A training run: :func:`run_training`, the one function the CLI, exported bundles, the pipelines and
refine call.

The flow: config -> run folder (created, or re-opened to resume) -> components
(:func:`~lilaw_med.training.trainer.build_components`) -> the handlers that write the run folder
(per-epoch validation and the best checkpoint, the dynamics recorder, the run logger, the LR
schedule, the non-finite-loss stop, atomic checkpoints, progress) -> ``trainer.run()`` ->
:func:`~lilaw_med.training.summary.finish_run` (final model, calibration, ``summary.json``).

Under ``torchrun`` every process calls :func:`run_training`; rank 0 alone writes.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from monai.handlers import LrScheduleHandler

from lilaw_med.data.datalist import Datalist, load_datalist, save_datalist
from lilaw_med.handlers.dynamics import DynamicsRecorder
from lilaw_med.handlers.nonfinite import NonFiniteLossHandler
from lilaw_med.handlers.progress import TrainingProgress
from lilaw_med.handlers.run_logger import RunLogger
from lilaw_med.handlers.tracking import attach_tracking, tracking_backends
from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir, RunDirBusyError, default_run_name
from lilaw_med.training import distributed
from lilaw_med.training.data import prepare_datalist
from lilaw_med.training.model import checkpoint_meta
from lilaw_med.training.resume import attach_checkpointing, check_resume_config, resume_from, run_is_complete
from lilaw_med.training.summary import finish_run
from lilaw_med.training.trainer import TrainingComponents, build_components
from lilaw_med.training.validation import EpochValidation

__all__ = ["RunResult", "attach_run_handlers", "checkpoint_objects", "rank_checkpoint_objects", "run_training"]

logger = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a training run returns.

    Attributes:
        run_dir: the run folder.
        summary: the content of ``summary.json`` (final and best metrics, calibration, paths);
            ``{}`` on ranks other than 0 of a distributed run.
        epochs: the per-epoch records of ``metrics.json``.
        rank: the rank of the process that returns it (0 when not distributed): only rank 0 writes
            the run folder and reports.
    """

    run_dir: Path
    summary: dict[str, Any]
    epochs: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0


# ---------------------------------------------------------------------------------------- handlers
def _progress_values(c: TrainingComponents) -> Any:
    def values(output: Any) -> dict[str, float]:
        loss_value = output.get("loss") if isinstance(output, Mapping) else None
        shown = {"loss": float(loss_value.detach())} if isinstance(loss_value, torch.Tensor) else {}
        if c.lilaw_handler is not None:
            shown.update({k[0]: v for k, v in c.loss.weighting.as_dict().items()})  # a, b, d
        return shown

    return values


def _tracked_params(cfg: Config) -> dict[str, Any]:
    """The config values an experiment tracker records once per run (MLflow's parameters)."""
    return {
        "preset": cfg.data.preset, "network": cfg.model.network, "loss": cfg.loss.name, "lilaw": cfg.lilaw.enabled,
        "epochs": cfg.train.epochs, "batch_size": cfg.train.batch_size, "lr": cfg.optim.lr, "seed": cfg.train.seed,
    }


def attach_run_handlers(c: TrainingComponents, run_dir: RunDir, progress: bool) -> dict[str, Any]:
    """Attaches what makes a run folder, in this order: validation, dynamics, logging, LR schedule,
    non-finite stop, checkpoints, progress. Ranks other than 0 attach those that write nothing.

    Args:
        c: the built components.
        run_dir: the run folder.
        progress: show progress (a bar on a terminal, a line per epoch elsewhere).

    Returns:
        The stateful handlers by name (``validation``, ``dynamics``, ``run_logger`` (rank 0), ``nonfinite``,
        ``checkpoint`` (every rank; rank 0 writes)).
    """
    cfg = c.config
    writer = c.rank == 0
    handlers: dict[str, Any] = {}
    # each rank evaluates its shard of the splits every epoch; the final evaluation (rank 0) reads them whole
    handlers["validation"] = EpochValidation(
        c.network, c.data.epoch_val_loader, c.device, key_metric=cfg.eval.key_metric,
        best_path=run_dir.best_model if writer else None,
        test_loader=c.data.epoch_test_loader if cfg.eval.test_each_epoch else None, interval=cfg.eval.interval,
        amp=c.amp, channels_last=c.channels_last, class_names=c.datalist.class_names,
        multi_label=cfg.data.multi_label, n_bins=cfg.eval.ece_bins,
        checkpoint_extra=checkpoint_meta(cfg, c.shape, c.datalist.class_names), world_size=c.world_size,
    )
    handlers["validation"].attach(c.trainer)
    handlers["dynamics"] = DynamicsRecorder(
        c.loss, [it["id"] for it in c.datalist.training], run_dir.dynamics,
        record_validation=c.lilaw_handler is not None, val_ids=[it["id"] for it in c.datalist.validation],
        meta_handler=c.lilaw_handler,
    )
    handlers["dynamics"].attach(c.trainer)
    if writer:
        handlers["run_logger"] = RunLogger(c.loss, run_dir, c.optimizer, plots=cfg.output.plots)
        handlers["run_logger"].attach(c.trainer)
        handlers["tracking"] = attach_tracking(
            c.trainer, handlers["run_logger"], run_dir, tracking_backends(cfg.output.tracking, cfg.output.tensorboard),
            _tracked_params(cfg),
        )
    if c.scheduler is not None:

        LrScheduleHandler(c.scheduler, print_lr=False, epoch_level=True).attach(c.trainer)
    # before the checkpoint handler: a non-finite loss stops the run before anything is saved
    handlers["nonfinite"] = NonFiniteLossHandler(loss=c.loss)
    handlers["nonfinite"].attach(c.trainer)
    # on every rank: each save gathers the ranks' own states (dynamics, random streams, sampler) to rank 0
    train = cfg.train
    handlers["checkpoint"] = attach_checkpointing(
        c.trainer, run_dir.root, checkpoint_objects(c, handlers),
        every_n_iterations=train.checkpoint_every_n_iterations, every_n_epochs=train.checkpoint_every_n_epochs,
        keep_last=train.keep_last, rank_objects=rank_checkpoint_objects(handlers),
    )
    if writer and progress:
        TrainingProgress(_progress_values(c)).attach(c.trainer)
    return handlers


def checkpoint_objects(c: TrainingComponents, handlers: Mapping[str, Any]) -> dict[str, Any]:
    """The stateful objects a resumable checkpoint must hold (names are the checkpoint's keys).

    The AMP scaler is not among them: MONAI's ``Trainer.run`` creates it, so the checkpoint handler
    saves ``engine.scaler`` itself and :func:`~lilaw_med.training.resume.resume_from` restores it
    once the run has started.
    """
    objects: dict[str, Any] = {"network": c.network, "optimizer": c.optimizer, "trainer": c.trainer, "loss": c.loss}
    if c.scheduler is not None:
        objects["scheduler"] = c.scheduler
    if c.lilaw_handler is not None:
        objects["lilaw"] = c.lilaw_handler
    for name in ("validation", "run_logger"):
        if name in handlers and hasattr(handlers[name], "state_dict"):
            objects[name] = handlers[name]
    return objects


def rank_checkpoint_objects(handlers: Mapping[str, Any]) -> dict[str, Any]:
    """The stateful objects whose state differs between the ranks of a distributed run, saved and restored
    per rank: the dynamics recorder (each rank accumulates the items of its own batches until the
    epoch's end)."""
    return {"dynamics": handlers["dynamics"]} if "dynamics" in handlers else {}


# ---------------------------------------------------------------------------------------- the run
def run_training(
    config: Config | Mapping[str, Any],
    output_dir: str | os.PathLike | None = None,
    resume: bool = False,
    *,
    device: str | None = None,
    progress: bool | None = None,
    datalist: Datalist | None = None,
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
        The :class:`RunResult` (run folder, summary, per-epoch records, rank).

    Raises:
        ConfigError: on an invalid config.
        FileNotFoundError, ValueError: on data problems (datalist, pre-flight) or a missing checkpoint.
        FileExistsError: when ``output_dir`` exists, is not empty and neither ``resume`` nor
            ``output.overwrite`` is set.

    Under ``torchrun`` (``WORLD_SIZE > 1``) every process calls this: the process group is set up
    from torchrun's environment (:mod:`lilaw_med.training.distributed`), each rank trains on its
    shard with DDP, rank 0 alone writes the run folder and returns the summary (``{}`` elsewhere).

    Example::

        result = run_training(load_config("chest.yaml", ["train.epochs=5"]), "runs/chest")
        result.summary["best"]["test"]["auroc"]
        run_training(load_config("runs/chest/config.yaml", ["train.epochs=8"]), "runs/chest", resume=True)
    """
    cfg = Config.from_mapping(config)
    if not (distributed.torchrun_env_present() or distributed.is_distributed()):
        return _run(cfg, output_dir, resume, device=device, progress=progress, datalist=datalist)
    # distributed (started by torchrun): the process group lives for this run; one device per process
    context = distributed.init_distributed(device=device or cfg.train.device, timeout_s=_timeout_s(cfg))
    try:
        with distributed.quiet_unless_rank0():
            return _run(cfg, output_dir, resume, device=str(context.device), progress=progress, datalist=datalist)
    finally:
        distributed.cleanup_distributed(context)


def _timeout_s(cfg: Config) -> float:
    """``train.dist_timeout_minutes`` in seconds: the collective timeout, and the longest a rank waits
    without a sign of rank 0 while rank 0 alone works (:func:`distributed.run_on_rank0`)."""
    return float(cfg.train.dist_timeout_minutes) * 60.0


def _open_run_dir(cfg: Config, output_dir: str | os.PathLike | None, resume: bool, rank: int) -> RunDir:
    """The run folder, created (new run) or re-opened (resume) and locked by rank 0 for the whole run
    (:attr:`RunDir.held_lock`); every rank takes rank 0's (a default name holds a timestamp).

    Raises:
        RunDirBusyError: when another live process holds the folder (rank 0's error; the other ranks
            of a distributed run raise it too instead of waiting for rank 0).
        FileNotFoundError: when resuming a folder that is not a run folder.
        FileExistsError: when a new run's folder is not empty and ``output.overwrite`` is false.
    """
    if output_dir is not None:
        run_dir = RunDir(output_dir)
    else:
        run_dir = RunDir(Path(cfg.output.dir) / (cfg.output.name or default_run_name(cfg.data.preset)))
    run_dir = RunDir(distributed.broadcast_object(str(run_dir.root)))
    error = _open_on_rank0(run_dir, resume, cfg.output.overwrite) if rank == 0 else None
    if distributed.is_distributed():
        # the other ranks learn of rank 0's failure here rather than waiting in a later collective
        message = distributed.broadcast_object(None if error is None else f"{type(error).__name__}: {error}")
        if message is not None and error is None:
            raise RunDirBusyError(f"rank 0 could not open the run folder: {message}")
    if error is not None:
        raise error
    return run_dir


def _open_on_rank0(run_dir: RunDir, resume: bool, overwrite: bool) -> BaseException | None:
    """Creates (new run) or locks (resume) the run folder; the error, for every rank to raise, or ``None``."""
    try:
        if resume:
            if not run_dir.exists():
                raise FileNotFoundError(f"cannot resume: {run_dir.root} is not a run folder (no {RunDir.CONFIG}).")
            run_dir.held_lock = run_dir.lock("lilaw-med train --resume")
        else:
            run_dir.create(overwrite=overwrite)
    except (OSError, RunDirBusyError) as e:
        return e
    return None


def _run_datalist(cfg: Config, run_dir: RunDir, resume: bool, datalist: Datalist | None) -> Datalist | None:
    """The datalist every rank trains on, or ``None`` for :func:`build_components` to prepare it."""
    if datalist is not None:
        return datalist
    if resume and run_dir.datalist.is_file():
        # the run's resolved copy: exclusions, relabels, subset and pre-flight already applied
        return load_datalist(run_dir.datalist, class_names=cfg.data.class_names, multi_label=cfg.data.multi_label)
    if distributed.is_distributed():
        # rank 0 alone generates the sample data and runs the pre-flight check (it writes
        # rejected_items.csv) while the others wait outside any collective, however long it takes;
        # every rank then trains on rank 0's datalist
        prepared = distributed.run_on_rank0(lambda: prepare_datalist(cfg, run_dir), "the pre-flight check",
                                            _timeout_s(cfg))
        return distributed.broadcast_object(prepared)
    return None


def _resume(c: TrainingComponents, run_dir: RunDir) -> int:
    """Restores the newest valid checkpoint; rank 0 reads first (it renames corrupt checkpoints) while
    the others wait outside any collective (every rank reads the run folder: see docs/distributed.md)."""

    def restore() -> int:
        return int(resume_from(
            run_dir.root, c.trainer, checkpoint_objects(c, c.handlers), c.data.train_sampler,
            max_size_ratio=c.config.train.max_checkpoint_ratio, rank_objects=rank_checkpoint_objects(c.handlers),
        ))

    first = distributed.run_on_rank0(restore, "the checkpoint check of --resume", _timeout_s(c.config))
    resumed_from = first if c.rank == 0 else restore()
    logger.info("resumed %s at iteration %d", run_dir.root, resumed_from)
    return resumed_from


def _check_and_clean(cfg: Config, run_dir: RunDir, resume: bool, rank: int) -> None:
    """Before anything is built: a resume continues only as the run was configured (an allow-list of
    harmless changes aside), and rank 0 removes the remains of writes a kill interrupted (nobody else
    can be writing now)."""
    if resume:
        check_resume_config(run_dir.read_config(), cfg, run_dir.config)
    if rank == 0:
        for tmp in run_dir.remove_stale_temp_files():
            logger.info("removed %s, left by an interrupted write.", tmp)


def _log_start(c: TrainingComponents) -> None:
    cfg = c.config
    logger.info(
        "training %s on %s: %d training / %d validation / %d test items, %d epochs, LiLAW %s",
        cfg.model.network, c.device, len(c.datalist.training), len(c.datalist.validation), len(c.datalist.test),
        cfg.train.epochs, "on" if c.loss.warmup_epochs < cfg.train.epochs else "off",
    )


def _run(
    cfg: Config,
    output_dir: str | os.PathLike | None,
    resume: bool,
    *,
    device: str | None,
    progress: bool | None,
    datalist: Datalist | None,
) -> RunResult:
    """The body of :func:`run_training`; under DDP every rank runs it, rank 0 alone writes."""
    t0 = time.time()
    rank = distributed.get_rank()
    run_dir = _open_run_dir(cfg, output_dir, resume, rank)
    try:  # the lock is held for the whole run, released however it ends
        return _run_locked(cfg, run_dir, resume, t0, device=device, progress=progress, datalist=datalist)
    finally:
        run_dir.release()


def _run_locked(
    cfg: Config,
    run_dir: RunDir,
    resume: bool,
    t0: float,
    *,
    device: str | None,
    progress: bool | None,
    datalist: Datalist | None,
) -> RunResult:
    """:func:`_run` once the run folder is open (and, on rank 0, locked)."""
    rank = distributed.get_rank()
    _check_and_clean(cfg, run_dir, resume, rank)
    c = build_components(cfg, run_dir, datalist=_run_datalist(cfg, run_dir, resume, datalist), device=device)
    if rank == 0:
        run_dir.write_config(c.config)
        save_datalist(c.datalist, run_dir.datalist)
    if c.world_size > 1:  # distributed: the handlers below see the loss averaged over the ranks
        distributed.AverageLossAcrossRanks().attach(c.trainer)
    c.handlers = attach_run_handlers(c, run_dir, cfg.train.progress if progress is None else progress)
    resumed_from = _resume(c, run_dir) if resume else 0
    _log_start(c)
    if resume and run_is_complete(c.trainer):
        logger.info("the run in %s had already finished; recomputing its summary only.", run_dir.root)
    else:
        c.trainer.run()
    # the final evaluation and summary: rank 0 alone, the others waiting outside any collective
    summary = distributed.run_on_rank0(
        lambda: finish_run(c, run_dir, t0, resumed_from), "the final evaluation", _timeout_s(cfg)
    ) or {}
    epochs = c.handlers["run_logger"].epochs if "run_logger" in c.handlers else []
    return RunResult(run_dir=run_dir.root, summary=summary, epochs=epochs, rank=rank)
