"""What a bundle is exported from: the config (file paths made absolute, checked for MONAI's config
syntax) and the network, described by the config or read from a finished run with its weights.

Example::

    spec, weights = model_spec_from_run("runs/my-run")
    print(spec.network, spec.class_names, len(weights))
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from lilaw_med.errors import InputError
from lilaw_med.run.config import Config, config_differences
from lilaw_med.run.model_file import model_file, read_model_file
from lilaw_med.run.run_dir import RunDir
from lilaw_med.run.summary import RunSummary
from lilaw_med.run.transforms import transform_options
from lilaw_med.training.data import prepare_datalist
from lilaw_med.training.model import input_shape, model_shape

__all__ = [
    "PATH_FIELDS",
    "ModelSpec",
    "absolute_paths",
    "check_no_config_syntax",
    "from_run",
    "input_spatial_shape",
    "model_spec_from_config",
    "model_spec_from_run",
]

logger = logging.getLogger(__name__)

# config fields holding file paths: made absolute at export so the bundle runs from any folder
PATH_FIELDS = (
    ("data", "datalist"),
    ("data", "sample_dir"),
    ("data", "cache_dir"),
    ("data", "exclude"),
    ("data", "relabel"),
    ("model", "weights"),
)


@dataclass
class ModelSpec:
    """The network of a bundle and what its outputs mean.

    Attributes:
        network: a key of :data:`lilaw_med.networks.NETWORKS`.
        spatial_dims: 2 or 3.
        in_channels: image channels.
        num_outputs: network outputs (classes; 1 for a single binary logit; labels for multi-label).
        class_names: one name per class (per label for multi-label).
        multi_label: independent sigmoid outputs.
        dropout: the network's dropout (``small_cnn``).
    """

    network: str
    spatial_dims: int
    in_channels: int
    num_outputs: int
    class_names: list[str]
    multi_label: bool = False
    dropout: float = 0.0

    def network_def(self) -> dict[str, Any]:
        """The bundle's ``network_def`` component (full dotted ``_target_``)."""
        return {
            "_target_": "lilaw_med.networks.build_network",
            "name": self.network,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": self.num_outputs,
            "dropout": self.dropout,
        }


def absolute_paths(cfg: Mapping[str, Any], base: Path) -> dict[str, Any]:
    """A copy of ``cfg`` whose file paths (:data:`PATH_FIELDS`) are absolute, relative ones taken from ``base``."""
    out = copy.deepcopy(dict(cfg))
    for section, key in PATH_FIELDS:
        value = out.get(section, {}).get(key)
        if isinstance(value, str) and value:
            out[section][key] = str((base / Path(value).expanduser()).absolute())
    return out


def check_no_config_syntax(node: Any, path: str = "lilaw_config") -> None:
    """MONAI reads strings starting with ``$``, ``@`` or ``%`` as code or references."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            check_no_config_syntax(v, f"{path}#{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            check_no_config_syntax(v, f"{path}#{i}")
    elif isinstance(node, str) and node[:1] in ("$", "@", "%"):
        raise InputError(
            f"config value {path}={node!r} starts with {node[0]!r}, which a MONAI bundle config reads as "
            "code or a reference: rename the file or folder (or set the value on the command line)."
        )



def input_spatial_shape(config: Mapping[str, Any], spatial_dims: int) -> list[int | str]:
    """The network's input size: the ``spatial_size`` transform option (``data.options`` over the
    preset's defaults), for the metadata and MONAI's ``verify_net_in_out``.

    Args:
        config: a validated config.
        spatial_dims: 2 or 3.

    Returns:
        ``[H, W]`` or ``[H, W, D]``; ``"*"`` (any size, the specification's wildcard) per dimension
        when the preset keeps the images' own size (e.g. ``spatial_size: null`` for pathology
        tiles): every lilaw-med network pools globally, so it accepts any size.
    """
    size = transform_options(config)["spatial_size"]
    if isinstance(size, int) and not isinstance(size, bool):
        return [size] * spatial_dims
    if isinstance(size, (list, tuple)) and len(size) == spatial_dims and all(isinstance(v, int) for v in size):
        return [int(v) for v in size]
    logger.info("preset '%s' keeps the images' own size: input spatial_shape is '*' (any size)", config["data"]["preset"])
    return ["*"] * spatial_dims


def model_spec_from_config(config: Mapping[str, Any], datalist: Any = None) -> ModelSpec:
    """The network a config trains (:func:`lilaw_med.training.model.model_shape`), with its classes
    read from the config's datalist.

    Args:
        config: a validated config.
        datalist: the prepared datalist (``None``: :func:`lilaw_med.training.data.prepare_datalist`).

    Returns:
        The :class:`ModelSpec`.
    """
    cfg = Config.from_mapping(config)
    if datalist is None:
        datalist = prepare_datalist(cfg)
    names = [str(n) for n in (datalist.class_names or range(datalist.num_classes))]
    shape = model_shape(cfg, len(names))
    return ModelSpec(
        network=cfg.model.network,
        spatial_dims=shape.spatial_dims,
        in_channels=shape.in_channels,
        num_outputs=shape.num_outputs,
        class_names=names,
        multi_label=bool(cfg.data.multi_label),
        dropout=float(cfg.model.dropout),
    )


def model_spec_from_run(run_dir: str | os.PathLike, dropout: float = 0.0) -> tuple[ModelSpec, dict[str, torch.Tensor]]:
    """The network of a finished run and its weights (the best checkpoint, else the final one).

    Args:
        run_dir: a run folder written by :func:`lilaw_med.training.run.run_training`.
        dropout: the config's ``model.dropout``.

    Returns:
        ``(spec, state_dict)``.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: when the checkpoint cannot be loaded or lacks the network description (one line).
    """
    ckpt = read_model_file(model_file(Path(run_dir)))
    n = int(ckpt["num_outputs"])
    names = [str(c) for c in ckpt.get("class_names") or []] or [str(i) for i in range(max(n, 2))]
    spec = ModelSpec(
        network=str(ckpt["network_name"]),
        spatial_dims=int(ckpt["spatial_dims"]),
        in_channels=int(ckpt["in_channels"]),
        num_outputs=n,
        class_names=names,
        multi_label=bool(ckpt.get("multi_label", False)),
        dropout=dropout,
    )
    return spec, ckpt["network"]


def from_run(
    cfg: Mapping[str, Any], run_dir: str | os.PathLike
) -> tuple[ModelSpec, dict[str, torch.Tensor], RunSummary]:
    """``(spec, weights, summary)`` of a finished run, checked against the config being exported.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: when the run's network differs from the config's.
    """
    spec, state_dict = model_spec_from_run(run_dir, dropout=float(cfg["model"]["dropout"]))
    described = (cfg["model"]["network"], *input_shape(cfg))
    if described != (spec.network, spec.spatial_dims, spec.in_channels):
        raise InputError(
            f"run {run_dir} trained {spec.network} ({spec.spatial_dims}D, {spec.in_channels} channel(s)) but the "
            f"config describes {described[0]} ({described[1]}D, {described[2]} channel(s)): export the run with "
            f"its own {RunDir.CONFIG}."
        )
    run = RunDir(run_dir)
    if run.config.is_file():
        # read_config: a key added since the run was written compares with the run's own behaviour
        own = absolute_paths(Config.from_mapping(run.read_config()).to_dict(), run.root.absolute())
        given = copy.deepcopy(dict(cfg))
        if given["data"]["datalist"] == os.path.abspath(run.datalist):
            given["data"]["datalist"] = own["data"]["datalist"]  # the run's datalist.json is the run's own data
        if given["data"]["datalist"] and own["data"]["datalist"]:
            given["data"]["sample_dir"] = own["data"]["sample_dir"]  # not read when a datalist is given
        differences = list(config_differences(given, own))
        if differences:
            logger.warning(
                "the bundle's train.yaml follows the given config, which differs from the run's %s in %s: "
                "export with --config %s to reproduce the run.", run.config, ", ".join(differences), run.config,
            )
    return spec, state_dict, RunSummary.read(run_dir)


