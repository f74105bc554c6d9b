"""Out-of-fold class probabilities of a run's training items (``lilaw-med audit --folds K``).

One training run sees every training item, so its view of an item's label is in-sample: a
network memorises wrong labels, and its probabilities for them drift towards the given label.
Cross-fitting removes that: the training items are split into K grouped, stratified folds, K
extra runs each train on K-1 folds with the run's own config (and validation split), and each
predicts the fold it never saw (cleanlab's ``estimate_cv_predicted_probabilities``, through the
toolkit's own pipeline). The audit combines these out-of-fold probabilities with the run's
dynamics (:mod:`lilaw_med.audit.core`).

On disk (``OUT_DIR``, by default ``RUN_DIR/crossfit_K``)::

    fold_1/ ... fold_K/      each a complete run folder (config, datalist, checkpoints, metrics)
    oof_probs.npy            float32 (N, C), row i = the training item ids[i]
    oof_ids.json             the ids, the run's dynamics order
    crossfit.json            folds, overrides, which checkpoint predicted (best by default), fold sizes

A finished fold (its ``summary.json``, and ``fold.json`` naming the folds, overrides, seed and
held-out ids it was trained for) is never trained again, so an interrupted cross-fit resumes fold
by fold; a fold trained for other settings is trained again. The settings include a hash of the
training ids, so a ``crossfit_K`` folder made for another datalist is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.data.datalist import group_kfold
from lilaw_med.errors import InputError
from lilaw_med.run.config import Config, apply_overrides, validate_config
from lilaw_med.run.dynamics_format import load_dynamics
from lilaw_med.run.run_dir import RunDir
from lilaw_med.training.evaluation import probabilities, run_inference
from lilaw_med.training.run import run_training
from lilaw_med.utils import atomic_write
from lilaw_med.workflows.trained_run import TrainedRun

__all__ = ["CrossFitResult", "cross_fit", "item_probabilities", "load_cross_fit"]

logger = logging.getLogger(__name__)

OOF_PROBS = "oof_probs.npy"
OOF_IDS = "oof_ids.json"
INFO = "crossfit.json"
FOLD_INFO = "fold.json"


@dataclass(frozen=True)
class CrossFitResult:
    """Out-of-fold probabilities of a run's training items.

    Attributes:
        ids: the training item ids (N), in the run's dynamics order.
        probs: float64 (N, C) class probabilities from the fold model that did not train on the item.
        out_dir: the folder holding the fold runs and the arrays.
        folds: K.
    """

    ids: list[str]
    probs: np.ndarray
    out_dir: Path
    folds: int

    def aligned(self, ids: Sequence[str]) -> np.ndarray:
        """The rows for ``ids`` (any order).

        Raises:
            InputError: when an id has no out-of-fold row (the cross-fit belongs to another datalist).
        """
        index = {i: k for k, i in enumerate(self.ids)}
        missing = [i for i in ids if i not in index]
        if missing:
            raise InputError(f"{len(missing)} item(s) have no out-of-fold probabilities in {self.out_dir} "
                           f"(e.g. {missing[0]!r}): the cross-fit was made for another datalist.")
        return self.probs[[index[i] for i in ids]]


def item_probabilities(run_dir: str | os.PathLike, items: Sequence[Mapping[str, Any]], which: str = "final") -> np.ndarray:
    """Class probabilities of a run's model for the given items (one eval pass, no calibration).

    Args:
        run_dir: the run folder.
        items: datalist items (``image``, ``id``; ``label`` optional), transformed by the run's
            own evaluation transforms.
        which: ``"final"`` or ``"best"`` model.

    Returns:
        float64 (N, C) probabilities in the order of ``items``.
    """
    run = TrainedRun.load(run_dir, which, device="cpu")
    labelled = [{**it, "label": it.get("label", 0), "id": str(it["id"])} for it in items]
    loader = run.loader(labelled, batch_size=run.config.train.batch_size)
    logits, _, out_ids = run_inference(run.network, loader, run.device)
    probs = probabilities(logits)
    wanted = [str(it["id"]) for it in items]
    if list(out_ids) != wanted:
        order = {i: k for k, i in enumerate(out_ids)}
        probs = probs[[order[i] for i in wanted]]
    return probs


def load_cross_fit(out_dir: str | os.PathLike) -> CrossFitResult:
    """Reads a finished cross-fit.

    Raises:
        FileNotFoundError: when ``out_dir`` holds no finished cross-fit.
    """
    out = Path(out_dir)
    if not (out / OOF_PROBS).is_file() or not (out / OOF_IDS).is_file():
        raise FileNotFoundError(f"{out}: no finished cross-fit ({OOF_PROBS} and {OOF_IDS}); run `lilaw-med audit RUN --folds K`.")
    info = json.loads((out / INFO).read_text(encoding="utf-8")) if (out / INFO).is_file() else {}
    return CrossFitResult(
        ids=json.loads((out / OOF_IDS).read_text(encoding="utf-8")),
        probs=np.load(out / OOF_PROBS, allow_pickle=False).astype(np.float64),
        out_dir=out, folds=int(info.get("folds", 0)),
    )


def cross_fit(
    run_dir: str | os.PathLike,
    folds: int = 4,
    out_dir: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    which: str = "best",
    seed: int | None = None,
) -> CrossFitResult:
    """Trains ``folds`` models on K-1 folds each and predicts the held-out fold.

    Args:
        run_dir: a finished run folder (its ``config.yaml`` and resolved ``datalist.json``).
        folds: K >= 2.
        out_dir: where the fold runs and arrays go (default ``RUN_DIR/crossfit_K``).
        overrides: ``--set``-style overrides for the fold runs (e.g. ``["lilaw.enabled=false"]``).
        which: the checkpoint of each fold model that predicts its held-out fold: ``"best"`` (default:
            the best by the noisy validation key metric, the model ``lilaw-med predict`` uses; the
            final one when the fold kept none) or ``"final"``. A network memorises wrong labels late
            in training, so the final model's out-of-fold view is the weaker one.
        seed: the fold-splitting seed (default: the run's ``train.seed``).

    Returns:
        The :class:`CrossFitResult`; reused as is when ``out_dir`` already holds one made with the
        same folds, overrides, checkpoint, seed and training ids.

    Raises:
        FileNotFoundError: when ``run_dir`` is not a finished run folder.
        InputError: for ``folds < 2`` or fewer groups than folds.

    Example::

        result = cross_fit("runs/first", folds=4)              # trains 4 fold models in runs/first/crossfit_4
        probs = result.aligned(ids)                             # (N, C) out-of-fold probabilities
    """

    rd = _check_cross_fit(RunDir(run_dir), folds)
    out = Path(out_dir) if out_dir is not None else rd.root / f"crossfit_{folds}"
    base_cfg = validate_config(rd.read_config())  # the run's own settings, keys added since included
    split_seed = int(Config.from_mapping(base_cfg).train.seed if seed is None else seed)
    datalist = json.loads(rd.datalist.read_text(encoding="utf-8"))
    ids, items = _training_items(rd, datalist)
    ids_sha256 = _ids_hash(ids)
    settings = {"folds": folds, "overrides": list(overrides), "which": which, "seed": split_seed,
                "ids_sha256": ids_sha256}
    if _finished(out, settings):
        return load_cross_fit(out)
    probs = np.full((len(items), 0), np.nan)
    sizes = []
    for k, (train_idx, held_idx) in enumerate(group_kfold(items, folds, seed=split_seed), start=1):
        fold_key = {"folds": folds, "overrides": list(overrides), "seed": split_seed, "ids_sha256": ids_sha256,
                    "held_out": [ids[i] for i in held_idx]}
        fold_datalist = _fold_datalist(datalist, [items[i] for i in train_idx], [items[i] for i in held_idx])
        fold_run = _train_fold(rd, out / f"fold_{k}", fold_key, fold_datalist, overrides, f"{k}/{folds}")
        p = item_probabilities(fold_run.root, [items[i] for i in held_idx], which=which)
        if k == 1:
            probs = np.full((len(items), p.shape[1]), np.nan)
        probs[held_idx] = p
        sizes.append(int(len(held_idx)))
    atomic_write(out / OOF_PROBS, _npy_bytes(probs.astype(np.float32)))
    atomic_write(out / OOF_IDS, json.dumps(ids))
    atomic_write(out / INFO, json.dumps({**settings, "fold_sizes": sizes}, indent=1))
    return load_cross_fit(out)


def _check_cross_fit(rd: RunDir, folds: int) -> RunDir:
    """``rd``, once it is a finished run folder and ``folds`` is 2 or more."""
    if not rd.config.is_file() or not rd.datalist.is_file():
        raise FileNotFoundError(f"{rd.root} is not a finished run folder ({RunDir.CONFIG} and {RunDir.DATALIST} needed).")
    if folds < 2:
        raise InputError(f"folds must be at least 2 but is {folds}.")
    return rd


def _ids_hash(ids: Sequence[str]) -> str:
    """SHA-256 of the training ids in order: tells a cross-fit of this datalist from one of another."""
    return hashlib.sha256(json.dumps(list(ids)).encode("utf-8")).hexdigest()


def _finished(out: Path, settings: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds a cross-fit made with ``settings`` (folds, overrides, checkpoint, seed, ids)."""
    if not (out / INFO).is_file():
        return False
    done = json.loads((out / INFO).read_text(encoding="utf-8"))
    return {k: done.get(k) for k in settings} == settings and (out / OOF_PROBS).is_file()


def _training_items(rd: RunDir, datalist: Mapping[str, Any]) -> tuple[list[str], list[dict[str, Any]]]:
    """The run's training ids and items, in the order of its dynamics (else of its datalist)."""
    training = datalist.get("training", [])
    ids = load_dynamics(rd.root).ids if (rd.root / RunDir.DYNAMICS).is_dir() else [str(it["id"]) for it in training]
    by_id = {str(it["id"]): it for it in training}
    return ids, [by_id[i] for i in ids]


def _fold_datalist(datalist: Mapping[str, Any], training: list[Any], held_out: list[Any]) -> dict[str, Any]:
    """A fold's datalist: the run's settings and validation split, ``training`` and ``held_out`` as its test split."""
    fold_list = {key: v for key, v in datalist.items() if key not in ("training", "validation", "test", "noise_sidecar")}
    fold_list.update(training=training, validation=datalist.get("validation", []), test=held_out)
    return fold_list


def _train_fold(
    rd: RunDir, fold_dir: Path, fold_key: Mapping[str, Any], fold_datalist: Mapping[str, Any], overrides: Sequence[str],
    name: str,
) -> RunDir:
    """Trains fold ``name`` ("k/K") in ``fold_dir/run`` unless a finished fold for ``fold_key`` is there already."""
    fold_run = RunDir(fold_dir / "run")
    marker = fold_dir / FOLD_INFO
    if not _fold_done(fold_dir, fold_run.summary, fold_key):
        marker.unlink(missing_ok=True)
        list_path = atomic_write(fold_dir / "datalist_in.json", json.dumps(fold_datalist, indent=1))
        logger.info("cross-fit fold %s: training on %d items, predicting %d", name, len(fold_datalist["training"]),
                    len(fold_datalist["test"]))
        cfg = validate_config(apply_overrides(rd.read_config(), [
            *overrides, f"data.datalist={list_path}", "data.sample_data=false", "data.exclude=null",
            "data.relabel=null", "output.overwrite=true"]))
        run_training(cfg, fold_run.root)
        atomic_write(marker, json.dumps(fold_key))
    return fold_run


def _fold_done(fold_dir: Path, summary: Path, fold_key: Mapping[str, Any]) -> bool:
    """Whether ``fold_dir`` holds a finished fold trained for ``fold_key`` (folds, overrides, seed, ids, held-out ids)."""
    if not summary.is_file():
        return False
    marker = fold_dir / FOLD_INFO
    if marker.is_file():
        return json.loads(marker.read_text(encoding="utf-8")) == fold_key
    try:  # a fold finished before fold.json was written: reused when it held out the same items
        held = [str(it["id"]) for it in json.loads((fold_dir / "datalist_in.json").read_text(encoding="utf-8"))["test"]]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return held == list(fold_key["held_out"])


def _npy_bytes(a: np.ndarray) -> bytes:

    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()
