"""The training configuration: typed sections, defaults, validation and ``--set`` overrides.

A config is a nested mapping of sections (``data``, ``model``, ``loss``, ``lilaw``, ``optim``,
``schedule``, ``train``, ``eval``, ``output``), read from YAML with ``yaml.safe_load`` only. Each
section is a frozen dataclass below (:class:`DataConfig`, ...) whose fields are the keys, with
their defaults, checks and whether ``--resume`` may change them (:func:`setting`, in
:mod:`lilaw_med.run.config_schema`): the one home of every key. :func:`validate_config` fills every
default and rejects unknown keys, wrong types and ranges (naming the field);
:meth:`Config.from_mapping` does the same and returns the typed :class:`Config` the library reads
(``cfg.train.epochs``). The LiLAW defaults come from the signatures of
:class:`~lilaw_med.weighting.LiLAWWeighting` and :class:`~lilaw_med.losses.LiLAWLoss` and from
:data:`~lilaw_med.meta_step_defaults.META_STEP_DEFAULTS`; the names a config may use from the
registries (:data:`~lilaw_med.data.presets.PRESETS`, :data:`~lilaw_med.networks.NETWORKS`,
:data:`~lilaw_med.losses.BASE_LOSSES`).

Relative paths in a config (``data.datalist``, ``data.sample_dir``, ``output.dir``, ...) are
resolved against the current working directory when the run starts.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import inspect
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lilaw_med.data.presets import PRESETS, get_preset
from lilaw_med.losses import BASE_LOSSES, LiLAWLoss
from lilaw_med.meta_step_defaults import META_STEP_DEFAULTS
from lilaw_med.networks import NETWORKS
from lilaw_med.run.config_schema import ConfigError, Field, check_value, config_differences, setting, suggest
from lilaw_med.run.config_yaml import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    apply_overrides,
    load_yaml_file,
    parse_override,
)
from lilaw_med.weighting import LiLAWWeighting

__all__ = [
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_DEPTH",
    "Config",
    "ConfigError",
    "DataConfig",
    "EvalConfig",
    "Field",
    "LiLAWConfig",
    "LossConfig",
    "ModelConfig",
    "OptimConfig",
    "OutputConfig",
    "SCHEMA",
    "ScheduleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_differences",
    "default_config",
    "dump_config",
    "get_value",
    "load_config",
    "load_preset_config",
    "load_yaml_file",
    "parse_override",
    "validate_config",
]

KEY_METRICS = ("auroc", "accuracy", "balanced_accuracy", "loss", "ece")

MAX_SPATIAL_VOXELS = 512**3
"""Upper bound of ``data.options.spatial_size``'s pixels/voxels per image (a 512^3 volume, 512 MiB as float32)."""
MAX_BATCH_SIZE = 65536
"""Upper bound of the batch sizes (``train.batch_size``, ``lilaw.val_batch_size``)."""
_SEED_MAX = 2**32 - 1  # NumPy's legacy seeding (MONAI's set_determinism) takes seeds below 2**32


def _signature_default(func: Callable, name: str) -> Any:
    """The default of parameter ``name`` of ``func`` (the single source of the spec's numbers)."""
    return inspect.signature(func).parameters[name].default


_NUM = (int, float)
_CADENCE = "when checkpoints are written, not what they hold"
_W = LiLAWWeighting.__init__
_L = LiLAWLoss.__init__



@dataclass(frozen=True)
class DataConfig:
    """``data``: where the items come from and how they are read and cached."""

    preset: str = setting("radiology_2d", (str,), choices=PRESETS, help="modality preset of the transforms")
    datalist: str | None = setting(None, (str,), nullable=True, help="datalist JSON (MONAI decathlon style) or CSV")
    sample_data: bool = setting(
        False, (bool,), help="use the generated sample data of the preset (generated into sample_dir when missing)"
    )
    sample_dir: str = setting("sample_data/generated", (str,), help="folder of the generated sample data")
    class_names: list[str] | None = setting(None, (list,), nullable=True, item_types=(str,), help="class names, index order")
    multi_label: bool = setting(False, (bool,), help="labels are lists of 0/1 (one sigmoid output per label)")
    val_fraction: float = setting(
        0.15, _NUM, minimum=0.0, maximum=0.9, exclusive_minimum=True,
        help="fraction of training split off as (noisy) validation when the datalist has none",
    )
    split_seed: int | None = setting(
        None, (int,), nullable=True, minimum=0, maximum=_SEED_MAX, help="seed of the validation split (null: train.seed)"
    )
    options: dict[str, Any] = setting({}, (dict,), help="options of the transform preset (see lilaw_med.data.transforms)")
    cache: str = setting("none", (str,), choices=("none", "memory", "disk"), help="dataset caching")
    cache_dir: str | None = setting(None, (str,), nullable=True, help="folder of the disk cache (null: RUN_DIR/cache)")
    cache_memory_fraction: float = setting(
        0.5, _NUM, minimum=0.0, maximum=1.0, exclusive_minimum=True,
        help="share of the available memory a memory cache may take (split among a node's ranks); above it: disk",
        resumable="where the deterministic transforms' outputs are cached (memory or disk), not what they are",
    )
    skip_bad: bool = setting(False, (bool,), help="drop items the pre-flight check rejects instead of stopping")
    exclude: str | None = setting(
        None, (str,), nullable=True,
        help="CSV of item ids to exclude (from `lilaw-med audit`; or a review decision file: its exclude rows)")
    relabel: str | None = setting(
        None, (str,), nullable=True,
        help="CSV of item ids and new labels (or a review decision file: its relabel rows)")
    max_items: int | None = setting(
        None, (int,), nullable=True, minimum=1, help="keep at most this many items per split (quick runs)"
    )


@dataclass(frozen=True)
class ModelConfig:
    """``model``: the network."""

    network: str = setting("small_cnn", (str,), choices=NETWORKS, help="network architecture")
    spatial_dims: int | None = setting(None, (int,), choices=(2, 3), nullable=True, help="2 or 3 (null: from preset)")
    in_channels: int | None = setting(None, (int,), minimum=1, nullable=True, help="input channels (null: from preset)")
    pretrained: bool = setting(False, (bool,), help="load pretrained weights from model.weights (local files only)")
    weights: str | None = setting(None, (str,), nullable=True, help="local file of pretrained weights (state dict)")
    channels_last: str | bool = setting("auto", (str, bool), choices=("auto", True, False), help="channels-last memory format")
    dropout: float = setting(0.0, _NUM, minimum=0.0, maximum=0.9, help="dropout before the classifier (small_cnn)")


@dataclass(frozen=True)
class LossConfig:
    """``loss``: the per-sample loss LiLAW weights, and class imbalance."""

    name: str = setting("ce", (str,), choices=BASE_LOSSES, help="per-sample loss that LiLAW weights")
    focal_gamma: float = setting(2.0, _NUM, minimum=0.0, help="focal loss gamma")
    gce_q: float = setting(0.7, _NUM, minimum=0.0, maximum=1.0, exclusive_minimum=True, help="GCE exponent q")
    sce_alpha: float = setting(0.1, _NUM, minimum=0.0, help="SCE weight of CE")
    sce_beta: float = setting(1.0, _NUM, minimum=0.0, help="SCE weight of reverse CE")
    class_balance: str = setting(
        "none", (str,), choices=("none", "weights", "sampler"),
        help="imbalance handling: inverse-frequency class weights or a class-balanced sampler",
    )
    class_weights: list[float] | None = setting(None, (list,), nullable=True, item_types=_NUM, help="explicit class weights")


@dataclass(frozen=True)
class LiLAWConfig:
    """``lilaw``: the LiLAW weighting and its meta step."""

    enabled: bool = setting(True, (bool,), help="false: the plain baseline, everything else identical")
    alpha: float = setting(_signature_default(_W, "alpha"), _NUM, help="initial alpha ('easy')")
    beta: float = setting(_signature_default(_W, "beta"), _NUM, help="initial beta ('hard')")
    delta: float = setting(_signature_default(_W, "delta"), _NUM, help="initial delta ('moderate')")
    alpha_min: float = setting(_signature_default(_W, "alpha_min"), _NUM, help="lower clamp of alpha")
    lr: float = setting(
        META_STEP_DEFAULTS["lr"], _NUM, minimum=0.0, exclusive_minimum=True, help="meta step learning rate"
    )
    weight_decay: float = setting(META_STEP_DEFAULTS["weight_decay"], _NUM, minimum=0.0, help="meta step weight decay")
    warmup_epochs: int = setting(
        _signature_default(_L, "warmup_epochs"), (int,), minimum=0, help="epochs trained unweighted first"
    )
    val_mode: str = setting(
        META_STEP_DEFAULTS["val_mode"], (str,), choices=("eval", "train"),
        help="network mode of the meta step's validation forward",
    )
    detach_weights: bool = setting(
        _signature_default(_L, "detach_weights"), (bool,), help="treat w as a constant in the model step"
    )
    normalize_weights: bool = setting(
        _signature_default(_L, "normalize_weights"), (bool,),
        help="divide w by its batch mean in the model step (the base loss's scale; for SGD)",
    )
    meta_objective: str = setting(
        _signature_default(_L, "meta_objective"), (str,), choices=("mean", "normalized"),
        help="what the meta step lowers: mean(w*L) (the spec's) or sum(w*L)/sum(w)",
    )
    val_batch_size: int | None = setting(
        None, (int,), minimum=1, maximum=MAX_BATCH_SIZE, nullable=True, help="meta batch size (null: train.batch_size)"
    )
    meta_every: int = setting(
        META_STEP_DEFAULTS["every"], (int,), minimum=1,
        help="meta step after every k-th training iteration (1: every one, the spec's)",
    )
    epoch_budget: float | None = setting(
        META_STEP_DEFAULTS["epoch_budget"], _NUM, minimum=0.0, exclusive_minimum=True, nullable=True,
        help="how far an epoch moves alpha/beta/delta, in spec meta steps (null: the spec's lr at every "
        "meta step, so the scalars follow the number of steps)",
    )


@dataclass(frozen=True)
class OptimConfig:
    """``optim``: the network's optimizer."""

    name: str = setting("adam", (str,), choices=("adam", "adamw", "sgd"), help="optimizer of the network")
    lr: float = setting(1e-3, _NUM, minimum=0.0, exclusive_minimum=True, help="learning rate")
    weight_decay: float = setting(1e-4, _NUM, minimum=0.0, help="weight decay")
    momentum: float = setting(0.9, _NUM, minimum=0.0, maximum=1.0, help="SGD momentum")
    nesterov: bool = setting(False, (bool,), help="SGD Nesterov momentum")


@dataclass(frozen=True)
class ScheduleConfig:
    """``schedule``: the per-epoch learning-rate schedule."""

    name: str = setting("none", (str,), choices=("none", "cosine", "step"), help="learning-rate schedule (per epoch)")
    warmup_epochs: int = setting(0, (int,), minimum=0, help="linear learning-rate warm-up epochs")
    step_size: int = setting(10, (int,), minimum=1, help="epochs between decays (step)")
    gamma: float = setting(0.1, _NUM, minimum=0.0, exclusive_minimum=True, help="decay factor (step)")
    min_lr: float = setting(0.0, _NUM, minimum=0.0, help="final learning rate (cosine)")


@dataclass(frozen=True)
class TrainConfig:
    """``train``: the training loop: epochs, batches, seed, device, checkpoints."""

    epochs: int = setting(
        10, (int,), minimum=1, maximum=1_000_000, help="training epochs",
        resumable="may grow (the run goes on for more epochs), never shrink",
    )
    batch_size: int = setting(64, (int,), minimum=1, maximum=MAX_BATCH_SIZE, help="training batch size")
    seed: int = setting(0, (int,), minimum=0, maximum=_SEED_MAX, help="random seed (network init, shuffles, augmentations)")
    device: str = setting(
        "auto", (str,), help="auto (CUDA when present), cpu, cuda or cuda:N", resumable="where the run continues"
    )
    amp: str | bool = setting("auto", (str, bool), choices=("auto", True, False), help="mixed precision (auto: on for CUDA)")
    num_workers: int | str = setting(
        "auto", (int, str), words=("auto",), minimum=0, maximum=1024,
        help="data-loader worker processes (auto: the cores this process may use, split among a node's ranks, at most 8)",
        resumable="loader processes (with random augmentations, see docs/fault_tolerance.md)",
    )
    deterministic: bool = setting(True, (bool,), help="seed every RNG (reproducible CPU runs)")
    checkpoint_every_n_epochs: int | None = setting(
        1, (int,), minimum=1, nullable=True, help="checkpoint interval in epochs", resumable=_CADENCE
    )
    checkpoint_every_n_iterations: int | None = setting(
        None, (int,), minimum=1, nullable=True, help="checkpoint interval in iterations (null: off)", resumable=_CADENCE
    )
    keep_last: int = setting(2, (int,), minimum=1, help="checkpoints kept", resumable="how many checkpoints are kept")
    max_checkpoint_ratio: float = setting(
        8.0, _NUM, minimum=1.0,
        help="on resume, refuse before reading it a checkpoint larger than this many times the expected size (+64 MiB)",
        resumable="how large a checkpoint may be before it is read",
    )
    progress: bool = setting(True, (bool,), help="show a progress bar", resumable="display only")
    sync_batchnorm: bool = setting(
        False, (bool,), help="distributed (torchrun) on CUDA: synchronise batch-norm statistics across ranks"
    )
    dist_timeout_minutes: float = setting(
        30.0, _NUM, minimum=0.0, exclusive_minimum=True,
        help="distributed (torchrun): how long a collective waits for the other ranks, and a rank for a sign of "
        "rank 0 while rank 0 alone works (pre-flight, final evaluation)",
        resumable="how long ranks wait for each other, not what they compute",
    )


@dataclass(frozen=True)
class EvalConfig:
    """``eval``: validation, the best checkpoint and calibration."""

    key_metric: str = setting("auroc", (str,), choices=KEY_METRICS, help="metric that selects the best checkpoint")
    interval: int = setting(1, (int,), minimum=1, help="validate every N epochs")
    calibration: str = setting(
        "none", (str,), choices=("none", "temperature", "threshold", "prior"),
        help="fit on the noisy validation split: a temperature (any task), a decision threshold (binary), or a "
        "temperature and a class-prior correction for balanced accuracy (prior: single-label, 3+ classes)",
    )
    ece_bins: int = setting(15, (int,), minimum=2, help="bins of the expected calibration error")
    test_each_epoch: bool = setting(False, (bool,), help="also evaluate the test split every epoch (monitoring only)")


@dataclass(frozen=True)
class OutputConfig:
    """``output``: the run folder."""

    dir: str = setting("runs", (str,), help="parent folder of run folders")
    name: str | None = setting(None, (str,), nullable=True, help="run folder name (null: PRESET-YYYYmmdd-HHMMSS)")
    plots: bool = setting(True, (bool,), help="write PNG plots")
    tensorboard: str | bool = setting("auto", (str, bool), choices=("auto", True, False), help="TensorBoard logs")
    tracking: str | list[str] | None = setting(
        None, (str, list), nullable=True, item_types=(str,),
        help="experiment trackers besides the run folder's files: tensorboard, mlflow (a name or a list; MLflow "
        "writes RUN_DIR/mlruns, no server; rank 0 only)",
    )
    overwrite: bool = setting(False, (bool,), help="allow writing into an existing non-empty run folder")

@dataclass(frozen=True)
class Config:
    """A complete, validated training config: one typed object per section.

    Build it with :meth:`from_mapping` (which validates); :meth:`to_dict` gives the plain nested
    dict that ``config.yaml`` and an exported bundle hold.

    Example::

        cfg = Config.from_mapping({"data": {"sample_data": True}, "train": {"epochs": 2}})
        cfg.train.epochs        # 2
        cfg.lilaw.alpha         # 2.0, the spec's default
        cfg.to_dict()["train"]  # the plain section, every default filled
    """

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    lilaw: LiLAWConfig = field(default_factory=LiLAWConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    @property
    def split_seed(self) -> int:
        """The seed of the validation split: ``data.split_seed``, else ``train.seed``."""
        return self.data.split_seed if self.data.split_seed is not None else self.train.seed

    @classmethod
    def from_mapping(cls, config: Config | Mapping[str, Any] | None) -> Config:
        """Validates a config mapping (see :func:`validate_config`) and types it.

        Args:
            config: a nested mapping (e.g. from ``yaml.safe_load``), ``None`` for all defaults, or
                a :class:`Config` (returned as it is).

        Returns:
            The :class:`Config`.

        Raises:
            ConfigError: as :func:`validate_config`.
        """
        if isinstance(config, Config):
            return config
        valid = validate_config(config)
        return cls(**{name: section(**valid[name]) for name, section in _SECTIONS.items()})

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """The config as a new nested dict ``{section: {key: value}}`` (section order of the schema)."""
        return {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}


# section name -> its dataclass, in the order of Config's fields (the order config.yaml is written in)
_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in dataclasses.fields(Config)}  # type: ignore[misc]

SCHEMA: dict[str, dict[str, Field]] = {
    name: {f.name: f.metadata["field"] for f in dataclasses.fields(section)} for name, section in _SECTIONS.items()
}
"""``{section: {key: Field}}``, read from the section dataclasses."""


def default_config() -> dict[str, dict[str, Any]]:
    """Every field at its default value.

    Returns:
        A new nested dict ``{section: {key: value}}``.
    """
    return Config().to_dict()


def _check_options(preset: str, options: Mapping[str, Any]) -> None:
    """Checks ``data.options`` keys against the preset's documented options, and the image size
    against :data:`MAX_SPATIAL_VOXELS` (before anything of that size is allocated)."""
    spec = get_preset(preset)
    valid = spec.default_options()
    for key in options:
        if key not in valid:
            raise ConfigError(f"config key 'data.options.{key}' is unknown for preset '{preset}'" + suggest(key, valid))
    size = options.get("spatial_size")
    if size is not None:
        _check_spatial_size(preset, spec.spatial_dims, size)


def _check_spatial_size(preset: str, spatial_dims: int, size: Any) -> None:
    """``data.options.spatial_size``: one positive integer per dimension, at most :data:`MAX_SPATIAL_VOXELS` in all."""
    sizes = [size] * spatial_dims if isinstance(size, int) and not isinstance(size, bool) else size
    if (
        not isinstance(sizes, list)
        or len(sizes) != spatial_dims
        or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes)
    ):
        raise ConfigError(
            f"config field 'data.options.spatial_size' must be {spatial_dims} positive integers (or null) for "
            f"preset '{preset}' but is {size!r}."
        )
    voxels = math.prod(sizes)
    if voxels > MAX_SPATIAL_VOXELS:
        raise ConfigError(
            f"config field 'data.options.spatial_size' asks for {voxels} pixels per image ({'x'.join(map(str, sizes))}), "
            f"more than the limit of {MAX_SPATIAL_VOXELS} (512^3); choose a smaller size."
        )


def validate_config(config: Config | Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Validates a config and fills every default.

    Args:
        config: a nested mapping (e.g. from ``yaml.safe_load``); ``None`` means all defaults; a
            :class:`Config` gives its :meth:`~Config.to_dict`.

    Returns:
        A new, complete config dict.

    Raises:
        ConfigError: on an unknown section or key (with the closest valid name), a wrong type, a
            value outside its range or choices, or inconsistent fields.
    """
    if isinstance(config, Config):
        return config.to_dict()
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping of sections but is {type(config).__name__}.")
    out = default_config()
    for section, values in config.items():
        if section not in SCHEMA:
            raise ConfigError(f"config section '{section}' is unknown" + suggest(str(section), SCHEMA))
        if values is not None:
            out[section].update(_check_section(section, values))
    _check_consistency(out)
    return out


def _check_section(section: str, values: Any) -> dict[str, Any]:
    """The checked values of one section's keys (a mapping of known keys)."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"config section '{section}' must be a mapping but is {type(values).__name__}.")
    fields = SCHEMA[section]
    out: dict[str, Any] = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"config key '{section}.{key}' is unknown" + suggest(str(key), fields))
        out[key] = check_value(f"{section}.{key}", fields[key], value)
    return out


def _check_consistency(cfg: dict[str, dict[str, Any]]) -> None:
    """Checks the rules that tie fields together (each message names the field it refuses)."""
    data, model = cfg["data"], cfg["model"]
    if data["datalist"] is None and not data["sample_data"]:
        raise ConfigError("config field 'data.datalist' is required (or set 'data.sample_data: true').")
    _check_lilaw_order(cfg["lilaw"])
    _check_loss_fits_labels(data, cfg["loss"])
    if model["pretrained"] and not model["weights"]:
        raise ConfigError(
            "config field 'model.weights' must name a local weights file when model.pretrained is true "
            "(weights are never downloaded)."
        )
    if cfg["loss"]["class_balance"] != "none" and data["multi_label"]:
        raise ConfigError("config field 'loss.class_balance' must be 'none' for multi-label data.")
    _check_options(data["preset"], data["options"])


def _check_lilaw_order(lilaw: Mapping[str, Any]) -> None:
    """alpha_min <= alpha and beta <= delta, as :class:`~lilaw_med.weighting.LiLAWWeighting` requires."""
    if lilaw["alpha"] < lilaw["alpha_min"]:
        raise ConfigError(f"config field 'lilaw.alpha' must be >= lilaw.alpha_min={lilaw['alpha_min']} but is {lilaw['alpha']}.")
    if lilaw["delta"] < lilaw["beta"]:
        raise ConfigError(f"config field 'lilaw.delta' must be >= lilaw.beta={lilaw['beta']} but is {lilaw['delta']}.")


def _check_loss_fits_labels(data: Mapping[str, Any], loss: Mapping[str, Any]) -> None:
    """Multi-label data needs a loss that takes multi-label targets."""
    if data["multi_label"] and not BASE_LOSSES[loss["name"]].multi_label:
        names = " or ".join(f"'{n}'" for n, entry in BASE_LOSSES.items() if entry.multi_label)
        raise ConfigError(f"config field 'loss.name' must be {names} when data.multi_label is true but is '{loss['name']}'.")


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Reads a YAML config (safe-loaded), applies overrides, validates and fills defaults.

    Args:
        path: the YAML file; ``None`` starts from the defaults.
        overrides: ``--set`` strings applied after reading.

    Returns:
        The complete, validated config.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ConfigError: when the file is not YAML (binary, too large, too deeply nested) or the config is
            invalid (the message names the file).

    Example::

        config = load_config("chest.yaml", ["train.epochs=5", "lilaw.enabled=false"])
        cfg = Config.from_mapping(config)  # typed, for code that reads it
    """
    raw: Any = {}
    if path is not None:
        path = Path(path)
        raw = load_yaml_file(path) or {}
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: a config must be a mapping of sections but is {type(raw).__name__}.")
    try:
        return validate_config(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def dump_config(config: Config | Mapping[str, Any]) -> str:
    """The config as YAML text (section order of the schema)."""
    if isinstance(config, Config):
        config = config.to_dict()
    ordered = {s: dict(config[s]) for s in SCHEMA if s in config}
    return yaml.safe_dump(ordered, sort_keys=False, default_flow_style=None)


def get_value(config: Mapping[str, Any], dotted: str) -> Any:
    """Reads ``section.key`` from a config.

    Raises:
        KeyError: when the key is absent.
    """
    node: Any = config
    for part in dotted.split("."):
        node = node[part]
    return node


def load_preset_config(filename: str, overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Reads a preset's YAML, applies overrides, validates.

    Args:
        filename: a file in the package's ``lilaw_med.configs`` (e.g. ``"radiology_2d.yaml"``), or a
            preset's :attr:`~lilaw_med.data.presets.PresetSpec.config_file` (an absolute path for a
            preset registered from outside the package).
        overrides: ``--set`` strings.

    Returns:
        The complete, validated config.

    Raises:
        FileNotFoundError: when there is no such file.
        ConfigError: when an override makes it invalid.
    """

    resource = Path(filename) if Path(filename).is_absolute() else importlib.resources.files("lilaw_med.configs") / filename
    if not resource.is_file():
        raise FileNotFoundError(f"no packaged preset config {filename!r} in lilaw_med.configs.")
    raw = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    try:
        return validate_config(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{filename}: {e}") from None
