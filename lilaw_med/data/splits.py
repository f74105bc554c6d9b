"""Grouped, stratified splits of datalist items: the validation split and k-fold folds.

A group (``item["group"]``, or the item itself when it has none) always stays on one side; see
docs/data.md section 1.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from lilaw_med.errors import InputError

__all__ = ["group_kfold", "split_validation"]


def split_validation(
    items: Sequence[Mapping[str, Any]], val_fraction: float = 0.15, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Splits a validation set off a training list: grouped, stratified by label, seeded.

    Whole groups (``item["group"]``, or the item itself when it has none) go to one side. Groups
    are visited in a seeded random order and one is moved to validation when that brings the
    per-class counts closer to their targets (``val_fraction * n_c``), so the size and the class
    mix of both sides match the request up to group granularity.

    Args:
        items: training items (each with ``id``, ``label`` and optionally ``group``).
        val_fraction: the fraction of items to move to validation, in (0, 1).
        seed: seed of the group order.

    Returns:
        ``(training, validation)``, each in the input order.

    Raises:
        InputError: when the items form fewer than 2 groups (no grouped split is possible).
    """
    items = [dict(it) for it in items]
    groups = _group_indices(items)
    if len(groups) < 2:
        raise InputError(
            f"cannot split a validation set off the training list: its {len(items)} item(s) form "
            f"{len(groups)} group(s); give a 'validation' split or more groups."
        )
    order = sorted(groups)  # deterministic before the seeded shuffle
    np.random.default_rng(seed).shuffle(order)
    keys = [_strat_key(it.get("label")) for it in items]
    chosen = set(_validation_indices(groups, order, keys, val_fraction))
    train = [it for i, it in enumerate(items) if i not in chosen]
    val = [it for i, it in enumerate(items) if i in chosen]
    if not train:
        raise InputError("the validation split took every training item; lower val_fraction or add groups.")
    return train, val


def _group_indices(items: Sequence[Mapping[str, Any]]) -> dict[str, list[int]]:
    """The item indices of each group."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, it in enumerate(items):
        groups[_group_key(it)].append(i)
    return groups


def _validation_indices(
    groups: Mapping[str, list[int]], order: Sequence[str], keys: Sequence[str], val_fraction: float
) -> list[int]:
    """The item indices of the groups taken for validation, visiting ``groups`` in ``order``."""
    target = {k: val_fraction * c for k, c in Counter(keys).items()}
    taken: Counter[str] = Counter()
    val_idx: list[int] = []
    deficit = sum(target.values())
    for g in order:
        counts = Counter(keys[i] for i in groups[g])
        # take the group when it brings the per-class counts closer to their targets
        new = deficit + sum(
            abs(target[k] - taken[k] - c) - abs(target[k] - taken[k]) for k, c in counts.items()
        )
        if new < deficit:
            taken.update(counts)
            val_idx.extend(groups[g])
            deficit = new
    if not val_idx:  # every group too large for the targets: take the smallest
        val_idx = list(groups[min(order, key=lambda k: len(groups[k]))])
    return val_idx


def group_kfold(
    items: Sequence[Mapping[str, Any]], k: int, seed: int = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Grouped, stratified k-fold cross-validation folds (sklearn's ``StratifiedGroupKFold``).

    A group (``item["group"]``, or the item itself when it has none) is always in one fold.

    Args:
        items: the items (each with ``id``, ``label`` and optionally ``group``).
        k: the number of folds (>= 2, at most the number of groups).
        seed: shuffling seed.

    Returns:
        ``k`` pairs ``(train_indices, heldout_indices)`` of int arrays into ``items``; the
        held-out parts partition ``range(len(items))``.

    Raises:
        InputError: for ``k < 2`` or fewer groups than folds.
    """
    # scikit-learn only for group k-fold: a process that only predicts loads a datalist without it (lilaw_med.lean)
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise InputError(f"k must be at least 2 but is {k}.")
    group_keys = [_group_key(it) for it in items]
    n_groups = len(set(group_keys))
    if n_groups < k:
        raise InputError(f"cannot make {k} grouped folds from {n_groups} group(s).")
    strat = [_strat_key(it.get("label")) for it in items]
    _, y = np.unique(np.asarray(strat, dtype=object).astype(str), return_inverse=True)
    _, g = np.unique(np.asarray(group_keys, dtype=object).astype(str), return_inverse=True)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    x = np.zeros((len(items), 1))
    return [
        (np.asarray(tr, dtype=np.int64), np.asarray(te, dtype=np.int64)) for tr, te in splitter.split(x, y, g)
    ]


def _group_key(item: Mapping[str, Any]) -> str:
    group = item.get("group")
    return f"g:{group}" if group not in (None, "") else f"i:{item.get('id')}"


def _strat_key(label: Any) -> str:
    if isinstance(label, list):
        return "".join(str(int(v)) for v in label)
    return str(label)
