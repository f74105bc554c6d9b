"""In-memory MedMNIST training runs for the benchmarks, built from the toolkit's own pieces.

One call trains one model on one (data set, noise, seed, method) cell and returns everything
the benchmark tables and the audit experiments need::

    from benchmarks.harness import run_one
    out = run_one("pneumoniamnist_balanced", "symmetric", 0.4, seed=0, method="lilaw",
                  epochs=10, record_dynamics=True)
    out.final["auroc"], out.best["auroc"]          # clean-test metrics: final model, best noisy-val epoch
    out.noisy_labels[out.train_idx]                # the labels the model was trained on
    out.dynamics["prob_label"]                     # (epochs, len(out.train_idx)) float32: s[y] per item/epoch

API
---
``run_one(dataset, noise_kind, noise_rate, seed, method, epochs=10, batch_size=64, lr=1e-3,
weight_decay=1e-4, network="resnet18_w0.25", val_fraction=0.15, record_dynamics=False,
train_items=None, val_items=None, predict_items=None, val_mode=DEFAULT_VAL_MODE, detach_weights=False)
-> RunOutcome``

* ``dataset``: an npz stem in the shared data folder (``pneumoniamnist_balanced``, ``breastmnist``,
  ``retinamnist``, ``pathmnist_1000``, ``adrenalmnist3d``). The folder is ``$LILAW_SHARED_DATA`` or
  ``../shared/data`` from the repository root; :class:`DataUnavailable` (a ``FileNotFoundError``)
  says so when it is absent. Only the npz ``train`` split is trained on (it is split into
  training and a noisy validation part); the npz ``test`` split is the clean test set; the npz
  ``val`` split is not used.
* ``noise_kind``: ``"none"``, ``"symmetric"`` (exactly ``round(rate * n)`` labels of the npz train
  split moved to a uniformly drawn OTHER class: an exact-count version of
  ``lilaw_med.data.noise.symmetric_noise``'s Bernoulli flips, so every seed has the stated rate),
  ``"asymmetric"`` and ``"instance"`` (the toolkit's ``lilaw_med.data.noise`` models; see
  :func:`inject_noise`). The noisy labels depend on (dataset, noise kind, rate, seed) only, never on
  the method or on ``train_items``, so cross-validation folds and refits see the same labels.
* ``method``: ``"ce"``, ``"lilaw"`` (LiLAW over CE), ``"focal"`` (MONAI FocalLoss, gamma 2,
  softmax), ``"lilaw_focal"`` (LiLAW over that focal loss, ``reduce_classes="sum"``), ``"gce"``
  (:class:`lilaw_med.GCELoss`, q 0.7), ``"sce"`` (:class:`lilaw_med.SCELoss`, alpha 0.1, beta 1.0).
  Every method trains with MONAI's ``SupervisedTrainer`` through a :class:`lilaw_med.LiLAWLoss`; for the
  non-LiLAW methods its weighting is switched off (warm-up longer than the run, no meta handler),
  which is exactly the plain mean of the base loss, so every method records the same statistics.
* Pairing: the validation split, the noise, the network initialisation and the order of the
  training batches come from generators seeded by ``seed`` alone (the meta step's validation
  loader has its own generator), so two methods with the same seed differ only in the loss.
* ``train_items`` / ``val_items``: indices into the npz train split. ``train_items`` restricts the
  pool the run draws its validation split from (e.g. a cross-validation fold); ``val_items`` fixes
  the validation split (then the training items are ``train_items`` minus ``val_items``, or the rest
  of the train split).
* ``predict_items``: indices into the npz train split whose final-model class probabilities are
  returned in ``RunOutcome.predict_probs`` (out-of-sample probabilities for confident learning).
* ``record_dynamics``: per-item, per-epoch statistics of the TRAINING forward passes (no extra
  forward) in ``RunOutcome.dynamics``: ``prob_label`` (s[y] of the noisy label), ``prob_max``,
  ``pred_label``, ``w_alpha``, ``w_beta``, ``w_delta``, ``weight`` (the weight the loss used: 1 when
  the weighting is off) and ``loss`` (the per-sample base loss), each ``(epochs, len(train_idx))``,
  columns in the order of ``RunOutcome.train_idx``.

Networks (one option, ``network``):

* ``"small_cnn"``: the presets' default network (``lilaw_med.networks``, 16-32-64-64 channels,
  batch norm), what ``lilaw-med train`` trains; the network of the issue-17 accuracy floor.
* ``"resnet18_medmnist"``: MedMNIST v2's 28-px ResNet-18 (3x3 stride-1 stem, no max-pool, full width).

and MONAI's 2D/3D ResNet-18 variants (same depth, batch norm and residual blocks):

* ``"resnet18"``: full width, MONAI's default stem (7x7 convolution with stride 1, then max-pool).
  Measured with one thread at 28 px, batch 64: 1.1 s per training step + 0.28 s per no-grad
  forward, about 45 s per LiLAW epoch on PneumoniaMNIST, so the floor's 10 seeds x 2 methods x 10
  epochs take about 2.5 h of one core: infeasible here.
* ``"resnet18_w0.25"`` (the default of :func:`run_one`): a quarter of the channels (widen_factor
  0.25, 0.70 M parameters), 0.075 s per step + 0.022 s per forward (CPU time): about 5 s per epoch.
* ``"resnet18_w0.25_s2"`` (:data:`BENCH_NETWORK`, used by the accuracy and choices tables): the same
  with the standard ImageNet stem (stride-2 7x7 convolution + max-pool): 0.031 s + 0.008 s, about
  1.5 s per epoch. The machine these benchmarks ran on gives one engineer about a fifth of a core
  (2 cores shared by 8 people, fair-shared per session), so the whole floor experiment (40 runs)
  had to fit in about 10 CPU-minutes.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer
from monai.losses import FocalLoss
from monai.networks.nets import resnet18
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score
from torch import nn
from torch.utils.data import DataLoader, Dataset

from lilaw_med import GCELoss, LiLAWHandler, LiLAWLoss, SCELoss
from lilaw_med.training.evaluation import apply_calibration, choose_class_bias, choose_threshold
from lilaw_med.utils import atomic_write

__all__ = [
    "BENCH_NETWORK",
    "DYNAMICS_FIELDS",
    "LILAW_METHODS",
    "METHODS",
    "DataUnavailable",
    "LoadedData",
    "RunOutcome",
    "build_network",
    "classification_metrics",
    "mean_ci",
    "paired_difference",
    "run_cached",
    "DEFAULT_VAL_MODE",
    "inject_noise",
    "load_dataset",
    "run_one",
    "shared_data_dir",
]

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
METHODS = ("ce", "lilaw", "focal", "lilaw_focal", "gce", "sce")
LILAW_METHODS = ("lilaw", "lilaw_focal")
DYNAMICS_FIELDS = ("prob_label", "prob_max", "pred_label", "w_alpha", "w_beta", "w_delta", "weight", "loss")
NETWORKS = ("resnet18_w0.25", "resnet18_w0.25_s2", "resnet18", "small_cnn", "resnet18_medmnist")
# the network of the accuracy and choices tables (see the module docstring for why)
BENCH_NETWORK = "resnet18_w0.25_s2"
# LiLAW runs use the library's default validation-forward mode unless a benchmark asks otherwise
DEFAULT_VAL_MODE: str = inspect.signature(LiLAWHandler).parameters["val_mode"].default


class DataUnavailable(FileNotFoundError):
    """The shared MedMNIST folder (or one of its files) is absent: benchmarks skip with this message."""


def shared_data_dir() -> Path:
    """The folder of the MedMNIST npz files: ``$LILAW_SHARED_DATA`` or ``../shared/data`` from the repo root.

    Raises:
        DataUnavailable: when the folder does not exist.
    """
    folder = Path(os.environ.get("LILAW_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not folder.is_dir():
        raise DataUnavailable(
            f"real MedMNIST data not found at {folder}: set LILAW_SHARED_DATA to the folder of the npz files "
            "(see ../shared/data/README.md); skipping."
        )
    return folder


@dataclass
class LoadedData:
    """One npz file in memory.

    Attributes:
        name: the npz stem.
        train_images: float32 (N, C, H, W) or (N, 1, D, H, W) in [0, 1].
        train_labels: int64 (N,) clean labels of the npz train split.
        test_images: as ``train_images``, the npz test split.
        test_labels: int64 (M,).
        num_classes: number of classes.
        spatial_dims: 2 or 3.
    """

    name: str
    train_images: torch.Tensor
    train_labels: np.ndarray
    test_images: torch.Tensor
    test_labels: np.ndarray
    num_classes: int
    spatial_dims: int


_CACHE: dict[str, LoadedData] = {}


def _to_tensor(images: np.ndarray, three_d: bool) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(images)).float().div_(255.0)
    if three_d:  # (N, D, H, W) -> (N, 1, D, H, W)
        return x.unsqueeze(1)
    if x.ndim == 3:  # grey (N, H, W) -> (N, 1, H, W)
        return x.unsqueeze(1)
    return x.permute(0, 3, 1, 2).contiguous()  # RGB (N, H, W, 3) -> (N, 3, H, W)


def load_dataset(name: str) -> LoadedData:
    """Loads ``<shared data>/<name>.npz`` once per process.

    Args:
        name: the npz stem, with or without ``.npz``.

    Returns:
        The arrays as tensors/arrays, see :class:`LoadedData`.

    Raises:
        DataUnavailable: when the folder or the file is absent.
        ValueError: when the file lacks the MedMNIST arrays.
    """
    name = name.removesuffix(".npz")
    if name in _CACHE:
        return _CACHE[name]
    path = shared_data_dir() / f"{name}.npz"
    if not path.is_file():
        raise DataUnavailable(f"{path} not found (expected one of the MedMNIST npz files of ../shared/data); skipping.")
    with np.load(path) as z:
        missing = {"train_images", "train_labels", "test_images", "test_labels"} - set(z.files)
        if missing:
            raise ValueError(f"{path} lacks the arrays {sorted(missing)}; it has {sorted(z.files)}.")
        three_d = "3d" in name.lower()
        train_y = z["train_labels"].reshape(-1).astype(np.int64)
        test_y = z["test_labels"].reshape(-1).astype(np.int64)
        data = LoadedData(
            name=name,
            train_images=_to_tensor(z["train_images"], three_d),
            train_labels=train_y,
            test_images=_to_tensor(z["test_images"], three_d),
            test_labels=test_y,
            num_classes=int(max(train_y.max(), test_y.max()) + 1),
            spatial_dims=3 if three_d else 2,
        )
    _CACHE[name] = data
    return data


# ----------------------------------------------------------------------------- noise
def _symmetric_noise(labels: np.ndarray, rate: float, num_classes: int, rng: np.random.Generator) -> np.ndarray:
    """Moves exactly ``round(rate * n)`` labels, drawn at random, to a uniformly drawn other class."""
    noisy = labels.copy()
    n_flip = int(round(rate * len(labels)))
    flip = rng.choice(len(labels), size=n_flip, replace=False)
    offsets = rng.integers(1, num_classes, size=n_flip)  # never the same class
    noisy[flip] = (labels[flip] + offsets) % num_classes
    return noisy


def inject_noise(
    labels: np.ndarray, kind: str, rate: float, num_classes: int, seed: int,
    features: np.ndarray | None = None, ordinal: bool = False,
) -> np.ndarray:
    """Noisy copy of ``labels``, a pure function of (labels, kind, rate, seed[, features]).

    Args:
        labels: int (N,) clean labels.
        kind: ``"none"``; ``"symmetric"`` (local: exactly ``round(rate * n)`` labels changed, see the
            module docstring); ``"asymmetric"`` (``lilaw_med.data.noise.asymmetric_noise``: each class
            flips with probability ``rate`` to its pair: the next grade, the last grade to the one
            below it, when ``ordinal``; else ``i -> i + 1 mod K``; binary: class 1 -> 0 only);
            ``"instance"`` (``lilaw_med.data.noise.instance_dependent_noise`` on ``features``).
        rate: the fraction of labels to change, in [0, 1).
        num_classes: number of classes.
        seed: the noise seed.
        features: (N, d) per-item features for instance-dependent noise (e.g. 8x8 thumbnails).
        ordinal: the classes are ordered grades (RetinaMNIST): asymmetric noise goes to neighbours.

    Returns:
        int64 (N,) noisy labels.

    Raises:
        ValueError: on a rate outside [0, 1), an unknown kind, or instance noise without features.
    """
    if not 0 <= rate < 1:
        raise ValueError(f"noise rate must lie in [0, 1) but is {rate}.")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7001]))
    if kind == "none" or rate == 0:
        return labels.astype(np.int64).copy()
    if kind == "symmetric":
        return _symmetric_noise(labels.astype(np.int64), rate, num_classes, rng)
    if kind not in ("asymmetric", "instance"):
        raise ValueError(f"noise kind {kind!r} is not available: use 'none', 'symmetric', 'asymmetric' or 'instance'.")
    from lilaw_med.data import noise as noise_mod  # the toolkit's own noise models

    noise_seed = int(np.random.SeedSequence([int(seed), 7003]).generate_state(1)[0])
    if kind == "asymmetric":
        if num_classes == 2:
            pairs = {1: 0}
        elif ordinal:
            pairs = {i: i + 1 for i in range(num_classes - 1)} | {num_classes - 1: num_classes - 2}
        else:
            pairs = {i: (i + 1) % num_classes for i in range(num_classes)}
        noisy, _ = noise_mod.asymmetric_noise(labels, num_classes, rate=rate, pairs=pairs, seed=noise_seed)
    else:
        if features is None:
            raise ValueError("instance-dependent noise needs per-item features (N, d).")
        noisy, _ = noise_mod.instance_dependent_noise(labels, features, rate, num_classes, seed=noise_seed)
    return np.asarray(noisy, dtype=np.int64).reshape(-1)


# ----------------------------------------------------------------------------- network, losses
def build_network(name: str, spatial_dims: int, in_channels: int, num_classes: int) -> nn.Module:
    """The benchmark network (see the module docstring).

    Args:
        name: one of :data:`NETWORKS`.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_classes: outputs (logits).

    Returns:
        An untrained network.

    Raises:
        ValueError: on an unknown name.
    """
    if name not in NETWORKS:
        raise ValueError(f"network must be one of {NETWORKS} but is {name!r}.")
    if name == "small_cnn":  # what the presets train: the toolkit's own factory, not a copy
        from lilaw_med.networks import build_network as toolkit_network

        return toolkit_network("small_cnn", spatial_dims, in_channels, num_classes)
    if name == "resnet18_medmnist":  # MedMNIST v2's 28-px ResNet-18: 3x3 stride-1 stem, no max-pool, full width
        from monai.networks.nets import ResNet

        return ResNet("basic", [2, 2, 2, 2], [64, 128, 256, 512], spatial_dims=spatial_dims,
                      n_input_channels=in_channels, num_classes=num_classes, conv1_t_size=3, conv1_t_stride=1,
                      no_max_pool=True)
    widen = 0.25 if name.startswith("resnet18_w0.25") else 1.0
    stride = 2 if name.endswith("_s2") else 1  # MONAI's default stem keeps stride 1; "_s2" is the ImageNet stem
    return resnet18(
        spatial_dims=spatial_dims, n_input_channels=in_channels, num_classes=num_classes, widen_factor=widen,
        conv1_t_stride=stride,
    )


class _FocalPerSample(nn.Module):
    """MONAI FocalLoss (gamma 2, softmax, reduction none) taking integer labels (N,); returns (N, C)."""

    def __init__(self) -> None:
        super().__init__()
        self.focal = FocalLoss(reduction="none", gamma=2.0, use_softmax=True, to_onehot_y=True)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.focal(pred, target.reshape(-1, 1))


def build_loss(method: str, epochs: int, detach_weights: bool = False) -> LiLAWLoss:
    """The loss of a method, always a :class:`LiLAWLoss` (weighting off for the non-LiLAW methods).

    Args:
        method: one of :data:`METHODS`.
        epochs: the run's epochs (the warm-up that keeps the weighting off for non-LiLAW methods).
        detach_weights: :class:`LiLAWLoss`'s option, for the LiLAW methods.

    Returns:
        The loss module.

    Raises:
        ValueError: on an unknown method.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS} but is {method!r}.")
    if method in ("ce", "lilaw"):
        base: nn.Module = nn.CrossEntropyLoss(reduction="none")
    elif method in ("focal", "lilaw_focal"):
        base = _FocalPerSample()
    elif method == "gce":
        base = GCELoss(q=0.7, reduction="none")
    else:
        base = SCELoss(alpha=0.1, beta=1.0, reduction="none")
    warmup = 0 if method in LILAW_METHODS else max(int(epochs), 1)
    reduce = "sum" if "focal" in method else None
    return LiLAWLoss(base, warmup_epochs=warmup, reduce_classes=reduce, detach_weights=detach_weights)


# ----------------------------------------------------------------------------- data loading
class _ItemsDataset(Dataset):
    """Items ``{"image", "label", "index"}`` from in-memory tensors (``index`` is the npz train index)."""

    def __init__(self, images: torch.Tensor, labels: np.ndarray, indices: np.ndarray) -> None:
        self.images = images
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.indices = torch.as_tensor(indices, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "label": self.labels[i], "index": self.indices[i]}


def _loader(images: torch.Tensor, labels: np.ndarray, indices: np.ndarray, batch_size: int,
            shuffle: bool, seed: int | None) -> DataLoader:
    gen = None
    if shuffle:
        gen = torch.Generator()
        gen.manual_seed(int(seed))
    drop_last = shuffle and len(indices) % batch_size == 1  # batch norm cannot train on a batch of one
    return DataLoader(_ItemsDataset(images, labels, indices), batch_size=batch_size, shuffle=shuffle,
                      generator=gen, drop_last=drop_last, num_workers=0)


@torch.no_grad()
def _predict(network: nn.Module, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Class probabilities (N, C) in eval mode."""
    was_training = network.training
    network.eval()
    try:
        out = [torch.softmax(network(images[i : i + batch_size]).float(), dim=1) for i in range(0, len(images), batch_size)]
    finally:
        network.train(was_training)
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def classification_metrics(labels: np.ndarray, probs: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    """Accuracy, balanced accuracy and AUROC (binary; macro one-vs-rest for more classes).

    Args:
        labels: int (N,) labels.
        probs: (N, C) class probabilities.
        threshold: binary only: predict class 1 when P(class 1) >= threshold (default: argmax).

    Returns:
        ``{"accuracy", "balanced_accuracy", "auroc"}``; AUROC is NaN when only one class is present.
    """
    pred = probs.argmax(axis=1) if threshold is None or probs.shape[1] != 2 else (probs[:, 1] >= threshold).astype(int)
    out = {
        "accuracy": float(accuracy_score(labels, pred)),
        "balanced_accuracy": float(balanced_accuracy_score(labels, pred)),
    }
    try:
        if probs.shape[1] == 2:
            out["auroc"] = float(roc_auc_score(labels, probs[:, 1]))
        else:
            out["auroc"] = float(roc_auc_score(labels, probs, multi_class="ovr", average="macro",
                                              labels=np.arange(probs.shape[1])))
    except ValueError:
        out["auroc"] = math.nan
    return out


# ----------------------------------------------------------------------------- the run
@dataclass
class RunOutcome:
    """Everything one training run produced.

    Attributes:
        config: the arguments of :func:`run_one`.
        final: clean-test metrics of the final model.
        best: clean-test metrics of the epoch with the best noisy-validation AUROC (first on ties):
            the checkpoint a user could pick without clean labels.
        best_epoch: that epoch (1-based).
        final_val: noisy-validation metrics of the final model.
        history: per epoch ``{"epoch", "train_loss", "val": {...}, "test": {...}, "alpha", "beta", "delta"}``.
        train_idx: int (N_train,) npz train indices trained on.
        val_idx: int (N_val,) npz train indices of the noisy validation split.
        noisy_labels: int (N_all,) the labels given to the model, over the whole npz train split.
        true_labels: int (N_all,) the clean labels of the npz train split.
        dynamics: ``{field: (epochs, N_train)}`` (see the module docstring); empty unless recorded.
        test_probs: (N_test, C) final-model probabilities of the clean test set.
        predict_idx: the ``predict_items`` asked for (or an empty array).
        predict_probs: (len(predict_idx), C) final-model probabilities of those items.
        seconds: wall time of the training (evaluation included).
        lilaw: final alpha, beta, delta and meta-step counts (LiLAW methods), else empty.
    """

    config: dict[str, Any]
    final: dict[str, float]
    best: dict[str, float]
    best_epoch: int
    final_val: dict[str, float]
    history: list[dict[str, Any]]
    train_idx: np.ndarray
    val_idx: np.ndarray
    noisy_labels: np.ndarray
    true_labels: np.ndarray
    dynamics: dict[str, np.ndarray] = field(default_factory=dict)
    test_probs: np.ndarray | None = None
    predict_idx: np.ndarray | None = None
    predict_probs: np.ndarray | None = None
    seconds: float = 0.0
    lilaw: dict[str, float] = field(default_factory=dict)

    @property
    def noise_mask(self) -> np.ndarray:
        """bool (N_train,): whether each trained item's label was changed by the noise."""
        return self.noisy_labels[self.train_idx] != self.true_labels[self.train_idx]

    def summary(self) -> dict[str, Any]:
        """The small, JSON-ready part (no per-item arrays)."""
        return {
            "config": self.config,
            "final": self.final,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "final_val": self.final_val,
            "history": self.history,
            "n_train": int(len(self.train_idx)),
            "n_val": int(len(self.val_idx)),
            "seconds": round(self.seconds, 2),
            "lilaw": self.lilaw,
        }


class _DynamicsTable:
    """Fills ``(epochs, N_train)`` arrays from ``LiLAWLoss.last_stats`` after every training iteration."""

    def __init__(self, loss: LiLAWLoss, train_idx: np.ndarray, epochs: int) -> None:
        self.loss = loss
        self.column = {int(j): c for c, j in enumerate(train_idx)}
        shape = (epochs, len(train_idx))
        self.arrays = {k: np.full(shape, np.nan, dtype=np.float32) for k in DYNAMICS_FIELDS if k != "pred_label"}
        self.arrays["pred_label"] = np.full(shape, -1, dtype=np.int16)

    def __call__(self, engine: SupervisedTrainer) -> None:
        stats, per_loss = self.loss.last_stats, self.loss.last_loss
        if stats is None or per_loss is None:
            return
        cols = np.array([self.column[int(j)] for j in engine.state.batch["index"]])
        e = engine.state.epoch - 1
        a = self.arrays
        a["prob_label"][e, cols] = stats.prob_label.float().numpy()
        a["prob_max"][e, cols] = stats.prob_max.float().numpy()
        a["pred_label"][e, cols] = stats.pred_label.numpy().astype(np.int16)
        a["w_alpha"][e, cols] = stats.w_alpha.float().numpy()
        a["w_beta"][e, cols] = stats.w_beta.float().numpy()
        a["w_delta"][e, cols] = stats.w_delta.float().numpy()
        # the weight the model step used: 1 while the weighting is off (baselines, warm-up)
        a["weight"][e, cols] = stats.weight.float().numpy() if self.loss.is_active else 1.0
        a["loss"][e, cols] = per_loss.float().numpy()


def _split(pool: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7002]))
    perm = rng.permutation(pool)
    n_val = int(round(val_fraction * len(pool)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def run_one(
    dataset: str,
    noise_kind: str,
    noise_rate: float,
    seed: int,
    method: str,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    network: str = "resnet18_w0.25",
    val_fraction: float = 0.15,
    record_dynamics: bool = False,
    train_items: Sequence[int] | np.ndarray | None = None,
    val_items: Sequence[int] | np.ndarray | None = None,
    predict_items: Sequence[int] | np.ndarray | None = None,
    val_mode: Literal["eval", "train"] = DEFAULT_VAL_MODE,
    detach_weights: bool = False,
    num_threads: int | None = 1,
    meta_every: int = 1,
) -> RunOutcome:
    """Trains one model and evaluates it (see the module docstring for every argument's meaning).

    Args:
        dataset: npz stem in the shared data folder.
        noise_kind: ``"none"``, ``"symmetric"``, ``"asymmetric"`` or ``"instance"``.
        noise_rate: fraction of the npz train labels changed (training and validation alike).
        seed: seeds the noise, the split, the initialisation and the batch order.
        method: one of :data:`METHODS`.
        epochs: training epochs (constant learning rate, the paper's protocol).
        batch_size: training and meta-step validation batch size.
        lr: Adam learning rate.
        weight_decay: Adam weight decay.
        network: see :func:`build_network`.
        val_fraction: the share of the pool taken as the noisy validation split.
        record_dynamics: fill ``RunOutcome.dynamics``.
        train_items: npz train indices forming the pool (default: the whole train split).
        val_items: npz train indices of the validation split (default: drawn from the pool).
        predict_items: npz train indices whose final-model probabilities are returned.
        val_mode: ``LiLAWHandler(val_mode=...)`` for the LiLAW methods.
        detach_weights: ``LiLAWLoss(detach_weights=...)`` for the LiLAW methods.
        num_threads: ``torch.set_num_threads`` for the run (``None`` leaves it).
        meta_every: ``LiLAWHandler(every=...)``: the meta step after every k-th iteration (LiLAW methods).

    Returns:
        The :class:`RunOutcome`.

    Raises:
        DataUnavailable: when the data are absent.
        ValueError: on an unknown method, network or noise kind, or an empty split.
    """
    if num_threads is not None:
        torch.set_num_threads(int(num_threads))
    config = {
        "dataset": dataset, "noise_kind": noise_kind, "noise_rate": float(noise_rate), "seed": int(seed),
        "method": method, "epochs": int(epochs), "batch_size": int(batch_size), "lr": lr,
        "weight_decay": weight_decay, "network": network, "val_fraction": val_fraction,
        "val_mode": val_mode, "detach_weights": bool(detach_weights), "meta_every": int(meta_every),
    }
    data = load_dataset(dataset)
    n_all = len(data.train_labels)
    features = None
    if noise_kind == "instance":  # 8x8 (or 8^3) thumbnails as the features the flips depend on
        pooled = torch.nn.functional.adaptive_avg_pool2d if data.spatial_dims == 2 else torch.nn.functional.adaptive_avg_pool3d
        features = pooled(data.train_images, 8).flatten(1).numpy()
    noisy = inject_noise(data.train_labels, noise_kind, noise_rate, data.num_classes, seed, features=features,
                         ordinal=dataset.startswith("retinamnist"))
    pool = np.arange(n_all) if train_items is None else np.unique(np.asarray(train_items, dtype=np.int64))
    if val_items is None:
        train_idx, val_idx = _split(pool, val_fraction, seed)
    else:
        val_idx = np.unique(np.asarray(val_items, dtype=np.int64))
        train_idx = np.setdiff1d(pool, val_idx)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ValueError(f"empty split: {len(train_idx)} training and {len(val_idx)} validation items.")

    loss = build_loss(method, epochs, detach_weights=detach_weights)
    torch.manual_seed(int(seed))  # identical initialisation for every method of a seed
    net = build_network(network, data.spatial_dims, data.train_images.shape[1], data.num_classes)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    train_loader = _loader(data.train_images[train_idx], noisy[train_idx], train_idx, batch_size, True, seed * 1000 + 1)
    trainer = SupervisedTrainer(
        device=torch.device("cpu"), max_epochs=int(epochs), train_data_loader=train_loader, network=net,
        optimizer=optimizer, loss_function=loss, decollate=False,
    )
    handler = None
    if method in LILAW_METHODS:
        meta_loader = _loader(data.train_images[val_idx], noisy[val_idx], val_idx, batch_size, True, seed * 1000 + 2)
        handler = LiLAWHandler(meta_loader, loss, val_mode=val_mode, every=int(meta_every))
        handler.attach(trainer)
    table = _DynamicsTable(loss, train_idx, int(epochs)) if record_dynamics else None
    if table is not None:
        trainer.add_event_handler(Events.ITERATION_COMPLETED, table)

    val_images, test_images = data.train_images[val_idx], data.test_images
    history: list[dict[str, Any]] = []
    running: dict[str, float] = {"sum": 0.0, "n": 0}

    def _accumulate(engine: SupervisedTrainer) -> None:
        running["sum"] += float(engine.state.output["loss"].detach()) * len(engine.state.batch["index"])
        running["n"] += len(engine.state.batch["index"])

    def _evaluate(engine: SupervisedTrainer) -> None:
        val_probs, test_probs = _predict(net, val_images), _predict(net, test_images)
        entry: dict[str, Any] = {
            "epoch": engine.state.epoch,
            "train_loss": running["sum"] / max(running["n"], 1),
            "val": classification_metrics(noisy[val_idx], val_probs),
            "test": classification_metrics(data.test_labels, test_probs),
        }
        if val_probs.shape[1] == 2:  # the toolkit's calibration: Youden's J threshold on the NOISY validation split
            entry["threshold"] = choose_threshold(val_probs[:, 1], noisy[val_idx])
            entry["test_calibrated"] = classification_metrics(data.test_labels, test_probs, entry["threshold"])
        else:  # eval.calibration "prior": the class-prior correction fitted on the NOISY validation split
            bias, entry["prior_strength"] = choose_class_bias(np.log(np.clip(val_probs, 1e-12, None)), noisy[val_idx])
            corrected, _ = apply_calibration(np.log(np.clip(test_probs, 1e-12, None)), class_bias=bias)
            entry["test_calibrated"] = classification_metrics(data.test_labels, corrected)
        entry.update(loss.weighting.as_dict())
        history.append(entry)
        running.update(sum=0.0, n=0)
        logger.debug("%s %s seed %d epoch %d: %s", dataset, method, seed, engine.state.epoch, entry)

    trainer.add_event_handler(Events.ITERATION_COMPLETED, _accumulate)
    trainer.add_event_handler(Events.EPOCH_COMPLETED, _evaluate)
    start = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - start

    val_auc = np.array([h["val"]["auroc"] for h in history], dtype=float)
    best_i = int(np.nanargmax(val_auc)) if np.isfinite(val_auc).any() else len(history) - 1
    predict_idx = np.asarray(predict_items if predict_items is not None else [], dtype=np.int64)
    outcome = RunOutcome(
        config=config,
        final={**history[-1]["test"], **_calibrated(history[-1])},
        best={**history[best_i]["test"], **_calibrated(history[best_i])},
        best_epoch=best_i + 1,
        final_val=history[-1]["val"],
        history=history,
        train_idx=train_idx,
        val_idx=val_idx,
        noisy_labels=noisy,
        true_labels=data.train_labels.copy(),
        dynamics=table.arrays if table is not None else {},
        test_probs=_predict(net, test_images),
        predict_idx=predict_idx,
        predict_probs=_predict(net, data.train_images[predict_idx]) if len(predict_idx) else None,
        seconds=seconds,
    )
    if handler is not None:
        outcome.lilaw = {**loss.weighting.as_dict(), "steps": handler.steps, "skipped_steps": handler.skipped_steps}
    return outcome


def _calibrated(entry: dict[str, Any]) -> dict[str, float]:
    """The epoch's calibrated test accuracies as ``accuracy_calibrated``/``balanced_accuracy_calibrated``."""
    cal = entry.get("test_calibrated")
    if cal is None:
        return {}
    return {"accuracy_calibrated": cal["accuracy"], "balanced_accuracy_calibrated": cal["balanced_accuracy"],
            **{k: entry[k] for k in ("threshold", "prior_strength") if k in entry}}


# ----------------------------------------------------------------------------- caching, statistics
def run_cached(cache_dir: str | os.PathLike, cache_only: bool = False, **kwargs: Any) -> dict[str, Any] | None:
    """:func:`run_one` whose JSON summary is cached by its arguments (reruns and resumed suites are free).

    Args:
        cache_dir: folder of ``<method>-<hash>.json`` files (e.g. ``benchmarks/out/runs``).
        cache_only: return ``None`` instead of training when the run is not cached (budget spent).
        **kwargs: the arguments of :func:`run_one` (not ``record_dynamics``/``predict_items``: only the
            summary is cached).

    Returns:
        :meth:`RunOutcome.summary`, plus ``"cached": True`` when read from the cache; ``None`` when
        ``cache_only`` and not cached.
    """
    if kwargs.get("method") in LILAW_METHODS:
        # the key must change when a default that changes the result changes (val_mode went from
        # "eval" to "train"); resolved here rather than for every argument, which would re-key
        # (and retrain) every cached run
        kwargs.setdefault("val_mode", DEFAULT_VAL_MODE)
    key_src = json.dumps(kwargs, sort_keys=True, default=str)
    key = hashlib.sha1(key_src.encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{kwargs.get('method', 'run')}-{key}.json"
    if path.is_file():
        summary = json.loads(path.read_text())
        summary["cached"] = True
        return summary
    if cache_only:
        return None
    summary = run_one(**kwargs).summary()
    summary["kwargs"] = json.loads(key_src)
    atomic_write(path, json.dumps(summary, indent=1, default=float))
    return summary


def _t_quantile(n: int) -> float:
    from scipy import stats  # scipy comes with scikit-learn

    return float(stats.t.ppf(0.975, n - 1))


def mean_ci(values: Sequence[float]) -> dict[str, float]:
    """Mean, standard deviation (ddof 1) and the 95% t-interval of the mean.

    Args:
        values: one value per seed (NaNs are dropped).

    Returns:
        ``{"n", "mean", "std", "ci_low", "ci_high"}`` (std and interval NaN with fewer than 2 values).
    """
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    mean = float(v.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": math.nan, "ci_low": math.nan, "ci_high": math.nan}
    std = float(v.std(ddof=1))
    half = _t_quantile(n) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def paired_difference(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired difference ``a - b`` (same seeds, same order) with its 95% t-interval.

    Args:
        a: per-seed values of the first method.
        b: per-seed values of the second method, paired with ``a``.

    Returns:
        :func:`mean_ci` of the differences plus ``"wins"``: how many seeds have ``a > b``.

    Raises:
        ValueError: when the sequences differ in length.
    """
    if len(a) != len(b):
        raise ValueError(f"paired values need equal lengths but got {len(a)} and {len(b)}.")
    d = [x - y for x, y in zip(a, b, strict=True)]
    out = mean_ci(d)
    out["wins"] = int(sum(1 for x in d if x > 0))
    return out
