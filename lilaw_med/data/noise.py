"""Label-noise simulation with the truth recorded (cleanlab-style pure functions over arrays).

Four kinds, named by a string (:data:`NOISE_KINDS`): ``"symmetric"`` (a wrong label with
probability ``rate``), ``"uniform"`` (the LiLAW authors' "uniform" noise: redrawn from all ``K``
classes, so ``rate * (K - 1) / K`` wrong; the papers' noise levels mean this), ``"asymmetric"``
(class-conditional, a transition matrix or class pairs) and ``"instance"`` (Xia et al., NeurIPS
2020). Every function is seeded, returns the noisy labels and the rate actually applied
(``mean(noisy != labels)``), and never changes its input. See docs/data.md section 5.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.data.datalist import SPLITS, Datalist, load_datalist
from lilaw_med.errors import InputError
from lilaw_med.utils import atomic_write

__all__ = [
    "NOISE_KINDS",
    "NoiseResult",
    "add_noise",
    "add_noise_to_datalist",
    "asymmetric_noise",
    "instance_dependent_noise",
    "load_noise_truth",
    "pairs_to_transition",
    "symmetric_noise",
    "uniform_noise",
]

logger = logging.getLogger(__name__)

NOISE_KINDS = ("symmetric", "uniform", "asymmetric", "instance")


def _check_labels(labels: Sequence[int] | np.ndarray, num_classes: int) -> np.ndarray:
    y = np.asarray(labels)
    if y.ndim != 1:
        raise InputError(f"labels must be a 1D array of class indices but have shape {y.shape}.")
    if num_classes < 2:
        raise InputError(f"num_classes must be at least 2 but is {num_classes}.")
    if y.size and (y.min() < 0 or y.max() >= num_classes):
        raise InputError(f"labels must be in [0, {num_classes - 1}] but range over [{y.min()}, {y.max()}].")
    return y.astype(np.int64)


def _check_rate(rate: float) -> float:
    if not 0.0 <= rate <= 1.0:
        raise InputError(f"rate must be in [0, 1] but is {rate}.")
    return float(rate)


def symmetric_noise(
    labels: Sequence[int] | np.ndarray, rate: float, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """Symmetric noise: each label moves, with probability ``rate``, to a uniform other class.

    Args:
        labels: true class indices, shape (N,), values in [0, num_classes).
        rate: flip probability in [0, 1].
        num_classes: K >= 2.
        seed: random seed.

    Returns:
        ``(noisy, actual_rate)``: noisy labels (N,) int64 and ``mean(noisy != labels)``.
    """
    # an offset in [1, K-1] added mod K gives a uniform choice among the other classes
    return _replace_with_offset(labels, rate, num_classes, seed, lowest_offset=1)


def uniform_noise(
    labels: Sequence[int] | np.ndarray, rate: float, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, float]:
    """The prototype's uniform noise: each label is redrawn, with probability ``rate``, from all classes.

    A redrawn label keeps its class with probability ``1 / K``, so the expected share of wrong
    labels is ``rate * (K - 1) / K``; ``actual_rate`` reports the share that differs.

    Args:
        labels: true class indices, shape (N,), values in [0, num_classes).
        rate: redraw probability in [0, 1].
        num_classes: K >= 2.
        seed: random seed.

    Returns:
        ``(noisy, actual_rate)``: noisy labels (N,) int64 and ``mean(noisy != labels)``.
    """
    # an offset in [0, K-1] added mod K gives a uniform choice among all classes
    return _replace_with_offset(labels, rate, num_classes, seed, lowest_offset=0)


def _replace_with_offset(
    labels: Sequence[int] | np.ndarray, rate: float, num_classes: int, seed: int, lowest_offset: int
) -> tuple[np.ndarray, float]:
    """Each label, with probability ``rate``, moves by a uniform offset in ``[lowest_offset, K-1]`` mod K."""
    y = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    rng = np.random.default_rng(seed)
    moved = rng.random(y.shape[0]) < rate
    offset = rng.integers(lowest_offset, num_classes, size=y.shape[0])
    noisy = np.where(moved, (y + offset) % num_classes, y)
    return noisy, float(np.mean(noisy != y)) if y.size else 0.0


def pairs_to_transition(pairs: Mapping[int, int], rate: float, num_classes: int) -> np.ndarray:
    """Transition matrix that flips class ``i`` to ``pairs[i]`` with probability ``rate``.

    Args:
        pairs: source class -> target class (source != target).
        rate: flip probability of a listed source class.
        num_classes: K.

    Returns:
        ``T`` (K, K), rows summing to 1, ``T[i, j] = P(noisy = j | true = i)``.
    """
    rate = _check_rate(rate)
    t = np.eye(num_classes)
    for src, dst in pairs.items():
        src, dst = int(src), int(dst)
        if not (0 <= src < num_classes and 0 <= dst < num_classes) or src == dst:
            raise InputError(
                f"class pair {src}->{dst} invalid for {num_classes} classes (need two different classes)."
            )
        t[src, src] = 1.0 - rate
        t[src, dst] = rate
    return t


def asymmetric_noise(
    labels: Sequence[int] | np.ndarray,
    num_classes: int,
    rate: float | None = None,
    transition: np.ndarray | Sequence[Sequence[float]] | None = None,
    pairs: Mapping[int, int] | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, float]:
    """Class-conditional noise: the noisy label of a class-``i`` sample is drawn from ``T[i]``.

    Give either ``transition`` or ``rate`` (with ``pairs``, default ``i -> (i + 1) mod K``).

    Args:
        labels: true class indices (N,).
        num_classes: K >= 2.
        rate: flip probability of each paired class (when no ``transition`` is given).
        transition: ``T`` (K, K), non-negative, rows summing to 1.
        pairs: source -> target class pairs used with ``rate``.
        seed: random seed.

    Returns:
        ``(noisy, actual_rate)``.

    Raises:
        InputError: for an invalid matrix (shape, negative entries, rows not summing to 1) or
            when neither ``transition`` nor ``rate`` is given.
    """
    y = _check_labels(labels, num_classes)
    if transition is None:
        t = _pairs_transition(rate, pairs, num_classes)
    else:
        t = _checked_transition(transition, num_classes)
    rng = np.random.default_rng(seed)
    cdf = np.cumsum(t, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random(y.shape[0])
    noisy = np.array(
        [int(np.searchsorted(cdf[c], v, side="right")) for c, v in zip(y, u, strict=True)], dtype=np.int64
    )
    return noisy, float(np.mean(noisy != y)) if y.size else 0.0


def _pairs_transition(rate: float | None, pairs: Mapping[int, int] | None, num_classes: int) -> np.ndarray:
    """``T`` from class pairs flipped with probability ``rate`` (default pairs: ``i -> (i + 1) mod K``)."""
    if rate is None:
        raise InputError("asymmetric noise needs a transition matrix or a rate (with optional class pairs).")
    if pairs is None:
        pairs = {i: (i + 1) % num_classes for i in range(num_classes)}
    return pairs_to_transition(pairs, rate, num_classes)


def _checked_transition(transition: np.ndarray | Sequence[Sequence[float]], num_classes: int) -> np.ndarray:
    """A given ``T`` as a float array: (K, K), non-negative, rows summing to 1."""
    t = np.asarray(transition, dtype=np.float64)
    if t.shape != (num_classes, num_classes):
        raise InputError(f"transition must have shape ({num_classes}, {num_classes}) but has {t.shape}.")
    if (t < 0).any() or not np.allclose(t.sum(axis=1), 1.0, atol=1e-6):
        raise InputError(
            f"transition rows must be non-negative and sum to 1 but sum to {t.sum(axis=1).tolist()}."
        )
    return t


def instance_dependent_noise(
    labels: Sequence[int] | np.ndarray,
    features: np.ndarray,
    rate: float,
    num_classes: int,
    seed: int = 0,
    rate_std: float = 0.1,
) -> tuple[np.ndarray, float]:
    """Instance-dependent noise (Xia et al., 2020): flip probability and target depend on the sample.

    Each sample ``i`` gets ``q_i ~ N(rate, rate_std)`` clipped to [0, 1]; with ``W`` (d, K) drawn
    from N(0, 1), the scores ``x_i W`` (true class excluded) pass through a softmax scaled by
    ``q_i``, and the true class keeps ``1 - q_i``. The expected flip rate is ``rate``.

    Args:
        labels: true class indices (N,).
        features: per-sample features (N, d) (e.g. flattened thumbnails); standardised here.
        rate: mean flip probability in [0, 1].
        num_classes: K >= 2.
        seed: random seed.
        rate_std: standard deviation of the per-sample flip probability.

    Returns:
        ``(noisy, actual_rate)``.
    """
    y = _check_labels(labels, num_classes)
    rate = _check_rate(rate)
    x = np.asarray(features, dtype=np.float64).reshape(y.shape[0], -1)
    x = (x - x.mean(axis=0)) / (x.std(axis=0) + 1e-8)
    x = x / np.sqrt(max(x.shape[1], 1))
    rng = np.random.default_rng(seed)
    q = np.clip(rng.normal(rate, rate_std, size=y.shape[0]), 0.0, 1.0)
    w = rng.normal(0.0, 1.0, size=(x.shape[1], num_classes))
    scores = x @ w
    scores[np.arange(y.shape[0]), y] = -np.inf
    scores = scores - scores.max(axis=1, keepdims=True)
    p = np.exp(scores)
    p = p / p.sum(axis=1, keepdims=True) * q[:, None]
    p[np.arange(y.shape[0]), y] = 1.0 - q
    cdf = np.cumsum(p, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random(y.shape[0])
    noisy = np.array(
        [int(np.searchsorted(c, v, side="right")) for c, v in zip(cdf, u, strict=True)], dtype=np.int64
    )
    return noisy, float(np.mean(noisy != y)) if y.size else 0.0


def _multi_label_noise(flags: np.ndarray, kind: str, rate: float | None, seed: int) -> tuple[np.ndarray, float]:
    if kind != "symmetric" or rate is None:
        raise InputError("multi-label data supports only symmetric noise (each flag flips with probability rate).")
    rng = np.random.default_rng(seed)
    flip = rng.random(flags.shape) < _check_rate(rate)
    noisy = np.where(flip, 1 - flags, flags)
    return noisy.astype(np.int64), float(np.mean(noisy != flags)) if flags.size else 0.0


# the kinds that need only a rate: kind -> simulator(labels, rate, num_classes, seed)
_RATE_ONLY = {"symmetric": symmetric_noise, "uniform": uniform_noise}


def add_noise(
    labels: Sequence[int] | np.ndarray,
    kind: str,
    num_classes: int,
    rate: float | None = None,
    seed: int = 0,
    transition: np.ndarray | Sequence[Sequence[float]] | None = None,
    pairs: Mapping[int, int] | None = None,
    features: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Dispatches to the simulator named by ``kind`` (see the module docstring).

    Args:
        labels: true class indices (N,), or 0/1 flags (N, L) for multi-label (symmetric only).
        kind: ``"symmetric"``, ``"uniform"``, ``"asymmetric"`` or ``"instance"``.
        num_classes: K.
        rate: the noise rate.
        seed: random seed.
        transition: ``T`` (K, K) for ``"asymmetric"``.
        pairs: class pairs for ``"asymmetric"``.
        features: (N, d) for ``"instance"``.

    Returns:
        ``(noisy, actual_rate)``.
    """
    if kind not in NOISE_KINDS:
        raise InputError(f"kind must be one of {NOISE_KINDS} but is {kind!r}.")
    arr = np.asarray(labels)
    if arr.ndim == 2:
        return _multi_label_noise(arr.astype(np.int64), kind, rate, seed)
    if kind in _RATE_ONLY:
        if rate is None:
            raise InputError(f"{kind} noise needs a rate.")
        return _RATE_ONLY[kind](arr, rate, num_classes, seed)
    if kind == "asymmetric":
        return asymmetric_noise(arr, num_classes, rate=rate, transition=transition, pairs=pairs, seed=seed)
    if features is None or rate is None:
        raise InputError("instance-dependent noise needs a rate and per-sample features.")
    return instance_dependent_noise(arr, features, rate, num_classes, seed)


@dataclass(frozen=True)
class NoiseResult:
    """What :func:`add_noise_to_datalist` wrote.

    Attributes:
        datalist: the noisy datalist JSON.
        sidecar: the CSV with id, split, true_label, noisy_label.
        actual_rate: split -> fraction of its labels that differ from the truth.
        num_flipped: split -> number of changed labels.
    """

    datalist: Path
    sidecar: Path
    actual_rate: dict[str, float]
    num_flipped: dict[str, int]


def _label_str(label: Any) -> str:
    if isinstance(label, (list, tuple, np.ndarray)):
        return ";".join(str(int(v)) for v in label)
    return str(int(label))


def _image_features(items: Sequence[Mapping[str, Any]], size: int = 8) -> np.ndarray:
    """Flattened thumbnails of the items' images (the features of instance-dependent noise)."""
    # torch and MONAI load only for instance-dependent noise, which reads the images
    import torch
    from monai.transforms import Resize

    from lilaw_med.data.readers import LoadMedicalImaged

    loader = LoadMedicalImaged("image")
    feats = []
    for item in items:
        img = loader({"image": item["image"]})["image"]
        img = torch.as_tensor(img, dtype=torch.float32)
        img = img.mean(dim=0, keepdim=True)
        thumb = Resize(spatial_size=(size,) * (img.ndim - 1), mode="area")(img)
        feats.append(np.asarray(thumb, dtype=np.float64).reshape(-1))
    return np.stack(feats)


def add_noise_to_datalist(
    datalist: str | os.PathLike | Datalist,
    out_path: str | os.PathLike,
    kind: str = "symmetric",
    rate: float | None = 0.4,
    seed: int = 0,
    splits: Sequence[str] = ("training", "validation"),
    transition: np.ndarray | Sequence[Sequence[float]] | None = None,
    pairs: Mapping[int, int] | None = None,
    features: Mapping[str, np.ndarray] | None = None,
    class_names: Sequence[str] | None = None,
) -> NoiseResult:
    """Writes a noisy copy of a datalist and a sidecar CSV with each noised item's true label.

    The output JSON holds every split with explicit ids (so ids survive the copy), image paths
    relative to the output folder when they lie under it (absolute otherwise), ``class_names``
    and a top-level ``"noise_sidecar"`` (relative path of the CSV, named ``<stem>_noise.csv``).
    Noise is added to ``splits`` (never ``test`` unless asked), each split with its own seed
    derived from ``seed``. When the input already carries noise, the sidecar keeps the
    original truth.

    Args:
        datalist: a datalist path or a loaded :class:`Datalist`.
        out_path: the noisy datalist JSON to write.
        kind: ``"symmetric"``, ``"uniform"``, ``"asymmetric"`` or ``"instance"``.
        rate: the noise rate (see the simulators).
        seed: random seed.
        splits: the splits to corrupt.
        transition: ``T`` (K, K) for asymmetric noise.
        pairs: class pairs for asymmetric noise.
        features: id -> feature vector for instance-dependent noise; computed from 8-pixel
            thumbnails of the images when ``None``.
        class_names: passed to :func:`load_datalist` when ``datalist`` is a path.

    Returns:
        A :class:`NoiseResult` with the paths and the actual rates.

    Example::

        result = add_noise_to_datalist("data/datalist_clean.json", "data/noisy40.json", rate=0.4, seed=0)
        result.actual_rate  # split -> the share of labels changed
        truth = load_noise_truth(result.datalist)  # id -> true label

    Raises:
        InputError: for an unknown split or kind, unlabelled items in a noised split, or
            invalid noise parameters.
    """
    dl = datalist if isinstance(datalist, Datalist) else load_datalist(datalist, class_names=class_names)
    _check_request(splits, kind)
    if dl.validation_split_off and "training" in splits and "validation" not in splits:
        # the user's training labels carry the noise, so theirs would reach validation too; a clean one
        # here is a set-up a user cannot have without clean labels (the meta step, the best checkpoint
        # and the audit's counts would all read them)
        logger.warning(
            "%s has no validation split: the one split off its training items when it was loaded stays clean "
            "with splits=%s; noise it like the training split with --splits training,validation.",
            dl.source.name, ",".join(splits))
    spec = _NoiseSpec(kind, rate, seed, transition, pairs)
    out_path = Path(out_path)
    out_dir = Path(os.path.abspath(out_path.parent))
    sidecar = out_path.with_name(f"{out_path.stem}_noise.csv")
    prior_truth = load_noise_truth(dl.noise_sidecar) if dl.noise_sidecar is not None else {}

    rows: list[tuple[str, str, str, str]] = []
    rates: dict[str, float] = {}
    flipped: dict[str, int] = {}
    out_splits: dict[str, list[dict[str, Any]]] = {}
    for split_index, split in enumerate(SPLITS):
        items = [dict(it) for it in dl.split(split)]
        if split in splits and items:
            feats = _split_features(items, kind, features)
            rates[split], flipped[split] = _noise_split(
                items, split, spec, dl.num_classes, seed * 1000 + split_index, feats, prior_truth, rows
            )
        for it in items:
            it["image"] = _relative_if_under(it["image"], out_dir)
        out_splits[split] = items

    _write_sidecar(sidecar, rows)
    payload: dict[str, Any] = {
        "class_names": dl.class_names,
        "multi_label": dl.multi_label,
        "noise_sidecar": sidecar.name,
        "noise": spec.to_json(splits, rates),
        **out_splits,
    }
    atomic_write(out_path, json.dumps(payload, indent=1) + "\n")
    return NoiseResult(out_path, sidecar, rates, flipped)


@dataclass(frozen=True)
class _NoiseSpec:
    """The noise asked for (what the noisy datalist's ``"noise"`` entry records)."""

    kind: str
    rate: float | None
    seed: int
    transition: np.ndarray | Sequence[Sequence[float]] | None
    pairs: Mapping[int, int] | None

    def to_json(self, splits: Sequence[str], actual_rate: Mapping[str, float]) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "rate": self.rate,
            "seed": self.seed,
            "splits": list(splits),
            "actual_rate": actual_rate,
            "transition": np.asarray(self.transition).tolist() if self.transition is not None else None,
            "pairs": {str(a): int(b) for a, b in self.pairs.items()} if self.pairs else None,
        }


def _check_request(splits: Sequence[str], kind: str) -> None:
    for s in splits:
        if s not in SPLITS:
            raise InputError(f"splits must be among {SPLITS} but include {s!r}.")
    if kind not in NOISE_KINDS:
        raise InputError(f"kind must be one of {NOISE_KINDS} but is {kind!r}.")


def _split_features(
    items: Sequence[Mapping[str, Any]], kind: str, features: Mapping[str, np.ndarray] | None
) -> np.ndarray | None:
    """The per-item features instance-dependent noise needs (given by id, else image thumbnails)."""
    if kind != "instance":
        return None
    if features is None:
        return _image_features(items)
    return np.stack([np.asarray(features[it["id"]], dtype=np.float64).reshape(-1) for it in items])


def _noise_split(
    items: list[dict[str, Any]],
    split: str,
    spec: _NoiseSpec,
    num_classes: int,
    seed: int,
    features: np.ndarray | None,
    prior_truth: Mapping[str, Any],
    rows: list[tuple[str, str, str, str]],
) -> tuple[float, int]:
    """Replaces the items' labels by noisy ones and appends a sidecar row per item (its first truth kept);
    returns the actual rate and the number of changed labels."""
    missing = [it["id"] for it in items if it.get("label") is None]
    if missing:
        raise InputError(f"cannot add noise to unlabelled items in '{split}': {missing[:10]}")
    labels = np.asarray([it["label"] for it in items])
    noisy, actual = add_noise(
        labels,
        spec.kind,
        num_classes,
        rate=spec.rate,
        seed=seed,
        transition=spec.transition,
        pairs=spec.pairs,
        features=features,
    )
    for it, new in zip(items, noisy, strict=True):
        truth = prior_truth.get(it["id"], it["label"])
        rows.append((it["id"], split, _label_str(truth), _label_str(new)))
        it["label"] = new.tolist() if np.ndim(new) else int(new)
    flipped = int(np.sum(np.any((noisy != labels).reshape(len(items), -1), axis=1)))
    logger.info("%s: %s noise, %d/%d labels changed (rate %.3f)", split, spec.kind, flipped, len(items), actual)
    return actual, flipped


def _write_sidecar(path: Path, rows: Sequence[tuple[str, str, str, str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["id", "split", "true_label", "noisy_label"])
    writer.writerows(rows)
    atomic_write(path, buf.getvalue())


def _relative_if_under(image: Any, folder: Path) -> Any:
    if isinstance(image, list):
        return [_relative_if_under(p, folder) for p in image]
    rel = os.path.relpath(image, folder)
    return image if rel.startswith("..") else Path(rel).as_posix()


def load_noise_truth(path: str | os.PathLike) -> dict[str, int | list[int]]:
    """Reads the true labels of a noisy datalist.

    Args:
        path: the sidecar CSV, or a noisy datalist JSON (its ``"noise_sidecar"`` is followed).

    Returns:
        id -> true class index (or 0/1 list for multi-label).

    Raises:
        FileNotFoundError: when the file (or the sidecar it names) is missing.
        InputError: when a JSON datalist has no ``"noise_sidecar"`` or the CSV lacks columns.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"noise sidecar not found: {p}")
    if p.suffix.lower() == ".json":
        p = _sidecar_named_by(p, path)
    with p.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "id" not in reader.fieldnames or "true_label" not in reader.fieldnames:
            raise InputError(
                f"{p}: expected columns id, true_label (and split, noisy_label) but got {reader.fieldnames}."
            )
        out: dict[str, int | list[int]] = {}
        for row in reader:
            value = row["true_label"]
            out[row["id"]] = [int(v) for v in value.split(";")] if ";" in value else int(value)
    return out


def _sidecar_named_by(datalist_json: Path, given: str | os.PathLike) -> Path:
    """The sidecar a noisy datalist JSON names (relative to its folder)."""
    data = json.loads(datalist_json.read_text(encoding="utf-8"))
    side = data.get("noise_sidecar") if isinstance(data, dict) else None
    if not side:
        raise InputError(f"{datalist_json}: the datalist has no 'noise_sidecar' (no recorded label noise).")
    p = Path(side) if Path(side).is_absolute() else datalist_json.parent / side
    if not p.is_file():
        raise FileNotFoundError(f"noise sidecar not found: {p} (named by {given})")
    return p
