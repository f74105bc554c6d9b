"""LiLAWHandler: the meta step on alpha, beta, delta after every training iteration."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal

import ignite.distributed as idist
import torch
from ignite.engine import Engine, Events
from monai.engines.utils import IterationEvents

from lilaw_med.errors import InputError
from lilaw_med.losses import LiLAWLoss
from lilaw_med.meta_step_defaults import META_STEP_DEFAULTS

if TYPE_CHECKING:
    from monai.engines import SupervisedTrainer

__all__ = ["LiLAWHandler"]

logger = logging.getLogger(__name__)

# One device type's autocast state: (enabled, dtype, cache_enabled).
AutocastState = tuple[bool, torch.dtype, bool]


def autocast_state(device_types: Iterable[str]) -> dict[str, AutocastState]:
    """The autocast state in force now, for each of ``device_types``.

    Args:
        device_types: device types such as ``"cpu"``, ``"cuda"``.

    Returns:
        ``{device_type: (enabled, dtype, cache_enabled)}``.
    """
    cache = torch.is_autocast_cache_enabled()
    return {t: (torch.is_autocast_enabled(t), torch.get_autocast_dtype(t), cache) for t in device_types}


def enter_autocast_state(state: Mapping[str, AutocastState]) -> contextlib.ExitStack:
    """A context that reproduces ``state`` (from :func:`autocast_state`): autocast on, with the
    recorded dtype, for every device type that had it on, and explicitly off for the others (so an
    enclosing autocast does not leak in).

    Args:
        state: ``{device_type: (enabled, dtype, cache_enabled)}``.

    Returns:
        an ``ExitStack`` to use in a ``with`` statement.
    """
    stack = contextlib.ExitStack()
    for device_type, (enabled, dtype, cache) in state.items():
        stack.enter_context(torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=cache))
    return stack


def _check_settings(lr: float, weight_decay: float, val_mode: str, every: int, epoch_budget: float | None) -> None:
    """The meta step's settings, as :class:`LiLAWHandler` documents them."""
    _check_rates(lr, weight_decay)
    if val_mode not in ("eval", "train"):
        raise ValueError(f"val_mode must be 'eval' or 'train' but is {val_mode!r}.")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1 but is {every!r}.")
    if epoch_budget is not None and not (epoch_budget > 0 and math.isfinite(epoch_budget)):
        raise ValueError(f"epoch_budget must be None or a positive finite number but is {epoch_budget!r}.")


def _check_rates(lr: float, weight_decay: float) -> None:
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number but is {lr}.")
    if not (weight_decay >= 0 and math.isfinite(weight_decay)):
        raise ValueError(f"weight_decay must be >= 0 but is {weight_decay}.")


class LiLAWHandler:
    """Takes ONE gradient step on alpha, beta, delta on a validation mini-batch after every
    training iteration (or every ``every``-th; once warm-up has ended), then applies the clamps.

    The gradient of the validation loss w.r.t. the three scalars needs the network's outputs
    only, so the validation batch is forwarded once without gradient tracking and the backward
    runs through the weight formula alone: network parameters, their ``.grad`` and the optimizer
    state are never touched (nor, with ``val_mode="eval"``, the batch-norm statistics). The update
    is exactly ``theta <- theta - lr * (dL_val/dtheta + weight_decay * theta)`` (``lr`` scaled per
    epoch with ``epoch_budget``).

    The validation forward runs under exactly the autocast the trainer's own forward ran under
    (device types, dtype, on or off): the handler records the autocast state at MONAI's
    ``IterationEvents.FORWARD_COMPLETED``, which the trainer fires inside its autocast context,
    and re-enters it. It never decides from ``engine.amp`` itself: MONAI 1.6 enters
    ``torch.autocast("cuda", **amp_kwargs)`` when ``amp`` is set, which is off on a CPU run, so
    an ``amp: true`` bundle on CPU trains in float32 and its meta step must too. On an engine
    without ``IterationEvents`` the handler falls back to MONAI's rule
    (``amp`` and a ``scaler``: ``torch.autocast("cuda", **amp_kwargs)``).

    Under ``torch.distributed`` every rank takes its own validation batch and the three gradients
    (and the loss) are averaged across ranks before the step, so all ranks hold identical scalars:
    with equal per-rank batches and the spec's ``mean`` objective this is the meta step on the union
    of the ranks' batches; with ``meta_objective="normalized"`` it is the mean of the ranks' weighted
    means (each rank's ``sum(w)`` normalises its own batch), close to the union's when the ranks'
    weight totals are alike.

    The validation loader is cycled; on every new pass its sampler's ``set_epoch(pass_index)``
    is called when it has one (a ``DistributedSampler`` or a seeded resumable sampler), so each
    pass is reshuffled reproducibly. The position (pass, batch) is part of :meth:`state_dict`.

    After every meta step, ``engine.state.metrics`` holds ``{prefix}alpha``, ``{prefix}beta``,
    ``{prefix}delta``, ``{prefix}val_loss`` and the training batch's ``{prefix}weight_mean``,
    ``{prefix}weight_min``, ``{prefix}weight_max``; ``last_values`` holds the same as a dict.

    Args:
        val_loader: an iterable of validation batches that ``engine.prepare_batch`` accepts. It
            may be as noisy as the training data.
        loss: the :class:`LiLAWLoss` the trainer uses (its scalars are the ones updated).
        lr: the meta step's learning rate (spec: 0.01).
        weight_decay: the meta step's weight decay (spec: 0.01).
        val_mode: network mode of the validation forward: ``"train"`` (the default and the paper
            prototype's: batch norm normalises with the validation batch's own statistics and
            updates its running statistics with them; dropout active) or ``"eval"`` (running
            statistics and dropout left alone); docs/method.md says why ``"train"`` is the default.
        distributed: average the meta gradient across ranks; ``None`` decides from whether a
            process group of more than one rank is initialised.
        metrics_prefix: prefix of the keys written to ``engine.state.metrics``.
        every: take the meta step after every ``every``-th training iteration (by the trainer's global
            iteration count, so a resumed run steps at the same iterations). 1 (the spec's) after
            each one; a larger value trades the meta step's cost (its validation forward is about a
            quarter of a training step) against fewer updates of the three scalars; see docs/method.md.
        epoch_budget: how far one epoch moves the scalars, in the spec's steps. ``None`` takes the
            spec's step (``lr``, ``weight_decay``) at every meta step, so the scalars' end point
            follows the number of meta steps (batch size, data-set size, epochs). A number ``S``
            scales each step's ``lr`` by ``S / k``, with ``k = epoch_length / every`` the meta steps
            of an epoch on average: an epoch then moves the scalars as ``S`` spec steps would,
            whatever the batch size and the number of items.

    Raises:
        TypeError: when ``loss`` is not a :class:`LiLAWLoss`.
        ValueError: on a non-positive ``lr``, ``every`` or ``epoch_budget``, negative ``weight_decay`` or
            unknown ``val_mode``.

    Example::

        loss = LiLAWLoss(nn.CrossEntropyLoss(reduction="none"))
        trainer = SupervisedTrainer(device, max_epochs, train_loader, network, optimizer, loss)
        LiLAWHandler(val_loader, loss).attach(trainer)   # a meta step per iteration after the warm-up epoch
        trainer.run()
        loss.weighting.as_dict()                         # the learned alpha, beta, delta
    """

    def __init__(
        self,
        val_loader: Iterable,
        loss: LiLAWLoss,
        lr: float = META_STEP_DEFAULTS["lr"],
        weight_decay: float = META_STEP_DEFAULTS["weight_decay"],
        val_mode: Literal["eval", "train"] = META_STEP_DEFAULTS["val_mode"],
        distributed: bool | None = None,
        metrics_prefix: str = "lilaw_",
        every: int = META_STEP_DEFAULTS["every"],
        epoch_budget: float | None = META_STEP_DEFAULTS["epoch_budget"],
    ) -> None:
        if not isinstance(loss, LiLAWLoss):
            raise TypeError(f"loss must be a LiLAWLoss but is {type(loss).__name__}.")
        _check_settings(lr, weight_decay, val_mode, every, epoch_budget)
        self.val_loader = val_loader
        self.loss = loss
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.val_mode = val_mode
        self.distributed = distributed
        self.metrics_prefix = metrics_prefix
        self.every = every
        self.epoch_budget = None if epoch_budget is None else float(epoch_budget)
        self._warned_no_length = False
        self.steps = 0
        self.skipped_steps = 0
        self.last_values: dict[str, float] = {}
        self._val_pass = 0  # passes over the validation loader started so far, minus one
        self._val_cursor = 0  # batches taken in the current pass
        self._skip_on_start = 0
        self._val_iter: Iterator | None = None
        self.last_val_batch: Any = None  # raw batch of the last meta step (ids for the dynamics recorder)
        self.last_val_pred: torch.Tensor | None = None  # its logits (class probabilities for the recorder)
        self.train_autocast: dict[str, AutocastState] | None = None  # recorded at the trainer's forward

    # ---------------------------------------------------------------- ignite wiring
    def attach(self, engine: Engine) -> None:
        """Registers the warm-up bookkeeping on ``EPOCH_STARTED`` and the meta step on
        ``ITERATION_COMPLETED``.

        Args:
            engine: a MONAI ``SupervisedTrainer`` (or an engine with the same attributes:
                ``network``, ``prepare_batch``, ``inferer``, ``non_blocking``, ``amp``). On an
                engine with MONAI's ``IterationEvents`` the trainer's autocast state is also
                recorded at ``FORWARD_COMPLETED``.
        """
        if not engine.has_event_handler(self._epoch_started, Events.EPOCH_STARTED):
            engine.add_event_handler(Events.EPOCH_STARTED, self._epoch_started)
        forward_done = IterationEvents.FORWARD_COMPLETED
        # MONAI fires FORWARD_COMPLETED inside the trainer's autocast context: the one place where
        # the trainer's actual autocast state (not a re-derivation of it) can be read.
        if engine.has_registered_events(forward_done) and not engine.has_event_handler(
            self._record_autocast, forward_done
        ):
            engine.add_event_handler(forward_done, self._record_autocast)
        if not engine.has_event_handler(self, Events.ITERATION_COMPLETED):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def _epoch_started(self, engine: Engine) -> None:
        self.loss.set_epoch(engine.state.epoch)

    @staticmethod
    def _device_types(engine: Engine) -> list[str]:
        types = ["cpu", "cuda"]
        device = getattr(engine.state, "device", None)
        if device is not None and torch.device(device).type not in types:
            types.append(torch.device(device).type)
        return types

    def _record_autocast(self, engine: Engine) -> None:
        self.train_autocast = autocast_state(self._device_types(engine))

    def _meta_autocast(self, engine: Engine) -> contextlib.AbstractContextManager:
        """The autocast context of the validation forward: the trainer's recorded one, else the
        context MONAI 1.6's ``SupervisedTrainer._iteration`` enters (``amp`` and a ``scaler``:
        ``torch.autocast("cuda", **amp_kwargs)``, which torch turns off without CUDA)."""
        if self.train_autocast is not None:
            return enter_autocast_state(self.train_autocast)
        if getattr(engine, "amp", False) and getattr(engine, "scaler", None) is not None:
            if not torch.cuda.is_available():  # torch would warn and turn it off: say off quietly
                return contextlib.nullcontext()
            return torch.autocast("cuda", **(getattr(engine, "amp_kwargs", None) or {}))
        return contextlib.nullcontext()

    def __call__(self, engine: SupervisedTrainer) -> None:
        """Runs the meta step when warm-up has ended, on every ``every``-th iteration.

        Args:
            engine: the trainer the handler is attached to.
        """
        if self.loss.is_active and engine.state.iteration % self.every == 0:
            self.step(engine)

    # ---------------------------------------------------------------- the meta step
    def step_lr(self, engine: Engine) -> float:
        """The learning rate of the next meta step: ``lr``, scaled by ``epoch_budget / k`` when set.

        Args:
            engine: the trainer; ``engine.state.epoch_length`` gives the iterations of an epoch.

        Returns:
            The step size applied to the gradient and to the weight decay alike.
        """
        if self.epoch_budget is None:
            return self.lr
        length = getattr(engine.state, "epoch_length", None)
        if not length:  # a loader without len(): no epoch to spread a budget over
            if not self._warned_no_length:
                self._warned_no_length = True
                logger.warning("LiLAW epoch_budget=%s: the training loader has no length, so the meta step "
                               "takes the spec's lr until the epoch length is known.", self.epoch_budget)
            return self.lr
        # meta steps fire on global iterations divisible by `every`: an epoch averages length / every
        return self.lr * self.epoch_budget * self.every / int(length)

    def _is_distributed(self) -> bool:
        if self.distributed is not None:
            return self.distributed
        return idist.get_world_size() > 1

    @property
    def validation_position(self) -> tuple[int, int]:
        """``(pass, cursor)``: passes over the validation loader started so far minus one, and the
        batches taken in the current pass."""
        return self._val_pass, self._val_cursor

    def open_validation_pass(self) -> None:
        """(Re)opens the validation iterator at the current position (pass, cursor).

        Normally called lazily by :meth:`next_val_batch`. Resume code calls it explicitly at the
        point of the run where the interrupted run had opened it, because creating a DataLoader
        iterator draws from the global torch random state.
        """
        sampler = getattr(self.val_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self._val_pass)
        self._val_iter = iter(self.val_loader)
        for _ in range(self._skip_on_start):  # resume inside a pass: replay the cursor
            next(self._val_iter)
        self._skip_on_start = 0

    def next_val_batch(self) -> Any:
        """Returns the next validation batch, cycling (and reshuffling) the loader.

        Raises:
            ValueError: when the validation loader yields no batch at all.
        """
        if self._val_iter is None:
            self.open_validation_pass()
        try:
            batch = next(self._val_iter)
        except StopIteration:
            self._val_pass += 1
            self._val_cursor = 0
            self.open_validation_pass()
            try:
                batch = next(self._val_iter)
            except StopIteration:
                raise InputError("the LiLAW validation loader yields no batches: the validation split is empty.") from None
        self._val_cursor += 1
        self.last_val_batch = batch
        return batch

    def _forward(self, engine: SupervisedTrainer, batchdata: Any) -> tuple[torch.Tensor, torch.Tensor]:
        batch = engine.prepare_batch(
            batchdata, engine.state.device, engine.non_blocking, **getattr(engine, "to_kwargs", {})
        )
        inputs, targets = batch[0], batch[1]
        args, kwargs = (batch[2], batch[3]) if len(batch) == 4 else ((), {})
        network = engine.network
        was_training = network.training
        network.train(self.val_mode == "train")
        autocast = self._meta_autocast(engine)
        try:
            with torch.no_grad(), autocast:
                pred = engine.inferer(inputs, network, *args, **kwargs)
        finally:
            network.train(was_training)
        return pred.float(), targets

    def step(self, engine: SupervisedTrainer) -> bool:
        """One meta step: forward a validation batch without gradients, one update of alpha,
        beta, delta, then the clamps.

        Args:
            engine: the trainer whose network, prepare_batch, inferer and AMP settings are used.

        Returns:
            ``True`` when the step was taken, ``False`` when it was skipped for a non-finite loss.
        """
        pred, targets = self._forward(engine, self.next_val_batch())
        self.last_val_pred = pred
        weighting = self.loss.weighting
        params = [weighting.alpha, weighting.beta, weighting.delta]
        for p in params:
            p.grad = None  # whatever else left there must not leak into the update
        with torch.enable_grad():
            meta = self.loss.meta_loss(pred, targets)
            grads = torch.autograd.grad(meta, params)
        # plain tensors: a loss of MONAI MetaTensors carries the batch's metadata, and slicing a
        # "batched" MetaTensor whose length differs from the batch size fails
        packed = torch.stack([t.detach().as_subclass(torch.Tensor) for t in (meta, *grads)]).float()
        if self._is_distributed():  # every rank then takes the same step
            packed = idist.all_reduce(packed) / idist.get_world_size()
        train_w = (self.loss.last_stats.weight if self.loss.last_stats is not None else packed.new_ones(1)).float()
        summary = torch.cat([packed, torch.stack([train_w.min(), train_w.mean(), train_w.max()])]).tolist()
        val_loss = summary[0]  # one device sync per step, above
        if not all(math.isfinite(v) for v in summary[:4]):
            self.skipped_steps += 1
            logger.warning(
                "LiLAW meta step skipped at iteration %s: non-finite validation loss or gradient "
                "(loss=%s); alpha, beta, delta unchanged (%d skipped so far).",
                engine.state.iteration, val_loss, self.skipped_steps,
            )
            return False
        lr = self.step_lr(engine)
        with torch.no_grad():
            for p, g in zip(params, packed[1:4], strict=True):
                p.sub_(lr * (g.to(p.dtype) + self.weight_decay * p))
            weighting.clamp_()
        self.steps += 1
        values = weighting.as_dict()
        values.update(val_loss=val_loss, weight_min=summary[4], weight_mean=summary[5], weight_max=summary[6])
        self.last_values = values
        engine.state.metrics.update({f"{self.metrics_prefix}{k}": v for k, v in values.items()})
        return True

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The scalars and the handler's position, for MONAI's CheckpointSaver.

        Returns:
            ``{"weighting": ..., "val_pass": int, "val_cursor": int, "steps": int, "skipped_steps": int,
            "epoch": int}``.
        """
        return {
            "weighting": {k: v.detach().clone() for k, v in self.loss.weighting.state_dict().items()},
            "val_pass": self._val_pass,
            "val_cursor": self._val_cursor,
            "steps": self.steps,
            "skipped_steps": self.skipped_steps,
            "epoch": self.loss.epoch,
        }

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restores what :meth:`state_dict` saved; the next validation batch is the one that would
        have come next (the pass is replayed up to the saved cursor).

        Args:
            state_dict: a dict from :meth:`state_dict`.

        Raises:
            KeyError: when a key is missing.
        """
        missing = {"weighting", "val_pass", "val_cursor"} - set(state_dict)
        if missing:
            raise KeyError(f"LiLAWHandler state_dict is missing {sorted(missing)}.")
        self.loss.weighting.load_state_dict(state_dict["weighting"])
        self._val_pass = int(state_dict["val_pass"])
        self._val_cursor = int(state_dict["val_cursor"])
        self._skip_on_start = self._val_cursor
        self._val_iter = None
        self.steps = int(state_dict.get("steps", 0))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.loss.set_epoch(int(state_dict.get("epoch", self.loss.epoch)))
