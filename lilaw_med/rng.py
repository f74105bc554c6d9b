"""Random number generator states as tensors: capture and restore, for checkpoints that resume exactly.

:func:`capture_rng_state` / :func:`restore_rng_state` cover the process-wide generators (Python's
``random``, NumPy's global one, torch's CPU one and every initialised CUDA device's);
:func:`capture_loader_rng_state` / :func:`restore_loader_rng_state` a data loader's own generator
and the generators of its dataset's random transforms. Everything is a tensor, so a checkpoint that
holds them loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["capture_loader_rng_state", "capture_rng_state", "restore_loader_rng_state", "restore_rng_state"]

logger = logging.getLogger(__name__)


def capture_rng_state() -> dict[str, torch.Tensor]:
    """The states of Python's ``random``, NumPy's global generator, torch's CPU generator and every
    initialised CUDA device's generator, as tensors only (so ``weights_only=True`` loading works).

    Returns:
        ``{"python_state": int64 (625,), "python_version": int64 (), "python_gauss": float64 (2,)
        (has_gauss, value), "numpy_keys": int64 (624,), "numpy_pos": int64 (3,) (pos, has_gauss, 0),
        "numpy_gauss": float64 (), "torch": uint8 (S,), "cuda": uint8 (D, S') when CUDA is initialised}``.
    """
    version, internal, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    if np_name != "MT19937":  # the legacy global generator is always MT19937
        raise RuntimeError(f"unexpected NumPy global generator {np_name!r}.")
    state = {
        "python_version": torch.tensor(int(version), dtype=torch.int64),
        "python_state": torch.tensor(list(internal), dtype=torch.int64),
        "python_gauss": torch.tensor(
            [gauss is not None, 0.0 if gauss is None else gauss], dtype=torch.float64
        ),
        "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64).copy()),
        "numpy_pos": torch.tensor([int(np_pos), int(np_has_gauss), 0], dtype=torch.int64),
        "numpy_gauss": torch.tensor(float(np_gauss), dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.stack(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, torch.Tensor]) -> None:
    """Restores what :func:`capture_rng_state` captured.

    Args:
        state: a dict from :func:`capture_rng_state`. A CUDA state is restored when as many CUDA
            devices are visible as when it was saved (otherwise a warning, the CPU states still apply).

    Raises:
        KeyError: when a CPU generator's state is missing.
    """
    gauss = state["python_gauss"].tolist()
    random.setstate(
        (
            int(state["python_version"]),
            tuple(int(v) for v in state["python_state"].tolist()),
            gauss[1] if gauss[0] else None,
        )
    )
    pos, has_gauss, _ = (int(v) for v in state["numpy_pos"].tolist())
    np.random.set_state(
        (
            "MT19937",
            state["numpy_keys"].numpy().astype(np.uint32),
            pos,
            has_gauss,
            float(state["numpy_gauss"]),
        )
    )
    torch.set_rng_state(state["torch"].to(torch.uint8).cpu())
    cuda = state.get("cuda")
    if cuda is not None:
        if torch.cuda.is_available() and torch.cuda.device_count() == cuda.shape[0]:
            torch.cuda.set_rng_state_all(list(cuda.to(torch.uint8).cpu()))
        else:
            logger.warning(
                "the checkpoint holds the random state of %d CUDA device(s) but %d are visible: CUDA random "
                "numbers will differ from the interrupted run.",
                cuda.shape[0],
                torch.cuda.device_count() if torch.cuda.is_available() else 0,
            )


def _transform_randomizables(loader: Any) -> list[Any]:
    """The random transforms of a loader's dataset, in a stable order (Compose, wrappers, nested)."""
    # the core layer imports no MONAI: only a loader's random transforms need it
    from monai.transforms import Randomizable, Transform

    found: list[Any] = []
    seen: set[int] = set()

    def visit(obj: Any) -> None:
        if isinstance(obj, (list, tuple)):
            for o in obj:
                visit(o)
            return
        if not isinstance(obj, (Transform, Randomizable)) or id(obj) in seen:
            return
        seen.add(id(obj))
        if isinstance(getattr(obj, "R", None), np.random.RandomState):
            found.append(obj)
        for value in vars(obj).values():
            visit(value)

    visit(getattr(getattr(loader, "dataset", None), "transform", None))
    return found


def capture_loader_rng_state(loader: Any) -> dict[str, torch.Tensor]:
    """The random state of a data loader: its ``generator`` (the seed of each iterator's workers) and
    the ``R`` generators of its dataset's random transforms (which advance in the main process when
    ``num_workers=0``), as tensors.

    Args:
        loader: a ``DataLoader`` (anything without these parts gives an empty dict).

    Returns:
        ``{"generator": uint8 (S,), "transform_keys": int64 (T, 624), "transform_meta": float64 (T, 3)
        (pos, has_gauss, cached_gaussian)}``, each present when there is something to save.
    """
    state: dict[str, torch.Tensor] = {}
    generator = getattr(loader, "generator", None)
    if isinstance(generator, torch.Generator):
        state["generator"] = generator.get_state()
    randomizables = _transform_randomizables(loader)
    if randomizables:
        keys, meta = [], []
        for t in randomizables:
            _, k, pos, has_gauss, gauss = t.R.get_state()
            keys.append(np.asarray(k, dtype=np.int64))
            meta.append([pos, has_gauss, gauss])
        state["transform_keys"] = torch.from_numpy(np.stack(keys))
        state["transform_meta"] = torch.tensor(meta, dtype=torch.float64)
    return state


def restore_loader_rng_state(loader: Any, state: Mapping[str, torch.Tensor]) -> None:
    """Restores what :func:`capture_loader_rng_state` captured into a loader built the same way.

    Args:
        loader: the new run's data loader.
        state: the saved state.
    """
    generator = getattr(loader, "generator", None)
    if "generator" in state and isinstance(generator, torch.Generator):
        generator.set_state(state["generator"].to(torch.uint8).cpu())
    if "transform_keys" not in state:
        return
    randomizables = _transform_randomizables(loader)
    keys, meta = state["transform_keys"], state["transform_meta"]
    if len(randomizables) != keys.shape[0]:
        logger.warning(
            "the checkpoint holds the state of %d random transforms but the training data has %d: random "
            "augmentations will differ from the interrupted run.",
            keys.shape[0],
            len(randomizables),
        )
        return
    for t, k, m in zip(randomizables, keys, meta.tolist(), strict=True):
        t.R.set_state(("MT19937", k.numpy().astype(np.uint32), int(m[0]), int(m[1]), float(m[2])))
