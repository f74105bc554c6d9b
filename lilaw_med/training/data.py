"""The data of a training run: its datalist (:func:`prepare_datalist`), its transform options
and its datasets, samplers and loaders (:func:`build_data`).

Every loader and sampler owns a seeded generator, so iterating one draws no global random number
and runs with the same seed pair up whatever else differs (LiLAW on or off).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from monai.data import DataLoader

from lilaw_med.data.curation import apply_exclusions, apply_relabels
from lilaw_med.data.datalist import Datalist, load_datalist
from lilaw_med.data.dataset import available_memory_bytes, build_dataset, plan_cache, shard_indices
from lilaw_med.data.preflight import preflight_or_raise
from lilaw_med.data.presets import PresetSpec, get_preset
from lilaw_med.data.sample import write_sample_data
from lilaw_med.data.sampler import ResumableSampler
from lilaw_med.data.transforms import build_transforms
from lilaw_med.errors import InputError
from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir
from lilaw_med.run.transforms import evaluation_transforms, transform_options
from lilaw_med.training.model import input_shape
from lilaw_med.training.sampling import ClassBalancedSampler
from lilaw_med.utils import atomic_write

__all__ = [
    "AUTO_WORKERS_MAX",
    "AUTO_WORKERS_MIN_ITEMS",
    "TrainingData",
    "build_data",
    "cache_budget_bytes",
    "prepare_datalist",
    "resolve_num_workers",
    "training_labels",
]

logger = logging.getLogger(__name__)

# the index of the generated sample data (key -> datalist), beside it in data.sample_dir
_SAMPLE_INDEX = "sample_index.json"


@dataclass
class TrainingData:
    """The datalist of a run and the loaders built over it.

    Attributes:
        datalist: the prepared :class:`~lilaw_med.data.datalist.Datalist`.
        train_loader: the training batches (augmented; the order of ``train_sampler``).
        train_sampler: a :class:`~lilaw_med.data.sampler.ResumableSampler` or a class-balanced one.
        meta_loader: the validation batches of the LiLAW meta step (its own seeded order).
        val_loader: the whole validation split in order (the final evaluation).
        test_loader: the whole test split in order, or ``None`` without labelled test items.
        epoch_val_loader: the validation items this rank evaluates every epoch (``EpochValidation``):
            positions ``rank, rank + world_size, ...`` in order, none padded or repeated; in one process
            ``val_loader`` itself.
        epoch_test_loader: the same for the test split (``None`` without labelled test items).
    """

    datalist: Datalist
    train_loader: Any
    train_sampler: Any
    meta_loader: Any
    val_loader: Any
    test_loader: Any
    epoch_val_loader: Any
    epoch_test_loader: Any


def training_labels(items: Sequence[Mapping[str, Any]]) -> list[int]:
    """The integer labels of single-label items."""
    return [int(it["label"]) for it in items]


def _sample_datalist(preset: PresetSpec, sample_dir: Path) -> Path:
    """The generated sample datalist of ``preset``, generating the sample data when missing."""
    if preset.sample_key is None:
        raise InputError(f"preset '{preset.name}' has no sample data; set data.datalist.")
    index_path = sample_dir / _SAMPLE_INDEX
    if index_path.is_file():
        with contextlib.suppress(ValueError, KeyError, OSError):
            path = Path(json.loads(index_path.read_text())[preset.sample_key])
            if path.is_file():
                return path

    logger.info("generating the sample data into %s (once) ...", sample_dir)
    paths = write_sample_data(sample_dir, seed=0)
    atomic_write(index_path, json.dumps({k: str(Path(v).absolute()) for k, v in paths.items()}, indent=2))
    return Path(paths[preset.sample_key])


def prepare_datalist(
    config: Config | Mapping[str, Any], run_dir: RunDir | None = None, datalist_path: str | None = None
) -> Datalist:
    """Loads the datalist of a config: sample data, split, exclusions, relabels, subset, pre-flight.

    Args:
        config: a config (validated here when it is a mapping).
        run_dir: where the pre-flight check writes ``rejected_items.csv`` (``None``: nowhere).
        datalist_path: use this datalist instead of the config's (``resume`` passes the run's copy).

    Returns:
        The resolved :class:`lilaw_med.data.datalist.Datalist`.

    Raises:
        FileNotFoundError: when the datalist (or an exclusion CSV) is missing.
        ValueError: when items are bad (pre-flight) or the datalist is invalid.
    """
    cfg = Config.from_mapping(config)
    data = cfg.data
    if datalist_path is None:
        datalist_path = _config_datalist(cfg)
    datalist = load_datalist(
        datalist_path, class_names=data.class_names, val_fraction=data.val_fraction, seed=cfg.split_seed,
        multi_label=data.multi_label, strict=False,  # label and id problems go to the pre-flight report
    )
    datalist = _curate(datalist, cfg)
    datalist = preflight_or_raise(
        datalist, data.skip_bad, run_dir.rejected if run_dir is not None else None, expected_dims=input_shape(cfg)[0],
    )
    if not datalist.training:
        raise InputError(f"datalist {datalist_path}: the training split is empty.")
    if not datalist.validation:
        raise InputError(f"datalist {datalist_path}: the validation split is empty (LiLAW's meta step needs one).")
    return datalist


def _config_datalist(cfg: Config) -> str:
    """``data.datalist``, or the preset's sample datalist (generated into ``data.sample_dir`` when missing)."""
    if cfg.data.datalist:
        return cfg.data.datalist
    return str(_sample_datalist(get_preset(cfg.data.preset), Path(cfg.data.sample_dir).absolute()))


def _curate(datalist: Datalist, cfg: Config) -> Datalist:
    """``data.exclude``, ``data.relabel`` and ``data.max_items`` applied, in that order."""
    data = cfg.data
    if data.exclude:
        datalist = apply_exclusions(datalist, data.exclude)
    if data.relabel:
        datalist = apply_relabels(datalist, data.relabel)
    if data.max_items:
        n = data.max_items
        datalist.training, datalist.validation, datalist.test = (
            datalist.training[:n], datalist.validation[:n], datalist.test[:n]
        )
    return datalist


def _loader(
    dataset: Any, batch_size: int, sampler: Any, num_workers: int, seed: int, pin: bool, persistent: bool
) -> Any:

    # every loader owns its generator, so no global random number is drawn by iterating it; MONAI's
    # DataLoader seeds each worker's transforms from it, so a seed and a worker count give one result
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=num_workers,
        generator=torch.Generator().manual_seed(seed), pin_memory=pin,
        persistent_workers=persistent and num_workers > 0,
    )


AUTO_WORKERS_MAX = 8
"""``train.num_workers: auto`` never starts more worker processes than this per process."""
AUTO_WORKERS_MIN_ITEMS = 1000
"""``train.num_workers: auto`` starts none for a training split smaller than this: starting the
processes costs more than they save on an epoch of a few batches."""


def _ranks_per_node(world_size: int) -> int:
    if world_size <= 1:
        return 1

    return max(1, min(world_size, int(idist.get_nproc_per_node() or world_size)))


def resolve_num_workers(value: int | str, items: int, ranks_per_node: int = 1, cores: int | None = None) -> int:
    """The loader worker processes of ``train.num_workers``: a number as given; ``"auto"``: the cores this
    process may run on (``os.sched_getaffinity``) split among the node's ranks, at most
    :data:`AUTO_WORKERS_MAX`, and none when that leaves one (a single worker only moves the decoding to
    another process) or the training split has fewer than :data:`AUTO_WORKERS_MIN_ITEMS` items.

    Args:
        value: the config value (an int or ``"auto"``).
        items: the number of training items.
        ranks_per_node: the processes sharing this node's cores.
        cores: the usable cores (``None``: ``len(os.sched_getaffinity(0))``).

    Returns:
        The number of worker processes of each loader.
    """
    if value != "auto":
        return int(value)
    cores = len(os.sched_getaffinity(0)) if cores is None else int(cores)
    n = min(AUTO_WORKERS_MAX, cores // max(1, ranks_per_node))
    return 0 if n <= 1 or items < AUTO_WORKERS_MIN_ITEMS else n


def cache_budget_bytes(cfg: Config, world_size: int = 1) -> float:
    """The memory one process's cache may take: ``data.cache_memory_fraction`` of the available memory,
    split among the processes of this node (they fill their caches at once).

    Args:
        cfg: the config.
        world_size: the number of processes (the node's count is asked of ``ignite.distributed``).

    Returns:
        Bytes.
    """
    return cfg.data.cache_memory_fraction * available_memory_bytes() / _ranks_per_node(world_size)


def _all_labelled(items: Sequence[Mapping[str, Any]]) -> bool:
    """Whether a split has items and every one has a label (a test split is evaluated only then)."""
    return bool(items) and all(it.get("label") is not None for it in items)


def _cache_dir(cfg: Config, run_dir: RunDir | None) -> Path | None:
    """``data.cache_dir``, else ``RUN_DIR/cache`` (``None`` without a run folder)."""
    if cfg.data.cache_dir:
        return Path(cfg.data.cache_dir)
    return run_dir.root / "cache" if run_dir else None


def _cached_positions(size: int, rank: int, world_size: int, sharded: bool) -> list[int]:
    """The positions of a split this rank caches: its shard, or all of them."""
    return shard_indices(size, rank, world_size) if sharded else list(range(size))


def _train_sampler(cfg: Config, datalist: Datalist, size: int, rank: int, world_size: int, shard: bool) -> Any:
    """The training order: class-balanced (``loss.class_balance: sampler``) or a seeded shuffle, both resumable."""
    if cfg.loss.class_balance == "sampler":
        return ClassBalancedSampler(
            training_labels(datalist.training), seed=cfg.train.seed, rank=rank, world_size=world_size, shard=shard
        )
    return ResumableSampler(size, shuffle=True, seed=cfg.train.seed, rank=rank, world_size=world_size, shard=shard)


def _shard_loader(dataset: Any, batch_size: int, rank: int, world_size: int, nw: int, seed: int, pin: bool) -> Any:
    """A once-per-epoch loader of this rank's positions ``rank::world_size`` of ``dataset``."""
    return _loader(dataset, batch_size, shard_indices(len(dataset), rank, world_size), nw, seed, pin, persistent=False)


def build_data(
    cfg: Config, datalist: Datalist, run_dir: RunDir | None, device: torch.device, rank: int = 0, world_size: int = 1
) -> TrainingData:
    """The transforms, datasets, samplers and loaders of a run.

    With ``data.cache: memory`` the cache is planned first (:func:`~lilaw_med.data.dataset.plan_cache`:
    above the budget of :func:`cache_budget_bytes` it falls back to the disk cache) and, under torchrun,
    each rank caches and draws from its own shard of every split (its samplers are ``shard=True``).
    Under torchrun, whatever the cache, each rank's per-epoch validation and test loaders
    (``epoch_val_loader``, ``epoch_test_loader``) take only its shard, the positions it caches.

    Args:
        cfg: the config.
        datalist: the prepared datalist (:func:`prepare_datalist`).
        run_dir: the run folder (the disk cache defaults to ``RUN_DIR/cache``).
        device: the training device (pinned memory on CUDA).
        rank: this process's rank: it takes positions ``rank, rank + world_size, ...`` of every order.
        world_size: the number of processes.

    Returns:
        The :class:`TrainingData`.

    Raises:
        ValueError: from the transforms (an invalid option).
    """
    data, train, seed = cfg.data, cfg.train, cfg.train.seed
    cache_dir = _cache_dir(cfg, run_dir)
    options = transform_options(cfg)
    train_tf = build_transforms(data.preset, options, train=True)
    eval_tf = evaluation_transforms(cfg)
    with contextlib.suppress(AttributeError):
        train_tf.set_random_state(seed=seed)

    # a rank holds only its own shard in memory, and its samplers draw from it (decided by the config,
    # not by the budget, so the order of a run does not depend on the machine's memory)
    sharded = data.cache == "memory" and world_size > 1
    splits = {"training": datalist.training, "validation": datalist.validation, "test": datalist.test}
    cached = {name: _cached_positions(len(items), rank, world_size, sharded) for name, items in splits.items()}
    plan = plan_cache(
        data.cache, datalist.training, train_tf, sum(len(c) for c in cached.values()),
        cache_budget_bytes(cfg, world_size), cache_dir,
    )  # fmt: skip
    per_node = _ranks_per_node(world_size)
    fill = max(1, len(os.sched_getaffinity(0)) // per_node)  # every core fills the memory cache

    def dataset(name: str, transforms: Any) -> Any:
        return build_dataset(
            splits[name], transforms, cache=plan.mode, cache_dir=cache_dir, num_workers=fill,
            cached=cached[name] if sharded else None,
        )  # fmt: skip

    train_ds = dataset("training", train_tf)
    val_ds = dataset("validation", eval_tf)
    test_ds = dataset("test", eval_tf) if datalist.test else None
    has_test_labels = _all_labelled(datalist.test)

    train_sampler = _train_sampler(cfg, datalist, len(train_ds), rank, world_size, sharded)
    # the meta step's own sampler: seeded apart from the training order, reshuffled every pass
    meta_sampler = ResumableSampler(
        len(val_ds), shuffle=True, seed=seed + 1, rank=rank, world_size=world_size, shard=sharded
    )
    pin, batch = device.type == "cuda", train.batch_size
    nw = resolve_num_workers(train.num_workers, len(datalist.training), per_node)
    # the training and meta loaders are iterated all epoch long: their workers persist; validation and
    # test run once per epoch, so their workers end with the pass instead of idling beside the others
    val_loader = _loader(val_ds, batch, None, nw, seed + 2, pin, persistent=False)
    test_loader = _loader(test_ds, batch, None, nw, seed + 3, pin, persistent=False) if has_test_labels else None
    epoch_val_loader, epoch_test_loader = val_loader, test_loader
    if world_size > 1:
        # each rank evaluates its own positions (a plain list of them: a DistributedSampler would pad with
        # repeated items, which must not enter the metrics); EpochValidation gathers the shards
        epoch_val_loader = _shard_loader(val_ds, batch, rank, world_size, nw, seed + 2, pin)
        if has_test_labels:
            epoch_test_loader = _shard_loader(test_ds, batch, rank, world_size, nw, seed + 3, pin)
    return TrainingData(
        datalist=datalist,
        train_loader=_loader(train_ds, batch, train_sampler, nw, seed, pin, persistent=True),
        train_sampler=train_sampler,
        meta_loader=_loader(
            val_ds, cfg.lilaw.val_batch_size or batch, meta_sampler, nw, seed + 1, pin, persistent=True
        ),
        val_loader=val_loader,
        test_loader=test_loader,
        epoch_val_loader=epoch_val_loader,
        epoch_test_loader=epoch_test_loader,
    )
