"""Ranks and devices: the one place the toolkit asks which process it is and where it trains.

Process-group set-up from torchrun's environment, the device of a process, rank helpers built on
``ignite.distributed`` (as MONAI's own handlers use it), DDP wrapping, and the two collectives a
run needs (sending rank 0's run folder and datalist to every rank; averaging the loss).

``torchrun --nproc_per_node N -m lilaw_med train --config ...`` starts N processes with ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` set; :func:`init_distributed`
reads them and initialises the default process group (``nccl`` on CUDA, ``gloo`` on CPU). Without
those variables (a plain ``lilaw-med train``) it returns a single-process context and no collective
is ever called, so every helper here is safe to call unconditionally.

Work that rank 0 alone does (the pre-flight check, resuming first, the final evaluation) runs
through :func:`run_on_rank0`: the other ranks wait outside any collective, polling the process
group's key-value store for rank 0's heartbeat, so no collective timeout bounds how long rank 0
may work, and a rank 0 that stops is noticed after ``train.dist_timeout_minutes`` without a beat.

docs/distributed.md says what the pieces add up to (the single-process run with batch ``N * B``).
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import gc
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import ignite.distributed as idist
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lilaw_med.errors import InputError, one_line
from lilaw_med.training.devices import resolve_device

__all__ = [
    "AverageLossAcrossRanks",
    "DistributedContext",
    "barrier",
    "broadcast_buffers",
    "broadcast_object",
    "cleanup_distributed",
    "convert_sync_batchnorm",
    "get_rank",
    "get_world_size",
    "handlers_for_rank",
    "init_distributed",
    "is_distributed",
    "is_rank0",
    "quiet_unless_rank0",
    "run_on_rank0",
    "torchrun_env_present",
    "unwrap_network",
    "wrap_ddp",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")

DEFAULT_TIMEOUT_S = 1800.0
"""How long a collective waits for the other ranks, and a waiting rank for a sign of rank 0, by default."""


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly single-process) run.

    Attributes:
        rank: global rank in ``[0, world_size)``.
        local_rank: rank on this node (selects the GPU).
        world_size: number of processes in the run (1 when not distributed).
        device: the device this process trains on (``cuda:<local_rank>`` with CUDA).
        backend: the process group's backend (``"nccl"``/``"gloo"``), ``None`` when not distributed.
        initialized_here: whether :func:`init_distributed` created the process group (and
            :func:`cleanup_distributed` should destroy it).
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    backend: str | None = None
    initialized_here: bool = False

    @property
    def is_distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1

    @property
    def is_rank0(self) -> bool:
        """Whether this process is the one that writes the run folder."""
        return self.rank == 0


# ------------------------------------------------------------------------------------ set-up
def torchrun_env_present(environ: Mapping[str, str] | None = None) -> bool:
    """Whether the process was started by torchrun (or another launcher setting the same variables)
    with more than one process.

    Args:
        environ: the environment to read (``os.environ`` when ``None``).

    Returns:
        ``True`` when ``WORLD_SIZE`` is set and greater than 1.
    """
    env = os.environ if environ is None else environ
    try:
        return int(env.get("WORLD_SIZE", "1")) > 1
    except ValueError:
        return False


def _env_int(env: Mapping[str, str], name: str) -> int:
    value = env.get(name)
    if value is None:
        raise RuntimeError(
            f"environment variable {name} is not set; launch distributed training with torchrun "
            f"(it sets {', '.join(_TORCHRUN_VARS)})."
        )
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"environment variable {name} must be an integer but is {value!r}.") from None


def init_distributed(
    device: str | torch.device | None = "auto",
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    environ: Mapping[str, str] | None = None,
) -> DistributedContext:
    """Initialises the default process group from torchrun's environment variables.

    Without ``WORLD_SIZE > 1`` in the environment this returns a single-process context and
    initialises nothing. When a process group already exists (e.g. a test set it up), it is reused.

    Args:
        device: ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` (each process takes
            ``cuda:<LOCAL_RANK>``) or an explicit device.
        backend: the collective backend; ``None`` picks ``nccl`` for CUDA and ``gloo`` for CPU.
        timeout_s: how long a collective may wait for the other ranks before failing (the config's
            ``train.dist_timeout_minutes``); work that only rank 0 does is not bounded by it
            (:func:`run_on_rank0`).
        environ: the environment to read (``os.environ`` when ``None``).

    Returns:
        The :class:`DistributedContext` of this process.

    Raises:
        RuntimeError: when torchrun's variables are incomplete or malformed, or ``torch.distributed``
            is not available in this build of PyTorch.
        InputError: on an unknown device, CUDA requested without CUDA, or more processes on a node
            than it has GPUs.
    """
    env = os.environ if environ is None else environ
    if dist.is_available() and dist.is_initialized():
        return _join_existing_group(device, env)
    if not torchrun_env_present(env):
        return DistributedContext(device=resolve_device(device))
    rank, world_size, local_rank = _torchrun_ranks(env)
    dev = resolve_device(device, local_rank)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    kwargs: dict[str, Any] = {}
    if dev.type == "cuda":
        torch.cuda.set_device(dev)  # NCCL collectives (and all_gather_object) use the current device
        kwargs["device_id"] = dev  # binds the communicator eagerly; avoids a guessed device
    # torchrun: env:// (it may hand over its own rendezvous store); an explicit environment (tests,
    # embedding) names the rendezvous directly, leaving os.environ alone
    init_method = "env://" if environ is None else f"tcp://{env['MASTER_ADDR']}:{int(env['MASTER_PORT'])}"
    dist.init_process_group(
        backend=backend,
        init_method=init_method,
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
        **kwargs,
    )
    _sync_ignite(local_rank)
    if not _AT_EXIT:  # objects that still hold the group when the program ends: freed before shutdown
        atexit.register(_release_process_groups)
        _AT_EXIT.append(True)
    logger.info(
        "distributed: rank %d/%d (local rank %d) on %s, backend %s",
        rank,
        world_size,
        local_rank,
        dev,
        backend,
    )
    return DistributedContext(rank, local_rank, world_size, dev, backend, True)


def _join_existing_group(device: str | torch.device | None, env: Mapping[str, str]) -> DistributedContext:
    """The context of a process group that already exists (set up by a test or the embedding program)."""
    rank, world_size = dist.get_rank(), dist.get_world_size()
    local_rank = int(env.get("LOCAL_RANK", rank))
    dev = resolve_device(device, local_rank if world_size > 1 else None)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    _sync_ignite(local_rank)
    return DistributedContext(rank, local_rank, world_size, dev, dist.get_backend(), False)


def _torchrun_ranks(env: Mapping[str, str]) -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's variables, checked.

    Raises:
        RuntimeError: when ``torch.distributed`` is missing, or a variable is absent or malformed.
    """
    if not dist.is_available():
        raise RuntimeError(
            "WORLD_SIZE > 1 asks for distributed training but torch.distributed is not available."
        )
    rank, world_size, local_rank = (_env_int(env, k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if "MASTER_ADDR" not in env:
        raise RuntimeError(
            "environment variable MASTER_ADDR is not set; launch distributed training with torchrun."
        )
    _env_int(env, "MASTER_PORT")
    if not 0 <= rank < world_size:
        raise RuntimeError(f"RANK must lie in [0, {world_size}) but is {rank}.")
    return rank, world_size, local_rank


def cleanup_distributed(context: DistributedContext | None = None) -> None:
    """Destroys the default process group when :func:`init_distributed` created it.

    Args:
        context: the context :func:`init_distributed` returned; ``None`` destroys any initialised group.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    if context is None or context.initialized_here:
        # a rank that tears gloo down while another still has traffic in flight aborts
        # ("terminate called without an active exception"): leave together
        if dist.get_world_size() > 1:
            dist.barrier()
        dist.destroy_process_group()
        idist.sync(temporary=True)  # ignite.distributed forgets the group too
        _release_process_groups()


def _release_process_groups() -> None:
    """Frees the process group objects that outlive ``destroy_process_group`` while Python is alive.

    ``destroy_process_group`` only unregisters the group: DDP's reducer (and ignite engines, which
    sit in reference cycles with their handlers) keep the C++ ``ProcessGroupGloo`` alive. Left to
    interpreter shutdown, its destructor joins gloo's worker threads, whose finished work still
    holds tensors with Python references; releasing those needs the GIL of an interpreter that is
    being torn down, and the process can abort with "terminate called without an active exception"
    after the run has finished (torchrun then reports the rank as failed). A cyclic collection here
    and once more at exit (a bundle's ConfigParser holds the DDP network until ``monai.bundle run``
    returns) destroys them in an orderly way.
    """
    gc.collect()


_AT_EXIT: list[bool] = []  # whether _release_process_groups is registered with atexit (once)


def _sync_ignite(local_rank: int) -> None:
    """Points ``ignite.distributed`` at the process group just set up (every rank calls it together:
    ignite's first look at a group is a collective) and tells it the local rank, which an explicit
    ``environ`` keeps out of ``os.environ``."""
    idist.set_local_rank(local_rank)
    # temporary: ignite re-reads the group when it changes (a test or a bundle may set up another)
    idist.sync(temporary=True)


# ------------------------------------------------------------------------------------ rank helpers
def is_distributed() -> bool:
    """Whether more than one process takes part (``ignite.distributed``'s view of the process group)."""
    return idist.get_world_size() > 1


def get_rank() -> int:
    """This process's global rank (0 when not distributed)."""
    return idist.get_rank()


def get_world_size() -> int:
    """The number of processes (1 when not distributed)."""
    return idist.get_world_size()


def is_rank0() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return get_rank() == 0


def barrier() -> None:
    """Waits until every rank arrives here; a no-op when not distributed."""
    if is_distributed():
        idist.barrier()


# ------------------------------------------------------------------------------------ networks
def convert_sync_batchnorm(network: nn.Module, device: torch.device | str) -> nn.Module:
    """Replaces every batch-norm layer by :class:`torch.nn.SyncBatchNorm` (statistics over the
    union of the ranks' batches).

    Args:
        network: the network (not yet DDP-wrapped).
        device: the device it trains on.

    Returns:
        The converted network.

    Raises:
        InputError: on a non-CUDA device: SyncBatchNorm is implemented for CUDA (NCCL) only.
    """
    if torch.device(device).type != "cuda":
        raise InputError(
            f"SyncBatchNorm runs on CUDA devices only but the device is {str(device)!r}; "
            "set train.sync_batchnorm: false for CPU training (each rank then keeps its own batch statistics)."
        )
    return nn.SyncBatchNorm.convert_sync_batchnorm(network)


def wrap_ddp(
    network: nn.Module,
    context: DistributedContext,
    sync_batchnorm: bool = False,
    find_unused_parameters: bool = False,
) -> nn.Module:
    """Wraps the network in :class:`DistributedDataParallel` when the run is distributed.

    DDP broadcasts rank 0's parameters and buffers at construction, so every rank starts from the
    same network whatever its seed.

    Args:
        network: the network, already on ``context.device``.
        context: from :func:`init_distributed`.
        sync_batchnorm: convert batch norm to SyncBatchNorm first (CUDA only).
        find_unused_parameters: DDP's option for networks whose forward skips parameters.

    Returns:
        The DDP-wrapped network, or ``network`` itself when not distributed (``sync_batchnorm`` is
        then ignored: a single process has nothing to synchronise).

    Raises:
        InputError: ``sync_batchnorm`` on a CPU device.
    """
    if not context.is_distributed:
        return network
    if sync_batchnorm:
        network = convert_sync_batchnorm(network, context.device)
    if context.device.type == "cuda":
        return DistributedDataParallel(
            network,
            device_ids=[context.device.index],
            output_device=context.device.index,
            find_unused_parameters=find_unused_parameters,
        )
    return DistributedDataParallel(network, find_unused_parameters=find_unused_parameters)


def unwrap_network(network: nn.Module) -> nn.Module:
    """The plain network inside a DDP wrapper (for saving, exporting and rank-local inference).

    Args:
        network: a network, DDP-wrapped or not.

    Returns:
        ``network.module`` for a DDP wrapper, else ``network``.
    """
    return network.module if isinstance(network, DistributedDataParallel) else network


# MONAI handlers that only write or log what every rank has anyway: one copy (rank 0's) is enough.
# Handlers that gather across ranks themselves (MetricsSaver, ClassificationSaver) must run on every
# rank, and so must LiLAWHandler (its meta gradient is all-reduced): they are never dropped.
_RANK0_HANDLER_NAMES = frozenset(
    {
        "CheckpointSaver",
        "StatsHandler",
        "TensorBoardStatsHandler",
        "TensorBoardImageHandler",
        "MLFlowHandler",
        "ClearMLStatsHandler",
        "ClearMLImageHandler",
    }
)


def handlers_for_rank(handlers: Sequence[Any] | None, rank: int | None = None) -> list[Any] | None:
    """The handlers a rank attaches: all of them on rank 0; on the other ranks all but the writers
    and loggers (``CheckpointSaver``, ``StatsHandler``, TensorBoard/MLflow/ClearML handlers).

    Model-zoo ``multi_gpu_train.json`` files drop "the last two handlers" on ranks > 0; that breaks
    as soon as another config appends handlers (the LiLAW overlay appends its meta-step handler,
    which every rank must run), so the writers are recognised by class instead.

    Args:
        handlers: the handlers of a MONAI trainer/evaluator (``None`` stays ``None``).
        rank: the rank (the current process's when ``None``).

    Returns:
        The handlers to attach on this rank, in their order.
    """
    if handlers is None:
        return None
    rank = get_rank() if rank is None else int(rank)
    if rank == 0:
        return list(handlers)
    return [h for h in handlers if not any(c.__name__ in _RANK0_HANDLER_NAMES for c in type(h).__mro__)]


# ------------------------------------------------------------------------------------ rank-0 work
_RANK0_WORK_CALLS = [0]  # calls of run_on_rank0 so far: every rank makes them in the same order
_HEARTBEAT_S = 1.0


def _store() -> Any:
    """The default process group's key-value store (the rendezvous store torchrun set up)."""
    return dist.distributed_c10d._get_default_store()


def run_on_rank0(
    work: Callable[[], T], what: str, timeout_s: float = DEFAULT_TIMEOUT_S, poll_s: float = 0.2
) -> T | None:
    """Runs ``work`` on rank 0 alone; the other ranks wait without a collective until it ends.

    A collective has one fixed timeout, and rank 0's work (a pre-flight check of a million items, the
    final evaluation) may take longer. Here rank 0 beats a counter in the process group's store
    every second while it works, then posts ``done`` (or its error); the other ranks poll the store
    and fail only after ``timeout_s`` without a beat (rank 0 killed or lost), however long the work
    takes. Not distributed: ``work()`` is simply called. ``work`` must not call a collective.

    Example::

        datalist = broadcast_object(run_on_rank0(lambda: prepare_datalist(cfg, run_dir), "the pre-flight check"))

    Args:
        work: what rank 0 does.
        what: the work in words (for the messages).
        timeout_s: the longest a waiting rank waits without a beat from rank 0.
        poll_s: how often a waiting rank looks at the store.

    Returns:
        ``work()``'s result on rank 0 (and in a single process); ``None`` on the other ranks.

    Raises:
        RuntimeError: on a waiting rank, when rank 0's work failed (naming its error).
        TimeoutError: on a waiting rank, after ``timeout_s`` without a beat from rank 0.
    """
    if not is_distributed():
        return work()
    _RANK0_WORK_CALLS[0] += 1
    # a torchrun restart starts new processes on the same store: its keys must not meet the last attempt's
    key = f"lilaw_med/rank0_work/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/{_RANK0_WORK_CALLS[0]}"
    store = _store()
    if is_rank0():
        return _work_with_heartbeat(work, store, key)
    _wait_for_rank0(store, key, what, timeout_s, poll_s)
    return None


def _work_with_heartbeat(work: Callable[[], T], store: Any, key: str) -> T:
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(_HEARTBEAT_S):
            with contextlib.suppress(Exception):  # a store that went away: the waiting ranks time out
                store.add(f"{key}/beat", 1)

    thread = threading.Thread(target=beat, name="lilaw-med-rank0-heartbeat", daemon=True)
    thread.start()
    try:
        result = work()
    except BaseException as e:
        # a user's error on rank 0 stays a user's error on the waiting ranks (one line, no traceback)
        kind = "input" if isinstance(e, (InputError, OSError)) else "failed"
        store.set(f"{key}/state", f"{kind}: {one_line(e, with_type=kind == 'failed')}")
        raise
    finally:
        stop.set()
        thread.join()
    store.set(f"{key}/state", "done")
    return result


def _wait_for_rank0(store: Any, key: str, what: str, timeout_s: float, poll_s: float) -> None:
    beats, last_sign = -1, time.monotonic()
    while not store.check([f"{key}/state"]):
        now = beats
        beats = int(store.add(f"{key}/beat", 0))
        if beats != now:
            last_sign = time.monotonic()
        elif time.monotonic() - last_sign > timeout_s:
            raise TimeoutError(
                f"rank {get_rank()}: no sign of rank 0 for {timeout_s / 60:g} minutes while it runs {what} "
                "(train.dist_timeout_minutes); rank 0 stopped or lost its connection."
            )
        time.sleep(poll_s)
    state = store.get(f"{key}/state").decode()
    if state.startswith("input: "):
        raise InputError(f"rank 0 stopped while it ran {what}: {state.removeprefix('input: ')}")
    if state != "done":
        raise RuntimeError(f"rank 0 failed while it ran {what}: {state.removeprefix('failed: ')}")


# ------------------------------------------------------------------------------------ collectives
def broadcast_object(obj: T, src: int = 0) -> T:
    """Sends rank ``src``'s object to every rank (e.g. the run folder rank 0 chose).

    Args:
        obj: the object (only rank ``src``'s is used).
        src: the sending rank.

    Returns:
        Rank ``src``'s object on every rank; ``obj`` when not distributed.
    """
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_buffers(network: nn.Module, src: int = 0) -> None:
    """Copies rank ``src``'s buffers (batch-norm running statistics) into every rank's network, in place.

    DDP broadcasts rank 0's buffers before every training forward, and each rank's batch-norm layers
    then update them with its own batch, so after a step the ranks' statistics differ. Sharded inference
    (each rank evaluates its part of a split) must run rank 0's network on every shard; training is not
    changed, as the next forward broadcasts rank 0's buffers anyway. A no-op when not distributed.

    Args:
        network: the plain network (not the DDP wrapper), the same architecture on every rank.
        src: the rank whose buffers are kept.
    """
    if not is_distributed():
        return
    for buffer in network.buffers():
        dist.broadcast(buffer.data, src=src)


class AverageLossAcrossRanks:
    """Replaces the iteration's training loss in ``engine.state.output`` by its mean over the ranks.

    Each rank's loss is the mean over its own batch; with equal per-rank batches their mean is the
    loss of the whole distributed batch, the value the gradient step took. Handlers attached after
    this one (run logger, progress bar, the non-finite-loss stop) then see the same value on every
    rank, so a stop decided on one rank is decided on all of them (a rank stopping alone would leave
    the others waiting in DDP's all-reduce). One scalar all-reduce per iteration; a no-op when not
    distributed.

    Args:
        output_key: the key of the loss in ``engine.state.output`` (MONAI's ``"loss"``).
    """

    def __init__(self, output_key: str = "loss") -> None:
        self.output_key = output_key

    def attach(self, engine: Engine) -> None:
        """Registers on ``ITERATION_COMPLETED``; attach it BEFORE the handlers that read the loss.

        Args:
            engine: the trainer.
        """
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """All-reduces the loss of this iteration.

        Args:
            engine: the trainer whose ``state.output`` holds the loss.
        """
        output = engine.state.output
        if not is_distributed() or not isinstance(output, dict) or self.output_key not in output:
            return
        value = output[self.output_key]
        local = torch.as_tensor(value).detach().reshape(-1)[:1].to(torch.float64)
        mean = idist.all_reduce(local) / idist.get_world_size()  # ignite moves it to the backend's device
        output[self.output_key] = mean[0].to(
            value.device if isinstance(value, torch.Tensor) else "cpu", torch.float32
        )


@contextlib.contextmanager
def quiet_unless_rank0(logger_names: Sequence[str] = ("lilaw_med", "ignite")) -> Iterator[None]:
    """Raises the given loggers to WARNING on ranks > 0 for the duration, so that a run of N
    processes logs its progress once, not N times (warnings and errors still come from every rank).

    Args:
        logger_names: the loggers to quiet (this package's and ignite's engine messages).
    """
    loggers = [logging.getLogger(name) for name in logger_names]
    previous = [lg.level for lg in loggers]
    if not is_rank0():
        for lg in loggers:
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, previous, strict=True):
            lg.setLevel(level)
