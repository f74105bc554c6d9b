"""ResumableSampler: a seeded sampler whose order is a pure function of (seed, epoch) and that can
start an epoch part-way through, so a training run resumed mid-epoch sees exactly the samples it
had not seen yet."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DistributedSampler

from lilaw_med.errors import InputError

if TYPE_CHECKING:  # ignite loads in attach(): building a datalist's loaders needs no engine
    from ignite.engine import Engine

__all__ = ["ResumableSampler"]

logger = logging.getLogger(__name__)


class ResumableSampler(DistributedSampler):
    """A sampler over ``range(length)`` whose order depends only on ``(seed, epoch)`` and that can skip
    the first samples of one epoch, for resuming a run mid-epoch.

    The order of an epoch is that of ``torch.utils.data.DistributedSampler`` with the same arguments
    (a ``torch.randperm`` seeded with ``seed + epoch``; padded by repeating the first indices, or cut
    with ``drop_last``, so that every rank gets ``ceil(length / world_size)`` samples; rank ``r`` takes
    every ``world_size``-th index from ``r``). With ``world_size=1`` no padding happens and every item
    is seen once per epoch. It *is* a ``DistributedSampler`` (without needing an initialised process
    group), so MONAI's workflows call :meth:`set_epoch` with the engine's epoch at every
    ``EPOCH_STARTED`` on their own; for a plain ignite engine call :meth:`attach`.

    Resuming: ignite re-creates the loader's iterator when a run resumes, from the start of the epoch.
    :meth:`set_start` makes the NEXT iterator of the current epoch begin at position ``index`` of this
    rank's order (the samples already trained on are skipped once); later iterators start at 0 again.
    ``len(sampler)`` stays the full per-rank epoch length, as ignite's ``epoch_length`` expects.

    Args:
        length: the number of items in the dataset (> 0).
        shuffle: shuffle every epoch (``False``: ``0, 1, ..., length - 1``, then partitioned).
        seed: the base seed; the order of epoch ``e`` is seeded with ``seed + e``.
        rank: this process's rank in ``[0, world_size)``.
        world_size: the number of processes sharing the data.
        drop_last: drop the tail so that the data divides evenly across ranks, instead of padding.
        shard: each rank draws only from its own items, ``rank, rank + world_size, ...`` (shuffled among
            themselves every epoch, padded by repeating its first ones): the items a rank holds in a memory
            cache (:func:`lilaw_med.data.dataset.shard_indices`). ``False``: every epoch deals a permutation
            of all items to the ranks, as ``DistributedSampler`` does.

    Raises:
        ValueError: on a non-positive ``length`` or ``world_size``, or a ``rank`` outside ``[0, world_size)``.

    Example:
        >>> s = ResumableSampler(6, seed=3)
        >>> s.set_epoch(2); full = list(s)
        >>> s.set_start(4); list(s) == full[4:]
        True
    """

    def __init__(
        self,
        length: int,
        shuffle: bool = True,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        shard: bool = False,
    ) -> None:
        if int(length) < 1:
            raise ValueError(f"length must be a positive number of items but is {length}.")
        if int(world_size) < 1:
            raise ValueError(f"world_size must be >= 1 but is {world_size}.")
        if not 0 <= int(rank) < int(world_size):
            raise ValueError(f"rank must lie in [0, {int(world_size)}) but is {rank}.")
        super().__init__(
            range(int(length)),
            num_replicas=int(world_size),
            rank=int(rank),
            shuffle=bool(shuffle),
            seed=int(seed),
            drop_last=bool(drop_last),
        )
        self.length = int(length)
        self.shard = bool(shard) and int(world_size) > 1
        self.start = 0

    @property
    def world_size(self) -> int:
        """The number of ranks sharing the data (``num_replicas``)."""
        return self.num_replicas

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose order the next iterator yields. A pending :meth:`set_start` is kept
        (MONAI calls this at ``EPOCH_STARTED`` of the resumed epoch, after the resume set the start).

        Args:
            epoch: the epoch number (any int; MONAI passes the 1-based engine epoch).
        """
        self.epoch = int(epoch)

    def set_start(self, index: int) -> None:
        """Makes the next iterator skip the first ``index`` samples of the current epoch's order (once).

        Args:
            index: the number of this rank's samples already consumed in the epoch, in ``[0, len(self)]``.

        Raises:
            ValueError: when ``index`` is outside ``[0, len(self)]``.
        """
        if not 0 <= int(index) <= self.num_samples:
            raise ValueError(
                f"start index must lie in [0, {self.num_samples}] (samples per epoch) but is {index}."
            )
        self.start = int(index)

    def epoch_indices(self, epoch: int | None = None) -> list[int]:
        """This rank's full order for an epoch, without the start offset.

        Args:
            epoch: the epoch (the current one when ``None``).

        Returns:
            ``len(self)`` dataset indices.
        """
        saved = self.epoch
        if epoch is not None:
            self.epoch = int(epoch)
        try:
            own = torch.arange(self.rank, self.length, self.num_replicas)
            if not self.shard or len(own) == 0:  # a rank with no item of its own is dealt others'
                return [int(i) for i in super().__iter__()]
            if self.shuffle:
                own = own[torch.randperm(len(own), generator=torch.Generator().manual_seed(self.seed + self.epoch))]
            order = own.tolist()
            return (order * -(-self.num_samples // len(order)))[: self.num_samples]
        finally:
            self.epoch = saved

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        start, self.start = self.start, 0  # the offset applies to one iterator only
        if start:
            logger.debug(
                "ResumableSampler: epoch %d starts at sample %d of %d", self.epoch, start, len(indices)
            )
        return iter(indices[start:])

    def __len__(self) -> int:
        return self.num_samples

    def attach(self, engine: Engine) -> None:
        """Calls :meth:`set_epoch` with ``engine.state.epoch`` at every ``EPOCH_STARTED`` (MONAI
        workflows already do this for any ``DistributedSampler``; attaching there is harmless).

        Args:
            engine: the engine whose loader uses this sampler.
        """
        # the data layer imports no ignite: only a sampler attached to an engine needs it
        from ignite.engine import Events

        if not engine.has_event_handler(self._set_epoch_from_engine, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._set_epoch_from_engine)

    def _set_epoch_from_engine(self, engine: Engine) -> None:
        self.set_epoch(engine.state.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The sampler's configuration and position.

        Returns:
            ``{"length", "shuffle", "seed", "rank", "world_size", "drop_last", "shard", "epoch", "start"}`` (plain
            Python values, loadable with ``torch.load(weights_only=True)``).
        """
        return {
            "length": self.length,
            "shuffle": self.shuffle,
            "seed": self.seed,
            "rank": self.rank,
            "world_size": self.num_replicas,
            "drop_last": self.drop_last,
            "shard": self.shard,
            "epoch": self.epoch,
            "start": self.start,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores the epoch and start of :meth:`state_dict`, after checking that the data and its
        partitioning are the same as when it was saved.

        Args:
            state_dict: a dict from :meth:`state_dict`.

        Raises:
            InputError: when the saved length, seed, shuffle, world size, drop_last or shard differ from this
                sampler's (the resumed run would see a different order).
        """
        for key in ("length", "shuffle", "seed", "world_size", "drop_last", "shard"):
            if key in state_dict and state_dict[key] != getattr(self, key):
                raise InputError(
                    f"cannot resume the sampler: the checkpoint has {key}={state_dict[key]!r} but this run has "
                    f"{key}={getattr(self, key)!r} (the data or the number of processes changed since it was saved)."
                )
        self.epoch = int(state_dict.get("epoch", self.epoch))
        self.start = int(state_dict.get("start", 0))
