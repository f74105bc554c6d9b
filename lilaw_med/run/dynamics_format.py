"""The per-item training dynamics on disk: file names, record layout, writer and reader.

:class:`lilaw_med.handlers.dynamics.DynamicsRecorder` fills the records during training and calls
:func:`write_epoch`; the audit reads them with :func:`load_dynamics`. This module imports neither
ignite nor MONAI, so reading a run needs neither.

On disk (``RUN_DIR/dynamics/``, :data:`FOLDER`), written atomically at every epoch end::

    manifest.json                format, fields, splits (n_items, epochs), per-epoch alpha/beta/delta
    ids_training.json            the item ids, in the order of the arrays
    training/epoch_0001.npy      a structured array (n_items,) per epoch, see record_dtype
    ids_validation.json, validation/epoch_0001.npy   the same for the meta step's validation items

Each epoch's record holds, per item, the MEAN over the times the item was seen in that epoch of
the :data:`FLOAT_FIELDS` (float16), the last ``pred_label`` (int16; -1 when not seen) and ``count``
(uint16); single-label runs also hold ``probs``, every class's probability (float16, C per item).
An item not seen in an epoch has NaN values and ``count`` 0.

Example::

    dyn = load_dynamics("runs/my-run")                 # the run folder or its dynamics/ folder
    p = dyn.series("probs")[0:5]                      # epochs 1-5, read one epoch at a time
    first = p[0]                                      # float32 (N, C)
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.errors import InputError
from lilaw_med.utils import atomic_write

__all__ = [
    "FLOAT_FIELDS",
    "FOLDER",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "SPLITS",
    "Dynamics",
    "EpochSeries",
    "load_dynamics",
    "record_dtype",
    "write_epoch",
]

FORMAT_NAME = "lilaw-med-dynamics"
FORMAT_VERSION = 2  # 2 adds "probs" (C class probabilities per item); version 1 files still read
FLOAT_FIELDS = ("prob_label", "prob_max", "prob_other", "w_alpha", "w_beta", "w_delta", "weight", "loss")
"""Fields averaged over the item's occurrences in an epoch, stored as float16."""
SPLITS = ("training", "validation")
FOLDER = "dynamics"
"""The dynamics folder's name inside a run folder (``RunDir.DYNAMICS`` is this name)."""
MANIFEST = "manifest.json"


def ids_name(split: str) -> str:
    """The ids file of a split, relative to the dynamics folder."""
    return f"ids_{split}.json"


def epoch_name(split: str, epoch: int) -> str:
    """The record file of a split's 1-based epoch, relative to the dynamics folder."""
    return f"{split}/epoch_{epoch:04d}.npy"


def record_dtype(label_shape: tuple[int, ...], num_classes: int | None = None) -> np.dtype:
    """The structured dtype of one item's record in one epoch.

    Args:
        label_shape: ``()`` for single-label runs, ``(L,)`` for L labels.
        num_classes: C adds the ``probs`` field (C float16); ``None`` leaves it out.

    Returns:
        The numpy dtype.
    """
    probs = [("probs", np.float16, (num_classes,))] if num_classes else []
    return np.dtype(
        [(name, np.float16, label_shape) for name in FLOAT_FIELDS]
        + probs
        + [("pred_label", np.int16, label_shape), ("count", np.uint16)]
    )


def write_epoch(
    folder: str | os.PathLike,
    epoch: int,
    records: Mapping[str, np.ndarray],
    ids: Mapping[str, Sequence[str]],
    epochs: Mapping[str, Sequence[int]],
    label_shape: Sequence[int] = (),
    multi_label: bool = False,
    lilaw: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Writes one epoch's records, the ids and the manifest, each atomically.

    Args:
        folder: the dynamics folder.
        epoch: the 1-based epoch.
        records: split -> structured array (n_items,) of :func:`record_dtype`.
        ids: split -> the item ids, in the order of the arrays.
        epochs: split -> every epoch written so far (this one included).
        label_shape: the per-item label shape.
        multi_label: whether the run is multi-label.
        lilaw: epoch number (str) -> the LiLAW scalars at the epoch's end.
    """
    out = Path(folder)
    for split, rec in records.items():
        buf = io.BytesIO()
        np.save(buf, rec, allow_pickle=False)
        atomic_write(out / epoch_name(split, epoch), buf.getvalue())
        atomic_write(out / ids_name(split), json.dumps(list(ids[split])))
    manifest = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "fields": list(next(iter(records.values())).dtype.names) if records else list(FLOAT_FIELDS),
        "label_shape": list(label_shape),
        "multi_label": bool(multi_label),
        "splits": {
            split: {"n_items": len(ids[split]), "ids": ids_name(split), "epochs": [int(e) for e in epochs[split]]}
            for split in records
        },
        "lilaw": {str(k): dict(v) for k, v in (lilaw or {}).items()},
    }
    atomic_write(out / MANIFEST, json.dumps(manifest, indent=1))


# ==================================================================== reading
class _EpochRecords(Sequence):
    """The per-epoch record arrays of a split, opened when indexed and dropped after use.

    A memory-mapped epoch stays resident only while someone holds it, so reading the epochs one at a
    time keeps the resident memory of one epoch, not of the whole run.
    """

    def __init__(self, paths: Sequence[Path], n_items: int, mmap: bool):
        self.paths = list(paths)
        self.n_items = n_items
        self.mmap = mmap
        self._loaded = None if mmap else [self._open(p) for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return [self[k] for k in range(*j.indices(len(self)))]
        if self._loaded is not None:
            return self._loaded[j]
        return self._open(self.paths[j])

    def dtype(self, j: int) -> np.dtype:
        """The record dtype of epoch ``j`` (reads the file's header only)."""
        return np.load(self.paths[j], mmap_mode="r", allow_pickle=False).dtype

    def _open(self, path: Path) -> np.ndarray:
        rec = np.load(path, mmap_mode="r" if self.mmap else None, allow_pickle=False)
        if rec.shape[0] < self.n_items:  # ids learned on the fly grew after this epoch: pad with unseen items
            pad = np.zeros(self.n_items - rec.shape[0], dtype=rec.dtype)
            for name in FLOAT_FIELDS:
                pad[name] = np.nan
            pad["pred_label"] = -1
            if "probs" in (rec.dtype.names or ()):
                pad["probs"] = np.nan
            rec = np.concatenate([np.asarray(rec), pad])
        return rec[: self.n_items]


class EpochSeries(Sequence):
    """One field of a split over epochs, read one epoch at a time.

    ``series[j]`` is epoch ``j``'s array (float32 (N,) or (N, L) for the float fields, float32 (N, C)
    for ``probs``, int16 ``pred_label``, int32 ``count``); ``series[a:b]`` is another series; iterating
    reads the epochs in order, so a reduction over epochs (the audit's window means) holds one epoch
    in memory, whatever the run's length. A stacked (E, N, ...) array serves the same readers.
    """

    def __init__(self, dynamics: Dynamics, name: str, indices: Sequence[int] | None = None):
        self.dynamics = dynamics
        self.name = name
        self.indices = list(range(len(dynamics.epochs))) if indices is None else list(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, j: Any) -> Any:
        if isinstance(j, slice):
            return EpochSeries(self.dynamics, self.name, self.indices[j])
        return self.dynamics.epoch_field(self.name, self.indices[j])

    def __iter__(self) -> Iterator[np.ndarray]:
        for k in range(len(self)):
            yield self[k]


@dataclass
class Dynamics:
    """One split's recorded dynamics, read by :func:`load_dynamics`.

    Attributes:
        ids: the item ids (N).
        epochs: the recorded epochs (E), 1-based.
        records: one structured array (N,) per epoch, opened (memory-mapped) when indexed.
        lilaw: per-epoch alpha, beta, delta at the epoch's end (keys are epoch numbers).
        multi_label: per-label records of shape (N, L).
    """

    ids: list[str]
    epochs: list[int]
    records: Sequence[np.ndarray]
    lilaw: dict[int, dict[str, float]] = field(default_factory=dict)
    multi_label: bool = False
    _has_probs: bool | None = field(default=None, init=False, repr=False, compare=False)

    def __len__(self) -> int:
        return len(self.ids)

    def _names(self, j: int) -> tuple[str, ...]:
        dtype = self.records.dtype(j) if isinstance(self.records, _EpochRecords) else self.records[j].dtype
        return dtype.names or ()

    def _num_classes(self) -> int:
        for j in range(len(self.epochs)):
            if "probs" in self._names(j):
                dtype = self.records.dtype(j) if isinstance(self.records, _EpochRecords) else self.records[j].dtype
                return int(dtype["probs"].shape[0])
        raise KeyError("the dynamics hold no class probabilities ('probs').")

    @property
    def num_classes(self) -> int:
        """C of the recorded class probabilities (0 without them)."""
        return self._num_classes() if self.has_probs else 0

    def epoch_field(self, name: str, j: int) -> np.ndarray:
        """Field ``name`` of the ``j``-th recorded epoch (0-based), in the dtype :class:`EpochSeries` says.

        Raises:
            KeyError: for a field the dynamics do not hold.
        """
        if name not in self.keys():
            raise KeyError(f"unknown dynamics field {name!r}; the fields are {self.keys()}.")
        if name == "probs" and "probs" not in self._names(j):  # an epoch that saw no item
            return np.full((len(self.ids), self._num_classes()), np.nan, dtype=np.float32)
        rec = self.records[j]
        if name == "pred_label":
            return np.array(rec[name])
        return np.array(rec[name], dtype=np.int32 if name == "count" else np.float32)

    def series(self, name: str) -> EpochSeries:
        """Field ``name`` over the epochs, read lazily (see :class:`EpochSeries`)."""
        if name not in self.keys():
            raise KeyError(f"unknown dynamics field {name!r}; the fields are {self.keys()}.")
        return EpochSeries(self, name)

    def __getitem__(self, name: str) -> np.ndarray:
        """A field over epochs, stacked in memory: float32 (E, N) (or (E, N, L)); ``probs`` float32
        (E, N, C); ``pred_label`` int16, ``count`` int32. :meth:`series` reads the same one epoch at a time."""
        return np.stack(list(self.series(name)))

    @property
    def has_probs(self) -> bool:
        """Whether the class probabilities (``probs``, (E, N, C)) are recorded: in every epoch that saw
        an item (an epoch that saw none, e.g. the validation split during a LiLAW warm-up, has no
        ``probs`` field and reads as NaN)."""
        if self._has_probs is None:
            with_probs = ["probs" in self._names(j) for j in range(len(self.epochs))]
            self._has_probs = any(with_probs) and all(
                h or not np.asarray(self.records[j]["count"]).any() for j, h in enumerate(with_probs))
        return self._has_probs

    def keys(self) -> list[str]:
        return list(FLOAT_FIELDS) + ["pred_label", "count"] + (["probs"] if self.has_probs else [])

    def as_dict(self) -> dict[str, np.ndarray]:
        """Every field stacked in memory as (E, N, ...) arrays."""
        return {k: self[k] for k in self.keys()}

    def views(self) -> dict[str, EpochSeries]:
        """Every field as an :class:`EpochSeries` (what :mod:`lilaw_med.audit.window` reads, one epoch at a time)."""
        return {k: EpochSeries(self, k) for k in self.keys()}


def dynamics_folder(path: str | os.PathLike) -> Path:
    """The dynamics folder of ``path``: ``path`` itself when it holds the manifest, else ``path/dynamics``."""
    folder = Path(path)
    if not (folder / MANIFEST).is_file() and (folder / FOLDER / MANIFEST).is_file():
        return folder / FOLDER
    return folder


def load_dynamics(path: str | os.PathLike, split: str = "training", mmap: bool = True) -> Dynamics:
    """Reads the dynamics a :class:`~lilaw_med.handlers.dynamics.DynamicsRecorder` wrote.

    Args:
        path: the dynamics folder (``RUN_DIR/dynamics``) or the run folder holding it.
        split: ``"training"`` or ``"validation"``.
        mmap: memory-map each epoch's file when it is read (the default: one epoch resident at a
            time) instead of reading every epoch into memory now.

    Returns:
        The split's :class:`Dynamics`.

    Raises:
        FileNotFoundError: when no manifest is found.
        InputError: on a different format, or a split that was not recorded.
    """
    folder = dynamics_folder(path)
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise FileNotFoundError(
            f"no dynamics found at {folder} (expected {MANIFEST}): was the run trained with the recorder, "
            "and did it finish at least one epoch?"
        )
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT_NAME:
        raise InputError(f"{manifest_path} is not a {FORMAT_NAME} manifest.")
    if int(manifest.get("version", 0)) > FORMAT_VERSION:
        raise InputError(f"{manifest_path} has format version {manifest['version']}; this reader knows {FORMAT_VERSION}.")
    if split not in manifest["splits"]:
        raise InputError(f"split {split!r} was not recorded; recorded: {sorted(manifest['splits'])}.")
    info = manifest["splits"][split]
    ids = json.loads((folder / info["ids"]).read_text())
    epochs = [int(e) for e in info["epochs"]]
    records = _EpochRecords([folder / epoch_name(split, e) for e in epochs], len(ids), mmap)
    lilaw = {int(k): v for k, v in manifest.get("lilaw", {}).items()}
    return Dynamics(ids=ids, epochs=epochs, records=records, lilaw=lilaw, multi_label=bool(manifest.get("multi_label")))
