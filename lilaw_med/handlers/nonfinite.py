"""NonFiniteLossHandler: stops training at the first NaN/inf training loss, naming the iteration and
the items of the batch, before any checkpoint of the damaged state is written."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

__all__ = ["NonFiniteLossError", "NonFiniteLossHandler"]

from lilaw_med.errors import InputError

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError, InputError):
    """The training loss became NaN or infinite.

    It is an :class:`~lilaw_med.errors.InputError` (a bad value in the data, or settings such as the
    learning rate, reached the loss): the user acts on it, so the ``lilaw-med`` CLI prints its
    message, which names the iteration, the batch's items and the last good checkpoint, as one line.

    Attributes:
        iteration: the engine iteration (1-based) whose loss was not finite.
        epoch: its epoch.
        item_ids: the ids of the batch's items.
        bad_item_ids: the ids whose own per-sample loss was not finite (empty when unknown).
        checkpoint: the newest checkpoint written before it, when known.
    """

    def __init__(
        self,
        message: str,
        iteration: int,
        epoch: int,
        item_ids: Sequence[str],
        bad_item_ids: Sequence[str],
        checkpoint: Path | None,
    ) -> None:
        super().__init__(message)
        self.iteration = iteration
        self.epoch = epoch
        self.item_ids = list(item_ids)
        self.bad_item_ids = list(bad_item_ids)
        self.checkpoint = checkpoint


def _loss_value(output: Any) -> torch.Tensor | float | None:
    # MONAI's trainer output is a dict with "loss", or after decollation a list of such dicts
    if isinstance(output, (list, tuple)) and output:
        output = output[0]
    if isinstance(output, dict):
        output = output.get("loss")
    return output


def _batch_ids(batch: Any) -> list[str]:
    if isinstance(batch, dict):
        ids = batch.get("id")
        return (
            [str(i) for i in ids] if isinstance(ids, (list, tuple)) else ([] if ids is None else [str(ids)])
        )
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], dict):  # a decollated batch
        return [str(b["id"]) for b in batch if "id" in b]
    return []


def _shorten(ids: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (f", ... ({len(ids)} in all)" if len(ids) > limit else "")


def _message(value: float, it: int, ep: int, ids: list[str], bad: list[str], last: Any) -> str:
    """What stopped training, which items to look at, and where the run can resume."""
    message = f"the training loss is {value} at iteration {it} (epoch {ep})"
    if bad:
        message += f"; items with a non-finite loss: {_shorten(bad)}"
    if ids:
        message += f"; items in the batch: {_shorten(ids)}"
    message += ". Training stopped before this state was saved" + (
        f"; the last good checkpoint is {last} (lilaw-med train --resume RUN_DIR continues from it)"
        if last
        else ""
    )
    return message + ". Check those items (lilaw-med validate-data) or lower the learning rate."


class NonFiniteLossHandler:
    """Raises :class:`NonFiniteLossError` at the first training iteration whose loss is NaN or inf.

    The message names the iteration and epoch, the batch's item ids (``batch["id"]``), the items whose
    own per-sample loss was not finite (from ``LiLAWLoss.last_loss`` when a loss is given) and the
    newest checkpoint, which holds the state before the damage: the optimizer step of that iteration has
    already run with non-finite gradients, so the run must not go on and no checkpoint may be written
    after it. The checkpoint handler runs after every other handler of an iteration, so raising here
    keeps it from saving. Unlike ignite's ``TerminateOnNan`` (which ends the run quietly, as if it had
    completed), the caller gets an exception it can report; the ``lilaw-med`` CLI prints its message.

    Args:
        loss: the trainer's loss (``None``: the engine's ``loss_function``); when it has ``last_loss``
            (a per-sample (N,) tensor, as :class:`~lilaw_med.losses.LiLAWLoss`), the items with a
            non-finite loss are named.
        output_transform: maps ``engine.state.output`` to the loss; the default reads MONAI's ``"loss"``
            (also from a decollated output).
        checkpoint: the checkpoint handler, whose ``last_checkpoint`` is named in the message
            (``None``: ``engine.state.last_checkpoint``, which the checkpoint handler and the resume set).

    Raises:
        NonFiniteLossError: from ``__call__``, when the loss is not finite.
    """

    def __init__(
        self,
        loss: Any | None = None,
        output_transform: Callable[[Any], Any] = _loss_value,
        checkpoint: Any | None = None,
    ) -> None:
        self.loss = loss
        self.output_transform = output_transform
        self.checkpoint = checkpoint

    def attach(self, engine: Engine) -> None:
        """Registers the check on ``ITERATION_COMPLETED``.

        Args:
            engine: the trainer.
        """
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        """Checks the iteration's loss.

        Args:
            engine: the trainer.

        Raises:
            NonFiniteLossError: when the loss is NaN or infinite.
        """
        value = self.output_transform(engine.state.output)
        if value is None:
            return
        value = float(value.detach().float().item()) if isinstance(value, torch.Tensor) else float(value)
        if math.isfinite(value):
            return
        ids = _batch_ids(engine.state.batch)
        bad = self._bad_items(engine, ids)
        last = getattr(self.checkpoint, "last_checkpoint", None) or getattr(
            engine.state, "last_checkpoint", None
        )
        it, ep = engine.state.iteration, engine.state.epoch
        message = _message(value, it, ep, ids, bad, last)
        logger.debug(message)  # the caller reports the exception; logging it here would say it twice
        raise NonFiniteLossError(message, it, ep, ids, bad, Path(last) if last else None)

    def _bad_items(self, engine: Engine, ids: list[str]) -> list[str]:
        """The batch's items whose own loss is not finite, when the loss kept its per-sample values."""
        loss = self.loss if self.loss is not None else getattr(engine, "loss_function", None)
        per_sample = getattr(loss, "last_loss", None)
        if not (isinstance(per_sample, torch.Tensor) and ids and per_sample.shape[0] == len(ids)):
            return []
        finite = torch.isfinite(per_sample.reshape(len(ids), -1)).all(dim=1).tolist()
        return [i for i, ok in zip(ids, finite, strict=True) if not ok]

    def state_dict(self) -> dict[str, Any]:
        """Stateless: an empty dict (present so it can sit among checkpointed objects).

        Returns:
            ``{}``.
        """
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Nothing to restore.

        Args:
            state_dict: ignored.
        """
