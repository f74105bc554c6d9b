"""Checkpointing a training run and resuming it exactly where it stopped.

:func:`attach_checkpointing` attaches the atomic :class:`~lilaw_med.handlers.checkpoint.CheckpointHandler`;
:func:`resume_from` restores the newest valid checkpoint into freshly built objects: counters, the
training sampler's place in the interrupted epoch, LiLAW's scalars and validation cursor, every random
state (restored just before the first batch is fetched), the AMP scaler and each rank's own part.
:func:`check_resume_config` refuses a config change that is not :data:`RESUME_CHANGEABLE`.
docs/fault_tolerance.md says what is exact and what is not (augmentations with worker processes).

Example::

    handler = attach_checkpointing(trainer, "runs/first", objects, every_n_epochs=1)
    ...
    done = resume_from("runs/first", trainer, objects, train_sampler=sampler)  # in a new process
    if not run_is_complete(trainer):
        trainer.run()
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.errors import InputError
from lilaw_med.handlers.checkpoint import CheckpointHandler, load_object_state, object_state
from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.rng import restore_loader_rng_state, restore_rng_state
from lilaw_med.run.checkpoint_format import (
    CheckpointInfo,
    find_checkpoints,
    load_latest_checkpoint,
    state_nbytes,
)
from lilaw_med.run.config import SCHEMA, Config, config_differences
from lilaw_med.run.run_dir import RunDir

__all__ = ["RESUME_CHANGEABLE", "attach_checkpointing", "check_resume_config", "resume_from", "run_is_complete"]

logger = logging.getLogger(__name__)

CHECKPOINT_SIZE_SLACK = 64 * 2**20
"""Bytes allowed on top of ``max_size_ratio`` times the expected checkpoint size (small runs, loggers)."""

RESUME_CHANGEABLE: dict[str, str] = {
    f"{section}.{key}": spec.resumable
    for section, fields in SCHEMA.items()
    for key, spec in fields.items()
    if spec.resumable is not None
}
"""The config keys ``--resume`` accepts a change of (key -> why it is harmless), read from the schema
(:attr:`~lilaw_med.run.config.Field.resumable`); any other change is refused."""


def attach_checkpointing(
    trainer: Engine,
    run_dir: str | Path,
    objects: Mapping[str, Any],
    every_n_iterations: int | None = None,
    every_n_epochs: int | None = 1,
    keep_last: int = 2,
    rank_objects: Mapping[str, Any] | None = None,
) -> CheckpointHandler:
    """Attaches atomic checkpoints of ``objects`` to ``trainer``, written to ``RUN_DIR/checkpoints``.

    Attach it after the other handlers if you can; it moves itself after them when the run starts in
    any case, so each checkpoint holds the state after the iteration's meta step and the epoch's
    validation. Under ``torch.distributed`` attach it on every rank: each save gathers the per-rank
    states to rank 0, which alone writes.

    Args:
        trainer: the training engine (a MONAI ``SupervisedTrainer``).
        run_dir: the run folder.
        objects: name -> object with ``state_dict``/``load_state_dict``: ``"network"``, ``"optimizer"``,
            ``"scheduler"``, ``"lilaw"`` (the :class:`LiLAWHandler`), ``"trainer"`` (the engine itself),
            and any stateful handler (dynamics recorder, run logger). ``None`` values are skipped. A
            MONAI trainer's AMP scaler is saved on its own.
        every_n_iterations: also save every this many iterations (for resuming inside long epochs).
        every_n_epochs: save every this many epochs.
        keep_last: checkpoints kept (the newest and, with 2, the previous good one).
        rank_objects: name -> object whose state differs between ranks (the dynamics recorder); saved
            per rank and restored into each rank's own by :func:`resume_from`.

    Returns:
        The attached handler (its ``last_checkpoint`` names the newest file written).
    """
    handler = CheckpointHandler(
        RunDir(run_dir).checkpoints,
        objects,
        every_n_iterations=every_n_iterations,
        every_n_epochs=every_n_epochs,
        keep_last=keep_last,
        rank_objects=rank_objects,
    )
    handler.attach(trainer)
    return handler


def check_resume_config(saved: Mapping[str, Any], config: Any, source: str | Path = "config.yaml") -> None:
    """Refuses to resume a run with a config that differs from the one it was started with, except for
    the keys of :data:`RESUME_CHANGEABLE`.

    A changed seed, batch size, learning rate, loss or data option would silently make a run that is
    neither the old one nor a new one (a mid-epoch resume with another seed trains some items twice
    and others not at all), so each such change is refused, naming the key.

    Args:
        saved: the run's own ``config.yaml`` (as read).
        config: the config the resume would use (a mapping or a :class:`~lilaw_med.run.config.Config`).
        source: where ``saved`` comes from, for the message.

    Raises:
        InputError: naming the first changed key that is not allowed (or ``train.epochs`` when it shrinks).
    """

    changes = config_differences(Config.from_mapping(saved).to_dict(), Config.from_mapping(config).to_dict())
    for key, (before, after) in changes.items():
        if key == "train.epochs":
            if isinstance(before, int) and isinstance(after, int) and after > before:
                continue
            reason = "fewer epochs than the run was started with"
        elif key in RESUME_CHANGEABLE:
            continue
        else:
            reason = f"only {', '.join(sorted(RESUME_CHANGEABLE))} may change on --resume"
        raise InputError(
            f"cannot resume with '{key}' changed from {before!r} (in {source}) to {after!r}: {reason}; start a new "
            "run (a new --output) instead."
        )


def run_is_complete(trainer: Engine) -> bool:
    """Whether the trainer's (restored) state says that the run has already finished.

    ignite restarts a finished engine from iteration 0 when ``run`` is called again, so a caller that
    resumes a finished run must check this and not call ``run``.

    Args:
        trainer: the training engine.

    Returns:
        ``True`` when ``iteration >= epoch_length * max_epochs``.
    """
    s = trainer.state
    return bool(s.epoch_length and s.max_epochs and s.iteration >= s.epoch_length * s.max_epochs)


def _once(engine: Engine, event: Any, fn: Any) -> None:
    def handler(e: Engine) -> None:
        e.remove_event_handler(handler, event)
        fn(e)

    engine.add_event_handler(event, handler)


def resume_from(
    run_dir: str | Path,
    trainer: Engine,
    objects: Mapping[str, Any],
    train_sampler: Any | None = None,
    map_location: str | torch.device = "cpu",
    max_size_ratio: float | None = 8.0,
    rank_objects: Mapping[str, Any] | None = None,
) -> int:
    """Loads the newest valid checkpoint of ``RUN_DIR/checkpoints`` into freshly built objects so that
    ``trainer.run()`` continues exactly where the interrupted run stopped.

    A partial or corrupt newer checkpoint is reported with a warning that names it and the reason, is
    renamed ``*.corrupt`` (kept for inspection, never read again) and the previous good one is used.

    Args:
        run_dir: the run folder of the interrupted run.
        trainer: the new trainer, built from the same config (not run yet).
        objects: the same names as given to :func:`attach_checkpointing` (the trainer included).
        train_sampler: the training loader's sampler (a :class:`ResumableSampler`, or any sampler with
            ``set_epoch``/``set_start`` such as the class-balanced one); required to resume inside an epoch.
        map_location: where saved tensors are loaded (e.g. ``"cpu"``; tensors are then moved by each
            object's ``load_state_dict``).
        max_size_ratio: a checkpoint file larger than this many times the expected size (the largest
            size ``index.json`` records, or the size of the freshly built objects' states), plus
            :data:`CHECKPOINT_SIZE_SLACK`, is refused before it is read (``None``: no limit).
        rank_objects: the same names as given to :func:`attach_checkpointing`'s ``rank_objects``: each
            rank loads its own saved state into them.

    Returns:
        The iteration the run resumes from (the number of iterations already done); 0 when the run folder
        has no checkpoint yet (killed before its first one): nothing is loaded and training starts over.

    Raises:
        InputError: when every checkpoint is unusable (too large, corrupt, malformed, or its tensors do
            not fit the objects' shapes), the checkpoint lacks an object that is given
            (or vice versa), the data changed (a different number of samples per epoch or batch size),
            or a mid-epoch checkpoint is resumed without a :class:`ResumableSampler`, or the checkpoint was
            written by another number of processes.
    """
    save_dir = RunDir(run_dir).checkpoints
    if _nothing_saved(save_dir):
        return 0
    objects, rank_objects = _given(objects), _given(rank_objects or {})
    max_bytes = None if max_size_ratio is None else _max_checkpoint_bytes(save_dir, objects, rank_objects, max_size_ratio)
    info, ckpt = _load_newest(save_dir, map_location, max_bytes, objects)
    own = _own_rank_state(info, ckpt)
    _check_objects(info, ckpt["objects"], objects, own["objects"], rank_objects)
    _check_position(info, ckpt, trainer, train_sampler)
    _restore_objects(trainer, info, _states_to_restore(ckpt, own, objects, rank_objects))
    _reopen_validation(objects.values())
    iteration, epoch_length = int(ckpt["iteration"]), ckpt.get("epoch_length")
    in_epoch = iteration % epoch_length if epoch_length else 0
    if train_sampler is not None:
        _restore_sampler(train_sampler, trainer, info, ckpt, own, in_epoch)
    _restore_at_start(trainer, info, ckpt, in_epoch, own)
    logger.info("resuming %s from %s: iteration %d, %s.", run_dir, info.path.name, iteration, _where(ckpt))
    return iteration


def _given(objects: Mapping[str, Any]) -> dict[str, Any]:
    """The objects that are not ``None`` (a run without, say, a scheduler passes ``None`` for it)."""
    return {k: v for k, v in objects.items() if v is not None}


def _nothing_saved(save_dir: Path) -> bool:
    """Whether the run was killed before its first checkpoint: nothing was saved, so nothing can be
    lost by starting over (said in a warning)."""
    if find_checkpoints(save_dir):
        return False
    logger.warning(
        "no checkpoint in %s yet (the run stopped before its first one): training starts from the beginning.",
        save_dir,
    )
    return True


def _where(ckpt: Mapping[str, Any]) -> str:
    """Where in the run a checkpoint was taken, for the log."""
    iteration, epoch_length = int(ckpt["iteration"]), ckpt.get("epoch_length")
    in_epoch = iteration % epoch_length if epoch_length else 0
    if in_epoch:
        return f"inside epoch {iteration // epoch_length + 1} (iteration {in_epoch} of {epoch_length})"
    return f"after epoch {ckpt['epoch']}"


def _states_to_restore(
    ckpt: Mapping[str, Any], own: Mapping[str, Any], objects: Mapping[str, Any], rank_objects: Mapping[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(name, object, saved state)``: the shared objects from the checkpoint, the per-rank ones from this rank's entry."""
    restore = [(name, obj, ckpt["objects"][name]) for name, obj in objects.items()]
    return restore + [(name, obj, own["objects"][name]) for name, obj in rank_objects.items()]


def _restore_objects(trainer: Engine, info: CheckpointInfo, restore: list[tuple[str, Any, Any]]) -> None:
    """Loads each ``(name, object, saved state)``; keeps the new config's ``max_epochs`` when it is larger."""
    max_epochs = getattr(trainer.state, "max_epochs", None)
    for name, obj, state in restore:
        try:
            load_object_state(obj, state)
        except Exception as e:
            raise ValueError(f"cannot restore {name!r} from checkpoint {info.path.name}: {e}") from e
    if max_epochs and trainer.state.max_epochs and max_epochs > trainer.state.max_epochs:
        trainer.state.max_epochs = max_epochs  # the new config asks for more epochs: extend the run


def _reopen_validation(objects: Any) -> None:
    """Re-opens the LiLAW validation iterator at its saved cursor now, BEFORE the RNG states are
    restored: creating a DataLoader iterator draws a seed from torch's generator, which the
    uninterrupted run did not do at this point (opened lazily, it would shift every later draw)."""
    for obj in objects:
        if isinstance(obj, LiLAWHandler) and any(obj.validation_position):
            obj.open_validation_pass()


def _restore_sampler(
    train_sampler: Any, trainer: Engine, info: CheckpointInfo, ckpt: Mapping[str, Any], own: Mapping[str, Any],
    in_epoch: int,
) -> None:
    """Loads this rank's sampler state (which checks the data and its partitioning are the ones it
    trained on) and places the sampler at the interrupted epoch's position."""
    if "sampler" in own and callable(getattr(train_sampler, "load_state_dict", None)):
        try:
            train_sampler.load_state_dict(own["sampler"])
        except ValueError as e:
            raise InputError(f"checkpoint {info.path.name}: {e}") from e
    _place_sampler(train_sampler, trainer, ckpt, in_epoch)


def _max_checkpoint_bytes(
    save_dir: Path, objects: Mapping[str, Any], rank_objects: Mapping[str, Any], ratio: float
) -> int:
    """The largest checkpoint file this run reads: ``ratio`` times the expected size, plus a slack.

    The expected size is the largest the index records (sizes written by this run), or, without an
    index, the size of the freshly built objects' states, the per-rank ones once per rank (an
    optimizer's moments are created by its first step, hence a ratio well above 1).
    """
    recorded = [c.nbytes for c in find_checkpoints(save_dir) if c.nbytes]
    built = sum(state_nbytes(object_state(obj)) for obj in objects.values())
    built += idist.get_world_size() * sum(state_nbytes(object_state(obj)) for obj in rank_objects.values())
    expected = max([*recorded, built])
    return int(ratio * expected) + CHECKPOINT_SIZE_SLACK


def _own_rank_state(info: CheckpointInfo, ckpt: Mapping[str, Any]) -> Mapping[str, Any]:
    """This process's entry of the checkpoint's per-rank states.

    Raises:
        InputError: when the checkpoint was written by another number of processes: its per-rank states
            (the partial epoch of each rank's items, each rank's data position) cannot be split again.
    """
    rank, world_size = idist.get_rank(), idist.get_world_size()
    ranks = ckpt["ranks"]
    if len(ranks) != world_size:
        raise InputError(
            f"checkpoint {info.path.name} was written by {len(ranks)} process(es) but this run has {world_size}: "
            f"resume with the same number (torchrun --nproc_per_node {len(ranks)}), or start a new run."
        )
    return ranks[rank]


def _shape(value: Any) -> tuple[int, ...] | None:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _check_fits(objects: Mapping[str, Any]) -> Any:
    """A check that a checkpoint's tensors have the shapes of the objects they are loaded into (network
    and loss parameters and buffers, optimizer moments), and that the network's weights are finite."""

    def check(info: CheckpointInfo, ckpt: Mapping[str, Any]) -> None:
        for name, obj in objects.items():
            saved = ckpt["objects"].get(name)
            if saved is None:
                continue  # _check_objects names what is missing
            obj = obj.module if isinstance(obj, DistributedDataParallel) else obj
            if isinstance(obj, nn.Module):
                _check_module(info, name, obj, saved)
            elif isinstance(obj, torch.optim.Optimizer):
                _check_optimizer(info, name, obj, saved)

    return check


def _check_module(info: CheckpointInfo, name: str, module: nn.Module, saved: Any) -> None:
    expected = module.state_dict()
    if not isinstance(saved, Mapping):
        raise InputError(f"{info.path.name}: the state of {name!r} is a {type(saved).__name__}, not a state dict")
    for key in sorted(set(expected) ^ set(saved)):
        where = "missing from the checkpoint" if key in expected else "unknown to this run's model"
        raise InputError(f"{info.path.name}: {name} tensor {key!r} is {where}")
    for key, tensor in expected.items():
        got = saved[key]
        if _shape(got) != _shape(tensor):
            raise InputError(
                f"{info.path.name}: {name} tensor {key!r} has shape {_shape(got)} but this run's model has {_shape(tensor)}"
            )
        if name == "network" and got.is_floating_point() and not bool(torch.isfinite(got).all()):
            raise InputError(f"{info.path.name}: {name} tensor {key!r} holds NaN or infinite values")


def _check_optimizer(info: CheckpointInfo, name: str, optimizer: torch.optim.Optimizer, saved: Any) -> None:
    """A saved optimizer state fits this run's parameters: their number, and each moment's shape."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    if not isinstance(saved, Mapping) or not isinstance(saved.get("state"), Mapping):
        raise InputError(f"{info.path.name}: the state of {name!r} is not an optimizer state dict")
    saved_params = _saved_param_ids(saved)
    if len(saved_params) != len(params):
        raise InputError(
            f"{info.path.name}: {name} holds {len(saved_params)} parameters but this run's model has {len(params)}"
        )
    index = {i: p for i, p in zip(saved_params, params, strict=True)}
    for i, state in saved["state"].items():
        if i not in index or not isinstance(state, Mapping):
            raise InputError(f"{info.path.name}: {name} has state for an unknown parameter {i!r}")
        _check_moments(info, name, i, state, index[i])


def _saved_param_ids(saved: Mapping[str, Any]) -> list[Any]:
    return [i for group in saved.get("param_groups", []) for i in group.get("params", [])]


def _check_moments(info: CheckpointInfo, name: str, i: Any, state: Mapping[str, Any], param: torch.Tensor) -> None:
    """Per-parameter moments (exp_avg, momentum_buffer, ...) have the parameter's shape; step counters are scalars."""
    for key, value in state.items():
        if isinstance(value, torch.Tensor) and value.dim() > 0 and tuple(value.shape) != tuple(param.shape):
            raise InputError(
                f"{info.path.name}: {name} {key} of parameter {i} has shape {tuple(value.shape)} but the "
                f"parameter has {tuple(param.shape)}"
            )


def _load_newest(
    save_dir: Path, map_location: str | torch.device, max_bytes: int | None, objects: Mapping[str, Any]
) -> tuple[CheckpointInfo, dict[str, Any]]:
    """The newest valid checkpoint that fits the objects; every newer unusable one is reported and renamed
    ``*.corrupt``."""
    info, ckpt, rejected = load_latest_checkpoint(
        save_dir, map_location=map_location, max_bytes=max_bytes, validate=_check_fits(objects)
    )
    for bad, reason in rejected:
        corrupt = bad.path.with_name(bad.path.name + ".corrupt")
        with contextlib.suppress(FileNotFoundError):  # another rank of a distributed run moved it first
            bad.path.replace(corrupt)
        logger.warning(
            "checkpoint %s is unusable (%s): kept as %s; resuming from the previous good one, %s.",
            bad.path, reason, corrupt.name, info.path.name,
        )
    return info, ckpt


def _check_objects(
    info: CheckpointInfo,
    saved: Mapping[str, Any],
    objects: Mapping[str, Any],
    saved_rank: Mapping[str, Any] | None = None,
    rank_objects: Mapping[str, Any] | None = None,
) -> None:
    """Every object to restore has a saved state (states nobody takes are reported); per-rank objects
    are looked up in this rank's states (``saved_rank``)."""
    saved_rank, rank_objects = saved_rank or {}, rank_objects or {}
    missing_rank = sorted(set(rank_objects) - set(saved_rank))
    if missing_rank:
        raise InputError(
            f"checkpoint {info.path} has no state of this rank for {missing_rank} (it holds "
            f"{sorted(saved_rank)}): it was written by a run with a different configuration."
        )
    missing = sorted(set(objects) - set(saved))
    if missing:
        raise InputError(
            f"checkpoint {info.path} has no state for {missing} (it holds {sorted(saved)}): it was written by a "
            "run with a different configuration."
        )
    unused = sorted(set(saved) - set(objects))
    if unused:
        logger.warning(
            "checkpoint %s holds state for %s that this run does not use; ignored.", info.path.name, unused
        )


def _check_position(info: CheckpointInfo, ckpt: Mapping[str, Any], trainer: Engine, train_sampler: Any) -> None:
    """The checkpoint's place in the data can be found again: same epoch length, batch size and sampler length."""
    iteration, epoch_length = int(ckpt["iteration"]), ckpt.get("epoch_length")
    in_epoch = iteration % epoch_length if epoch_length else 0
    loader = getattr(trainer, "data_loader", None)
    if epoch_length and getattr(trainer.state, "epoch_length", None) not in (None, epoch_length):
        raise InputError(
            f"checkpoint {info.path.name} was written with {epoch_length} iterations per epoch but this run has "
            f"{trainer.state.epoch_length}: the training data or batch size changed; start a new run instead."
        )
    if in_epoch:
        _check_mid_epoch(info, ckpt, loader, train_sampler)
    saved_len = ckpt.get("sampler_length")
    if train_sampler is not None and saved_len is not None and len(train_sampler) != saved_len:
        raise InputError(
            f"the training sampler yields {len(train_sampler)} samples per epoch but {saved_len} when checkpoint "
            f"{info.path.name} was written: the training data changed; start a new run instead."
        )


def _check_mid_epoch(info: CheckpointInfo, ckpt: Mapping[str, Any], loader: Any, train_sampler: Any) -> None:
    """A checkpoint taken inside an epoch needs a sampler that can start mid-epoch and the same batch size."""
    iteration, epoch_length = int(ckpt["iteration"]), ckpt["epoch_length"]
    in_epoch = iteration % epoch_length
    if not callable(getattr(train_sampler, "set_start", None)):
        raise InputError(
            f"checkpoint {info.path.name} was taken inside epoch {iteration // epoch_length + 1} (iteration "
            f"{in_epoch} of {epoch_length}); resuming there needs the training loader's ResumableSampler "
            f"(or another sampler with set_epoch/set_start), got {type(train_sampler).__name__}."
        )
    batch_size = ckpt.get("batch_size") or getattr(loader, "batch_size", None)
    if not batch_size:
        raise InputError("cannot place the sampler: the checkpoint and the trainer's loader give no batch size.")
    if getattr(loader, "batch_size", batch_size) != batch_size:
        raise InputError(f"the batch size changed since the checkpoint ({batch_size} -> {loader.batch_size}).")


def _place_sampler(train_sampler: Any, trainer: Engine, ckpt: Mapping[str, Any], in_epoch: int) -> None:
    """Puts the training sampler at the epoch ignite starts next and past the samples already trained on."""
    iteration, epoch_length = int(ckpt["iteration"]), ckpt.get("epoch_length")
    # the epoch ignite starts next (the interrupted one, or the one after a completed epoch)
    train_sampler.set_epoch(iteration // epoch_length + 1 if epoch_length else int(ckpt["epoch"]) + 1)
    if callable(getattr(train_sampler, "set_start", None)):
        loader = getattr(trainer, "data_loader", None)
        train_sampler.set_start(in_epoch * int(ckpt.get("batch_size") or loader.batch_size) if in_epoch else 0)
    if isinstance(train_sampler, ResumableSampler):
        train_sampler.attach(trainer)


def _restore_at_start(
    trainer: Engine, info: CheckpointInfo, ckpt: Mapping[str, Any], in_epoch: int, own: Mapping[str, Any]
) -> None:
    """Restores the AMP scaler once the run has started (MONAI's ``Trainer.run`` creates it) and the random
    states (this rank's own, ``own``): now, or after a mid-epoch checkpoint
    just before the first batch (after ignite re-created the loader's iterator, which draws from torch's
    generator)."""
    if "scaler" in ckpt:

        def _load_scaler(engine: Engine) -> None:
            scaler = getattr(engine, "scaler", None)
            if scaler is None:
                logger.warning(
                    "checkpoint %s holds an AMP scaler state but this run has AMP off.", info.path.name
                )
            else:
                scaler.load_state_dict(ckpt["scaler"])

        _once(trainer, Events.STARTED, _load_scaler)

    trainer.state.last_checkpoint = str(info.path)
    loader = getattr(trainer, "data_loader", None)
    rng, loader_rng = own["rng"], own.get("loader_rng", {})

    def _restore(_: Any = None) -> None:
        restore_rng_state(rng)
        if loader is not None:
            restore_loader_rng_state(loader, loader_rng)

    if in_epoch:
        _once(trainer, Events.GET_BATCH_STARTED, _restore)
    else:
        _restore()
