"""The training configuration: schema, defaults, validation and ``--set`` overrides.

A config is a nested mapping of sections (``data``, ``model``, ``loss``, ``lilaw``, ``optim``,
``schedule``, ``train``, ``eval``, ``output``), read from YAML with ``yaml.safe_load`` only.
:func:`validate_config` fills every default, rejects unknown keys (naming the key and suggesting
the closest valid one) and checks types and ranges (naming the field). The LiLAW defaults are read
from the signatures of :class:`~lilaw_med.weighting.LiLAWWeighting`,
:class:`~lilaw_med.losses.LiLAWLoss` and :class:`~lilaw_med.handlers.LiLAWHandler`, so the spec's
numbers live in one place.

Relative paths in a config (``data.datalist``, ``data.sample_dir``, ``output.dir``, ...) are
resolved against the current working directory when the run starts.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lilaw_med.handlers.meta_step import LiLAWHandler
from lilaw_med.losses import LiLAWLoss
from lilaw_med.weighting import LiLAWWeighting

__all__ = [
    "ConfigError",
    "Field",
    "NETWORKS",
    "PRESETS",
    "SCHEMA",
    "apply_overrides",
    "default_config",
    "dump_config",
    "get_value",
    "load_config",
    "load_preset_config",
    "parse_override",
    "validate_config",
]

PRESETS = ("radiology_2d", "radiology_3d", "pathology")
NETWORKS = ("small_cnn", "resnet18", "resnet34", "resnet50", "densenet121", "efficientnet-b0")
LOSSES = ("ce", "focal", "bce", "gce", "sce")
KEY_METRICS = ("auroc", "accuracy", "balanced_accuracy", "loss", "ece")


class ConfigError(ValueError):
    """A config that does not follow the schema; the message names the field."""


def _signature_default(func: Callable, name: str) -> Any:
    """The default of parameter ``name`` of ``func`` (the single source of the spec's numbers)."""
    return inspect.signature(func).parameters[name].default


@dataclass(frozen=True)
class Field:
    """One config field.

    Attributes:
        default: the value used when the key is absent.
        types: accepted Python types (``bool`` is never accepted for ``int``/``float``).
        choices: allowed values, when the field is an enumeration.
        minimum: inclusive lower bound for numbers.
        maximum: inclusive upper bound for numbers.
        exclusive_minimum: ``minimum`` is exclusive.
        nullable: ``None`` (YAML ``null``) is allowed.
        help: one line describing the field (used in docs and error messages).
    """

    default: Any
    types: tuple[type, ...]
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    nullable: bool = False
    help: str = ""
    item_types: tuple[type, ...] | None = field(default=None)


_NUM = (int, float)
_W = LiLAWWeighting.__init__
_L = LiLAWLoss.__init__
_H = LiLAWHandler.__init__

SCHEMA: dict[str, dict[str, Field]] = {
    "data": {
        "preset": Field("radiology_2d", (str,), choices=PRESETS, help="modality preset of the transforms"),
        "datalist": Field(None, (str,), nullable=True, help="datalist JSON (MONAI decathlon style) or CSV"),
        "sample_data": Field(
            False, (bool,), help="use the generated sample data of the preset (generated into sample_dir when missing)"
        ),
        "sample_dir": Field("sample_data/generated", (str,), help="folder of the generated sample data"),
        "class_names": Field(None, (list,), nullable=True, item_types=(str,), help="class names, index order"),
        "multi_label": Field(False, (bool,), help="labels are lists of 0/1 (one sigmoid output per label)"),
        "val_fraction": Field(
            0.15, _NUM, minimum=0.0, maximum=0.9, exclusive_minimum=True,
            help="fraction of training split off as (noisy) validation when the datalist has none",
        ),
        "split_seed": Field(None, (int,), nullable=True, help="seed of the validation split (null: train.seed)"),
        "options": Field({}, (dict,), help="options of the transform preset (see lilaw_med.data.transforms)"),
        "cache": Field("none", (str,), choices=("none", "memory", "disk"), help="dataset caching"),
        "cache_dir": Field(None, (str,), nullable=True, help="folder of the disk cache (null: RUN_DIR/cache)"),
        "skip_bad": Field(False, (bool,), help="drop items the pre-flight check rejects instead of stopping"),
        "exclude": Field(None, (str,), nullable=True, help="CSV of item ids to exclude (from `lilaw-med audit`)"),
        "relabel": Field(None, (str,), nullable=True, help="CSV of item ids and new labels"),
        "max_items": Field(
            None, (int,), nullable=True, minimum=1, help="keep at most this many items per split (quick runs)"
        ),
    },
    "model": {
        "network": Field("small_cnn", (str,), choices=NETWORKS, help="network architecture"),
        "spatial_dims": Field(None, (int,), choices=(2, 3), nullable=True, help="2 or 3 (null: from preset)"),
        "in_channels": Field(None, (int,), minimum=1, nullable=True, help="input channels (null: from preset)"),
        "pretrained": Field(False, (bool,), help="load pretrained weights from model.weights (local files only)"),
        "weights": Field(None, (str,), nullable=True, help="local file of pretrained weights (state dict)"),
        "channels_last": Field("auto", (str, bool), choices=("auto", True, False), help="channels-last memory format"),
        "dropout": Field(0.0, _NUM, minimum=0.0, maximum=0.9, help="dropout before the classifier (small_cnn)"),
    },
    "loss": {
        "name": Field("ce", (str,), choices=LOSSES, help="per-sample loss that LiLAW weights"),
        "focal_gamma": Field(2.0, _NUM, minimum=0.0, help="focal loss gamma"),
        "gce_q": Field(0.7, _NUM, minimum=0.0, maximum=1.0, exclusive_minimum=True, help="GCE exponent q"),
        "sce_alpha": Field(0.1, _NUM, minimum=0.0, help="SCE weight of CE"),
        "sce_beta": Field(1.0, _NUM, minimum=0.0, help="SCE weight of reverse CE"),
        "class_balance": Field(
            "none", (str,), choices=("none", "weights", "sampler"),
            help="imbalance handling: inverse-frequency class weights or a class-balanced sampler",
        ),
        "class_weights": Field(None, (list,), nullable=True, item_types=_NUM, help="explicit class weights"),
    },
    "lilaw": {
        "enabled": Field(True, (bool,), help="false: the plain baseline, everything else identical"),
        "alpha": Field(_signature_default(_W, "alpha"), _NUM, help="initial alpha ('easy')"),
        "beta": Field(_signature_default(_W, "beta"), _NUM, help="initial beta ('hard')"),
        "delta": Field(_signature_default(_W, "delta"), _NUM, help="initial delta ('moderate')"),
        "alpha_min": Field(_signature_default(_W, "alpha_min"), _NUM, help="lower clamp of alpha"),
        "lr": Field(
            _signature_default(_H, "lr"), _NUM, minimum=0.0, exclusive_minimum=True, help="meta step learning rate"
        ),
        "weight_decay": Field(_signature_default(_H, "weight_decay"), _NUM, minimum=0.0, help="meta step weight decay"),
        "warmup_epochs": Field(
            _signature_default(_L, "warmup_epochs"), (int,), minimum=0, help="epochs trained unweighted first"
        ),
        "val_mode": Field(
            _signature_default(_H, "val_mode"), (str,), choices=("eval", "train"),
            help="network mode of the meta step's validation forward",
        ),
        "detach_weights": Field(
            _signature_default(_L, "detach_weights"), (bool,), help="treat w as a constant in the model step"
        ),
        "val_batch_size": Field(None, (int,), minimum=1, nullable=True, help="meta batch size (null: train.batch_size)"),
    },
    "optim": {
        "name": Field("adam", (str,), choices=("adam", "adamw", "sgd"), help="optimizer of the network"),
        "lr": Field(1e-3, _NUM, minimum=0.0, exclusive_minimum=True, help="learning rate"),
        "weight_decay": Field(1e-4, _NUM, minimum=0.0, help="weight decay"),
        "momentum": Field(0.9, _NUM, minimum=0.0, maximum=1.0, help="SGD momentum"),
        "nesterov": Field(False, (bool,), help="SGD Nesterov momentum"),
    },
    "schedule": {
        "name": Field("none", (str,), choices=("none", "cosine", "step"), help="learning-rate schedule (per epoch)"),
        "warmup_epochs": Field(0, (int,), minimum=0, help="linear learning-rate warm-up epochs"),
        "step_size": Field(10, (int,), minimum=1, help="epochs between decays (step)"),
        "gamma": Field(0.1, _NUM, minimum=0.0, exclusive_minimum=True, help="decay factor (step)"),
        "min_lr": Field(0.0, _NUM, minimum=0.0, help="final learning rate (cosine)"),
    },
    "train": {
        "epochs": Field(10, (int,), minimum=1, help="training epochs"),
        "batch_size": Field(64, (int,), minimum=1, help="training batch size"),
        "seed": Field(0, (int,), minimum=0, help="random seed (network init, shuffles, augmentations)"),
        "device": Field("auto", (str,), help="auto (CUDA when present), cpu, cuda or cuda:N"),
        "amp": Field("auto", (str, bool), choices=("auto", True, False), help="mixed precision (auto: on for CUDA)"),
        "num_workers": Field(0, (int,), minimum=0, help="data-loader worker processes"),
        "deterministic": Field(True, (bool,), help="seed every RNG (reproducible CPU runs)"),
        "checkpoint_every_n_epochs": Field(1, (int,), minimum=1, nullable=True, help="checkpoint interval in epochs"),
        "checkpoint_every_n_iterations": Field(
            None, (int,), minimum=1, nullable=True, help="checkpoint interval in iterations (null: off)"
        ),
        "keep_last": Field(2, (int,), minimum=1, help="checkpoints kept"),
        "progress": Field(True, (bool,), help="show a progress bar"),
        "sync_batchnorm": Field(
            False, (bool,), help="distributed (torchrun) on CUDA: synchronise batch-norm statistics across ranks"
        ),
    },
    "eval": {
        "key_metric": Field("auroc", (str,), choices=KEY_METRICS, help="metric that selects the best checkpoint"),
        "interval": Field(1, (int,), minimum=1, help="validate every N epochs"),
        "calibration": Field(
            "none", (str,), choices=("none", "temperature", "threshold"),
            help="fit a temperature (any task) or a decision threshold (binary) on the noisy validation split",
        ),
        "ece_bins": Field(15, (int,), minimum=2, help="bins of the expected calibration error"),
        "test_each_epoch": Field(False, (bool,), help="also evaluate the test split every epoch (monitoring only)"),
    },
    "output": {
        "dir": Field("runs", (str,), help="parent folder of run folders"),
        "name": Field(None, (str,), nullable=True, help="run folder name (null: PRESET-YYYYmmdd-HHMMSS)"),
        "plots": Field(True, (bool,), help="write PNG plots"),
        "tensorboard": Field("auto", (str, bool), choices=("auto", True, False), help="TensorBoard logs"),
        "overwrite": Field(False, (bool,), help="allow writing into an existing non-empty run folder"),
    },
}


def default_config() -> dict[str, dict[str, Any]]:
    """Every field at its default value.

    Returns:
        A new nested dict ``{section: {key: value}}``.
    """
    return {s: {k: copy.deepcopy(f.default) for k, f in fields.items()} for s, fields in SCHEMA.items()}


def _suggest(name: str, valid: Iterable[str]) -> str:
    match = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f"; did you mean '{match[0]}'?" if match else f"; valid keys: {', '.join(sorted(valid))}."


def _type_name(types: tuple[type, ...]) -> str:
    names = {int: "integer", float: "number", str: "string", bool: "boolean", list: "list", dict: "mapping"}
    return " or ".join(dict.fromkeys(names.get(t, t.__name__) for t in types))


def _check_value(path: str, spec: Field, value: Any) -> Any:
    """Checks (and lightly normalises: int -> float for numbers) one value; raises ConfigError."""
    if value is None:
        if spec.nullable:
            return None
        raise ConfigError(f"config field '{path}' must not be null (expected {_type_name(spec.types)}).")
    if isinstance(value, bool) and bool not in spec.types:
        raise ConfigError(f"config field '{path}' must be {_type_name(spec.types)} but is the boolean {value}.")
    if not isinstance(value, spec.types):
        raise ConfigError(
            f"config field '{path}' must be {_type_name(spec.types)} but is {type(value).__name__} {value!r}."
        )
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(
            f"config field '{path}' must be one of {list(spec.choices)} but is {value!r}"
            + (_suggest(value, [str(c) for c in spec.choices]) if isinstance(value, str) else ".")
        )
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            raise ConfigError(f"config field '{path}' must be finite but is {value}.")
        if spec.minimum is not None:
            too_low = value <= spec.minimum if spec.exclusive_minimum else value < spec.minimum
            if too_low:
                op = ">" if spec.exclusive_minimum else ">="
                raise ConfigError(f"config field '{path}' must be {op} {spec.minimum} but is {value}.")
        if spec.maximum is not None and value > spec.maximum:
            raise ConfigError(f"config field '{path}' must be <= {spec.maximum} but is {value}.")
        if float in spec.types and int in spec.types:
            value = float(value)
    if isinstance(value, list) and spec.item_types is not None:
        for i, item in enumerate(value):
            if isinstance(item, bool) or not isinstance(item, spec.item_types):
                raise ConfigError(
                    f"config field '{path}[{i}]' must be {_type_name(spec.item_types)} but is {item!r}."
                )
    return copy.deepcopy(value)


def _check_options(preset: str, options: Mapping[str, Any]) -> None:
    """Checks ``data.options`` keys against the preset's documented options, when known."""
    try:
        from lilaw_med.data.transforms import preset_defaults
    except ImportError:  # the data package is optional at validation time
        return
    try:
        valid = preset_defaults(preset)
    except (NotImplementedError, ValueError, KeyError):
        return
    for key in options:
        if key not in valid:
            raise ConfigError(f"config key 'data.options.{key}' is unknown for preset '{preset}'" + _suggest(key, valid))


def validate_config(config: Mapping[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Validates a config and fills every default.

    Args:
        config: a nested mapping (e.g. from ``yaml.safe_load``); ``None`` means all defaults.

    Returns:
        A new, complete config dict.

    Raises:
        ConfigError: on an unknown section or key (with the closest valid name), a wrong type, a
            value outside its range or choices, or inconsistent fields.
    """
    config = {} if config is None else config
    if not isinstance(config, Mapping):
        raise ConfigError(f"a config must be a mapping of sections but is {type(config).__name__}.")
    out = default_config()
    for section, values in config.items():
        if section not in SCHEMA:
            raise ConfigError(f"config section '{section}' is unknown" + _suggest(str(section), SCHEMA))
        if values is None:
            continue
        if not isinstance(values, Mapping):
            raise ConfigError(f"config section '{section}' must be a mapping but is {type(values).__name__}.")
        for key, value in values.items():
            fields = SCHEMA[section]
            if key not in fields:
                raise ConfigError(f"config key '{section}.{key}' is unknown" + _suggest(str(key), fields))
            out[section][key] = _check_value(f"{section}.{key}", fields[key], value)
    _check_consistency(out)
    return out


def _check_consistency(cfg: dict[str, dict[str, Any]]) -> None:
    data, model, loss, lilaw = cfg["data"], cfg["model"], cfg["loss"], cfg["lilaw"]
    if data["datalist"] is None and not data["sample_data"]:
        raise ConfigError("config field 'data.datalist' is required (or set 'data.sample_data: true').")
    if lilaw["alpha"] < lilaw["alpha_min"]:
        raise ConfigError(f"config field 'lilaw.alpha' must be >= lilaw.alpha_min={lilaw['alpha_min']} but is {lilaw['alpha']}.")
    if lilaw["delta"] < lilaw["beta"]:
        raise ConfigError(f"config field 'lilaw.delta' must be >= lilaw.beta={lilaw['beta']} but is {lilaw['delta']}.")
    if data["multi_label"] and loss["name"] != "bce":
        raise ConfigError(f"config field 'loss.name' must be 'bce' when data.multi_label is true but is '{loss['name']}'.")
    if model["pretrained"] and not model["weights"]:
        raise ConfigError(
            "config field 'model.weights' must name a local weights file when model.pretrained is true "
            "(weights are never downloaded)."
        )
    if loss["class_balance"] != "none" and data["multi_label"]:
        raise ConfigError("config field 'loss.class_balance' must be 'none' for multi-label data.")
    _check_options(data["preset"], data["options"])


def _yaml_problem(e: yaml.YAMLError) -> str:
    """A one-line description of a YAML error (with its line when known)."""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else str(problem)


def parse_override(text: str) -> tuple[str, Any]:
    """Parses one ``--set`` override ``section.key[.sub]=value``.

    The value is read with ``yaml.safe_load`` (``1`` -> int, ``true`` -> bool, ``[32, 32]`` -> list,
    ``null`` -> None); no code is ever evaluated.

    Args:
        text: e.g. ``"train.epochs=1"``.

    Returns:
        ``(dotted_key, value)``.

    Raises:
        ConfigError: when there is no ``=`` or the key is empty.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like section.key=value (e.g. train.epochs=1).")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {text!r}: the value is not valid YAML ({_yaml_problem(e)}).") from None
    return key, value


def apply_overrides(config: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies ``--set`` overrides to a (raw or validated) config.

    Args:
        config: the config to start from (not modified).
        overrides: strings ``section.key[.sub...]=value``.

    Returns:
        A new config dict with the overrides set (validate it afterwards).

    Raises:
        ConfigError: on a malformed override or a path through a non-mapping.
    """
    out: dict[str, Any] = copy.deepcopy(dict(config))
    for text in overrides:
        key, value = parse_override(text)
        parts = key.split(".")
        if len(parts) < 2:
            raise ConfigError(f"override {text!r} must name a section and a key (e.g. train.epochs=1).")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: '{'.'.join(parts[: i + 1])}' is not a mapping.")
            node = child
        node[parts[-1]] = value
    return out


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Reads a YAML config (safe-loaded), applies overrides, validates and fills defaults.

    Args:
        path: the YAML file; ``None`` starts from the defaults.
        overrides: ``--set`` strings applied after reading.

    Returns:
        The complete, validated config.

    Raises:
        FileNotFoundError: when ``path`` does not exist.
        ConfigError: when the file is not YAML or the config is invalid (the message names the file).
    """
    raw: Any = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {_yaml_problem(e)}") from None
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: a config must be a mapping of sections but is {type(raw).__name__}.")
    try:
        return validate_config(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}" if path is not None else str(e)) from None


def dump_config(config: Mapping[str, Any]) -> str:
    """The config as YAML text (section order of the schema)."""
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
    """Reads a preset YAML shipped inside the package (``lilaw_med.configs``), applies overrides, validates.

    Args:
        filename: e.g. ``"radiology_2d.yaml"``.
        overrides: ``--set`` strings.

    Returns:
        The complete, validated config.

    Raises:
        FileNotFoundError: when the package holds no such file.
        ConfigError: when an override makes it invalid.
    """
    import importlib.resources

    resource = importlib.resources.files("lilaw_med.configs").joinpath(filename)
    if not resource.is_file():
        raise FileNotFoundError(f"no packaged preset config {filename!r} in lilaw_med.configs.")
    raw = yaml.safe_load(resource.read_text(encoding="utf-8")) or {}
    try:
        return validate_config(apply_overrides(raw, overrides))
    except ConfigError as e:
        raise ConfigError(f"{filename}: {e}") from None
