"""The device a process runs on: the part of :mod:`lilaw_med.training.distributed` that needs no ignite.

``lilaw-med predict`` resolves its device without importing ignite (and, through it,
``torch.distributed``'s FSDP and sympy; see :mod:`lilaw_med.lean`);
every caller imports :func:`resolve_device` from here.
"""

from __future__ import annotations

import logging

import torch

from lilaw_med.errors import InputError

__all__ = ["resolve_device"]

logger = logging.getLogger("lilaw_med.training.distributed")  # the messages of the rank and device helpers


def resolve_device(device: str | torch.device | None = "auto", local_rank: int | None = None) -> torch.device:
    """The device a process trains on.

    Args:
        device: ``"auto"`` (``None``; CUDA when present, else CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
        local_rank: under torchrun, this process's ``LOCAL_RANK``: CUDA then means
            ``cuda:<local_rank>`` (one GPU per process), whatever index a shared config names.

    Returns:
        The device.

    Raises:
        InputError: when CUDA is asked for but not available, the GPU does not exist (or a node runs
            more processes than it has GPUs), or the name is unknown.
    """
    name = "auto" if device is None else str(device).strip().lower()
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not name.startswith("cuda"):
        raise InputError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:N' but is '{name}'.")
    if not torch.cuda.is_available():
        raise InputError(f"device '{name}' was asked for but CUDA is not available on this machine; use --device cpu.")
    return _cuda_device(name, local_rank)


def _cuda_device(name: str, local_rank: int | None) -> torch.device:
    """``cuda``/``cuda:N`` on this machine: that GPU, or under torchrun ``cuda:<local_rank>``."""
    dev = torch.device(name)
    count = torch.cuda.device_count()
    if local_rank is None:
        if dev.index is not None and dev.index >= count:
            raise InputError(f"device '{name}' does not exist: {count} CUDA device(s) visible.")
        return dev
    if dev.index is not None and dev.index != local_rank:
        logger.warning("device %s ignored under torchrun: rank with LOCAL_RANK %d uses cuda:%d.", dev, local_rank, local_rank)
    if local_rank >= count:
        raise InputError(
            f"LOCAL_RANK {local_rank} needs GPU cuda:{local_rank} but this node has {count} GPU(s); "
            f"start at most {count} processes per node (torchrun --nproc_per_node {count})."
        )
    return torch.device("cuda", local_rank)
