"""Class imbalance: inverse-frequency class weights and a resumable class-balanced sampler."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Sampler

from lilaw_med.errors import InputError

__all__ = ["ClassBalancedSampler", "inverse_frequency_weights"]


def inverse_frequency_weights(labels: Sequence[int], num_classes: int) -> torch.Tensor:
    """Class weights ``N / (K * n_k)`` (sklearn's "balanced"); absent classes get weight 0.

    Args:
        labels: integer labels of the training items.
        num_classes: K.

    Returns:
        float32 tensor (K,); a balanced data set gives all ones.
    """
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes).astype(np.float64)
    weights = np.zeros(num_classes, dtype=np.float64)
    present = counts > 0
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return torch.as_tensor(weights, dtype=torch.float32)


class ClassBalancedSampler(Sampler[int]):
    """Draws ``length`` indices per epoch with replacement, each class equally likely.

    The order is a pure function of ``(seed, epoch)`` (like
    :class:`lilaw_med.data.sampler.ResumableSampler`, with the same ``set_epoch``/``set_start``/
    ``state_dict`` interface), so a resumed run sees the same samples. With ``world_size > 1``,
    rank ``r`` takes every ``world_size``-th index of the same draw, starting at ``r``; with ``shard``,
    rank ``r`` draws from its own items ``r, r + world_size, ...`` only (those it holds in a memory cache).

    Args:
        labels: integer label of every item (N,).
        seed: base seed; epoch ``e`` is drawn with ``seed + e``.
        rank: this process's rank.
        world_size: number of processes.
        shard: each rank draws from its own items only (still each class equally likely, by the classes'
            frequencies over all items).

    Raises:
        ValueError: on empty labels or a bad rank.
    """

    def __init__(
        self, labels: Sequence[int], seed: int = 0, rank: int = 0, world_size: int = 1, shard: bool = False
    ) -> None:
        labels_np = np.asarray(labels, dtype=np.int64)
        if labels_np.size == 0:
            raise ValueError("ClassBalancedSampler needs at least one label.")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}) but is {rank}.")
        counts = np.bincount(labels_np)
        self.probs = torch.as_tensor(1.0 / counts[labels_np], dtype=torch.float64)
        self.length = int(labels_np.size)
        self.seed = int(seed)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.num_samples = -(-self.length // self.world_size)
        self.shard = bool(shard) and self.world_size > 1 and self.rank < self.length
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch whose draw the next iterator yields."""
        self.epoch = int(epoch)

    def set_start(self, index: int) -> None:
        """Skips the first ``index`` samples of the current epoch's draw once (resume mid-epoch).

        Raises:
            ValueError: when ``index`` is outside ``[0, len(self)]``.
        """
        if not 0 <= int(index) <= self.num_samples:
            raise ValueError(f"start index must lie in [0, {self.num_samples}] but is {index}.")
        self.start = int(index)

    def epoch_indices(self) -> list[int]:
        """This rank's indices of the current epoch (without the start offset)."""
        if self.shard:
            own = torch.arange(self.rank, self.length, self.world_size)
            g = torch.Generator().manual_seed((self.seed + self.epoch) * self.world_size + self.rank)
            draw = torch.multinomial(self.probs[own], self.num_samples, replacement=True, generator=g)
            return own[draw].tolist()
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        total = self.num_samples * self.world_size
        draw = torch.multinomial(self.probs, total, replacement=True, generator=g).tolist()
        return draw[self.rank : total : self.world_size]

    def __iter__(self) -> Iterator[int]:
        indices = self.epoch_indices()
        start, self.start = self.start, 0
        return iter(indices[start:])

    def __len__(self) -> int:
        return self.num_samples

    def state_dict(self) -> dict[str, Any]:
        """``{"length", "seed", "world_size", "shard", "epoch", "start"}``."""
        return {"length": self.length, "seed": self.seed, "world_size": self.world_size, "shard": self.shard,
                "epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores epoch and start.

        Raises:
            ValueError: when the saved length, seed, world size or shard differ.
        """
        for key in ("length", "seed", "world_size", "shard"):
            if key in state_dict and state_dict[key] != getattr(self, key):
                raise InputError(f"cannot resume the sampler: saved {key}={state_dict[key]!r}, now {getattr(self, key)!r}.")
        self.epoch = int(state_dict.get("epoch", self.epoch))
        self.start = int(state_dict.get("start", 0))
