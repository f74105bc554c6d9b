"""Exports a lilaw-med config (and optionally a trained run) as a MONAI bundle.

The bundle's folder::

    OUT_DIR/
      configs/metadata.json      every mandatory key of the MONAI Bundle Specification
      configs/train.yaml         trains with LiLAW: ``python -m monai.bundle run --config_file configs/train.yaml``
      configs/evaluate.yaml      metrics of models/model.pt on the test split (MONAI SupervisedEvaluator)
      configs/inference.yaml     predictions for image files (MONAI SupervisedEvaluator + ClassificationSaver)
      configs/multi_gpu_train.yaml   torchrun override of train.yaml (DDP, one process per GPU)
      configs/logging.conf       MONAI's standard logging config (INFO to stdout), applied by ``monai.bundle run``
      configs/datalist.json      the resolved items (ids, labels, splits), image paths relative to ``dataset_dir``
      docs/README.md             what the model is, the exact commands
      LICENSE
      models/model.pt            the network's state dict (when a run is given, or after training)

How ``train.yaml`` gives the same results as ``lilaw-med train`` on the same config and seed: it
embeds the complete, validated config (``lilaw_config``; every default filled in, relative paths
made absolute) and its ``training`` component is :func:`lilaw_med.training.run.run_training`
called with it, the very function the CLI calls after reading the same config. Nothing is rebuilt
from bundle-side components, so the two paths cannot drift apart. ``network_def`` (the network from
:func:`lilaw_med.training.networks.build_network` with the run's arguments) is what MONAI's
``verify_net_in_out``, ``ckpt_export`` and the evaluate/inference configs instantiate.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import yaml

from lilaw_med.bundle.metadata import build_metadata, missing_metadata_keys
from lilaw_med.data.presets import get_preset
from lilaw_med.training.config import Config, load_config, validate_config
from lilaw_med.training.data import prepare_datalist, transform_options
from lilaw_med.training.model import input_shape, model_shape
from lilaw_med.training.run_dir import RunDir
from lilaw_med.utils import atomic_save_torch, atomic_write

__all__ = [
    "BundleExport",
    "ModelSpec",
    "copy_overlay",
    "evaluate_config",
    "export_bundle",
    "inference_config",
    "input_spatial_shape",
    "bundle_datalist",
    "install_model",
    "load_bundle_datalist",
    "log_final_metrics",
    "model_spec_from_config",
    "multi_gpu_config",
    "model_spec_from_run",
    "train_config",
]

logger = logging.getLogger(__name__)

# config fields holding file paths: made absolute at export so the bundle runs from any folder
_PATH_FIELDS = (
    ("data", "datalist"),
    ("data", "sample_dir"),
    ("data", "cache_dir"),
    ("data", "exclude"),
    ("data", "relabel"),
    ("model", "weights"),
)
_MULTI_GPU = "multi_gpu_train.yaml"

# configs/logging.conf: the standard file of MONAI model-zoo bundles. `monai.bundle run` applies
# configs/logging.conf by default (and warns when it is missing); INFO to stdout, so the bundle's
# training and evaluation logs are seen. Only stdlib classes and `sys.stdout`: MONAI refuses others.
_LOGGING_CONF = """\
[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""


@dataclass
class ModelSpec:
    """The network of a bundle and what its outputs mean.

    Attributes:
        network: a key of :data:`lilaw_med.training.networks.NETWORKS`.
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
            "_target_": "lilaw_med.training.networks.build_network",
            "name": self.network,
            "spatial_dims": self.spatial_dims,
            "in_channels": self.in_channels,
            "num_classes": self.num_outputs,
            "dropout": self.dropout,
        }


@dataclass
class BundleExport:
    """What :func:`export_bundle` wrote.

    Attributes:
        root: the bundle folder.
        files: every file written, relative to ``root``.
        metadata: the content of ``configs/metadata.json``.
        model: the network and its classes.
    """

    root: Path
    files: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    model: ModelSpec | None = None


# ---------------------------------------------------------------------------------------- helpers
def _absolute_paths(cfg: dict[str, Any], base: Path) -> dict[str, Any]:
    out = copy.deepcopy(cfg)
    for section, key in _PATH_FIELDS:
        value = out.get(section, {}).get(key)
        if isinstance(value, str) and value:
            out[section][key] = str((base / Path(value).expanduser()).absolute())
    return out


def _check_no_config_syntax(node: Any, path: str = "lilaw_config") -> None:
    """MONAI reads strings starting with ``$``, ``@`` or ``%`` as code or references."""
    if isinstance(node, Mapping):
        for k, v in node.items():
            _check_no_config_syntax(v, f"{path}#{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            _check_no_config_syntax(v, f"{path}#{i}")
    elif isinstance(node, str) and node[:1] in ("$", "@", "%"):
        raise ValueError(
            f"config value {path}={node!r} starts with {node[0]!r}, which a MONAI bundle config reads as "
            "code or a reference: rename the file or folder (or set the value on the command line)."
        )


def _differences(a: Any, b: Any, path: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested config dicts."""
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        out: list[str] = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{path}.{key}" if path else str(key))
        return out
    return [] if a == b else [path]


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


def _run_checkpoint(run_dir: Path) -> Path:
    rd = RunDir(run_dir)
    for path in (rd.best_model, rd.final_model):
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{rd.root}: no model checkpoint ({RunDir.CHECKPOINTS}/{RunDir.BEST_MODEL} or {RunDir.FINAL_MODEL}); "
        "is it a finished lilaw-med run folder?"
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
    from lilaw_med.training.model import read_model_file

    ckpt = read_model_file(_run_checkpoint(Path(run_dir)))
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


def install_model(run_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Writes a run's best network weights (else its final ones) as a plain state dict: the
    ``models/model.pt`` that MONAI's ``CheckpointLoader`` and ``ckpt_export`` read.

    Args:
        run_dir: a finished run folder, or the :class:`~lilaw_med.training.run.RunResult` of one.
        dest: the destination file.

    Returns:
        ``dest``.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: when it cannot be loaded (one line).
    """
    run_dir = getattr(run_dir, "run_dir", run_dir)  # a RunResult from the bundle's training step
    from lilaw_med.training.model import read_model_file

    ckpt = read_model_file(_run_checkpoint(Path(run_dir)))
    atomic_save_torch({k: v.detach().cpu() for k, v in ckpt["network"].items()}, dest)
    logger.info("installed the network weights of %s as %s", run_dir, dest)
    return Path(dest)


def log_final_metrics(result: Any) -> None:
    """Logs one line with the final metrics of a bundle's training run (the last step of
    ``train.yaml``; ``monai.bundle run`` shows it through ``configs/logging.conf``). Ranks other
    than 0 of a distributed run have no summary and log nothing.

    Args:
        result: the :class:`~lilaw_med.training.run.RunResult` of the ``training`` component.
    """
    summary = getattr(result, "summary", None) or {}
    if not summary:
        return
    parts = []
    for which in ("best", "final"):
        for split, metrics in (summary.get(which) or {}).items():
            values = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("auroc", "accuracy") if isinstance(metrics.get(k), float))
            if values:
                parts.append(f"{which} {split}: {values}")
    lilaw = summary.get("lilaw") or {}
    scalars = ", ".join(f"{k} {lilaw[k]:.4f}" for k in ("alpha", "beta", "delta") if isinstance(lilaw.get(k), float))
    logger.info(
        "final metrics: %s%s; run folder %s", "; ".join(parts) or "none",
        f"; LiLAW {scalars}" if scalars else "", getattr(result, "run_dir", "?"),
    )


def bundle_datalist(datalist: Any) -> tuple[dict[str, Any], str]:
    """The datalist a bundle ships (``configs/datalist.json``): the resolved items with their image
    paths relative to their common folder, and that folder (``dataset_dir`` of ``evaluate.yaml``).

    Args:
        datalist: a resolved :class:`~lilaw_med.data.datalist.Datalist` (absolute image paths).

    Returns:
        ``(json_dict, data_root)``.
    """
    content = datalist.to_json_dict()
    content.pop("noise_sidecar", None)  # a file of the exporting machine
    images = [it["image"] for split in ("training", "validation", "test") for it in content[split]
              if isinstance(it.get("image"), str)]
    root = os.path.commonpath([os.path.dirname(p) for p in images]) if images else ""
    for split in ("training", "validation", "test"):
        for item in content[split]:
            if isinstance(item.get("image"), str) and root:
                item["image"] = Path(os.path.relpath(item["image"], root)).as_posix()
    return content, root


def load_bundle_datalist(path: str | os.PathLike, dataset_dir: str | os.PathLike, lilaw_config: Mapping[str, Any]) -> Any:
    """Reads a bundle's ``configs/datalist.json`` with its image paths under ``dataset_dir``.

    Args:
        path: the bundle's datalist.
        dataset_dir: the folder the images' relative paths start from (``--dataset_dir``).
        lilaw_config: the embedded config (class names, multi-label).

    Returns:
        The :class:`~lilaw_med.data.datalist.Datalist`.

    Raises:
        FileNotFoundError: when ``dataset_dir`` is not a folder (the message names the override).
    """
    from lilaw_med.data.datalist import load_datalist

    if not Path(dataset_dir).is_dir():
        raise FileNotFoundError(
            f"dataset_dir {dataset_dir} is not a folder: pass --dataset_dir with the folder that holds the images "
            "(the paths in configs/datalist.json are relative to it)."
        )
    data = lilaw_config["data"]
    return load_datalist(path, class_names=data.get("class_names"), multi_label=bool(data.get("multi_label")),
                         base_dir=dataset_dir, strict=False)


# ---------------------------------------------------------------------------------------- configs
_HEADER = """\
# MONAI bundle config written by `lilaw-med bundle export` (lilaw-med {version}).
# Components are lilaw-med functions and classes referenced by their full dotted paths.
{body}
"""


def _yaml(content: Mapping[str, Any], comment: str) -> str:
    body = "\n".join(f"# {line}" if line else "#" for line in comment.strip().splitlines())
    from lilaw_med import __version__

    return _HEADER.format(version=__version__, body=body) + "\n" + yaml.safe_dump(
        dict(content), sort_keys=False, default_flow_style=False, width=110
    )


def _common(spec: ModelSpec, lilaw_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "imports": [
            "$import glob", "$import os", "$import torch", "$import lilaw_med", "$import lilaw_med.bundle.export",
            "$import lilaw_med.training.data", "$import lilaw_med.training.run",
        ],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "ckpt_path": "$@ckpt_dir + '/model.pt'",
        "lilaw_config": copy.deepcopy(dict(lilaw_config)),
        "network_def": spec.network_def(),
    }


def train_config(spec: ModelSpec, lilaw_config: Mapping[str, Any]) -> dict[str, Any]:
    """``configs/train.yaml``: :func:`~lilaw_med.training.run.run_training` on the embedded config."""
    cfg = _common(spec, lilaw_config)
    cfg.update(
        {
            # the lilaw-med run folder (metrics, LiLAW scalars, checkpoints, dynamics for `lilaw-med audit`)
            "output_dir": "$@bundle_root + '/runs/train'",
            "training": {
                "_target_": "lilaw_med.training.run.run_training",
                "config": "@lilaw_config",
                "output_dir": "@output_dir",
                # a line per epoch (a bar on a terminal) through the bundle's logging.conf
                "progress": True,
            },
            "run": [
                "$@training",
                "$lilaw_med.bundle.export.install_model(@output_dir, @ckpt_path)",
                "$lilaw_med.bundle.export.log_final_metrics(@training)",
            ],
        }
    )
    return cfg


def _preprocessing(lilaw_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "_target_": "lilaw_med.data.transforms.build_transforms",
        "preset": lilaw_config["data"]["preset"],
        "options": copy.deepcopy(dict(lilaw_config["data"]["options"])),
        "train": False,
    }


def _postprocessing(spec: ModelSpec, with_label: bool) -> dict[str, Any]:
    sigmoid = spec.multi_label or spec.num_outputs == 1
    transforms: list[dict[str, Any]] = [
        {"_target_": "monai.transforms.Activationsd", "keys": "pred", "sigmoid": sigmoid, "softmax": not sigmoid}
    ]
    if with_label and not sigmoid:
        transforms.append({"_target_": "monai.transforms.AsDiscreted", "keys": "label", "to_onehot": spec.num_outputs})
    return {"_target_": "monai.transforms.Compose", "transforms": transforms}


def evaluate_config(spec: ModelSpec, lilaw_config: Mapping[str, Any], data_root: str | None = None) -> dict[str, Any]:
    """``configs/evaluate.yaml``: AUROC and accuracy of ``models/model.pt`` on a split of the bundle's
    datalist (``configs/datalist.json``, image paths relative to ``dataset_dir``, default ``data_root``);
    with ``data_root=None`` (no datalist shipped), of the embedded config's datalist."""
    cfg = _common(spec, lilaw_config)
    batch_size = int(lilaw_config["train"]["batch_size"])
    multi_class = not (spec.multi_label or spec.num_outputs == 1)
    key_metric: dict[str, Any] = {
        "auroc": {
            "_target_": "monai.handlers.ROCAUC",
            "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
        }
    }
    additional: dict[str, Any] = {}
    if spec.num_outputs == 1 and not spec.multi_label:
        # one sigmoid output: P(class 1) > 0.5 against the 0/1 labels (ignite's binary accuracy)
        additional["accuracy"] = {
            "_target_": "ignite.metrics.Accuracy",
            "output_transform": "$lambda out: (torch.cat([(o['pred'] > 0.5).long().reshape(-1) for o in out]), "
            "torch.cat([torch.as_tensor(o['label']).long().reshape(-1) for o in out]))",
        }
    elif multi_class:
        # probabilities (N, C) against class indices (N,): ignite's multi-class accuracy
        additional["accuracy"] = {
            "_target_": "ignite.metrics.Accuracy",
            "output_transform": "$lambda out: (torch.stack([o['pred'] for o in out]), "
            "torch.stack([o['label'].argmax(0) for o in out]))",
        }
    cfg.update(
        {
            "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
            "output_dir": "$@bundle_root + '/eval'",
            "split": "test",
            # the bundle's own datalist (configs/datalist.json), its image paths relative to dataset_dir:
            # a bundle copied to another machine evaluates with --dataset_dir /where/the/images/are
            **({"datalist": "$lilaw_med.training.data.prepare_datalist(@lilaw_config)"} if data_root is None else {
                "dataset_dir": data_root,
                "datalist": "$lilaw_med.bundle.export.load_bundle_datalist("
                "@bundle_root + '/configs/datalist.json', @dataset_dir, @lilaw_config)",
            }),
            "network": "$@network_def.to(@device)",
            "preprocessing": _preprocessing(lilaw_config),
            "dataset": {"_target_": "monai.data.Dataset", "data": "$getattr(@datalist, @split)", "transform": "@preprocessing"},
            "dataloader": {
                "_target_": "monai.data.DataLoader",
                "dataset": "@dataset",
                "batch_size": batch_size,
                "shuffle": False,
                "num_workers": 0,
            },
            "inferer": {"_target_": "monai.inferers.SimpleInferer"},
            "postprocessing": _postprocessing(spec, with_label=True),
            "handlers": [
                {"_target_": "monai.handlers.CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
                 "map_location": "@device"},
                {"_target_": "monai.handlers.StatsHandler", "iteration_log": False},
                {"_target_": "monai.handlers.MetricsSaver", "save_dir": "@output_dir", "metrics": "*",
                 "metric_details": None, "summary_ops": None},
            ],
            "key_metric": key_metric,
            "additional_metrics": additional,
            "evaluator": {
                "_target_": "monai.engines.SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@dataloader",
                "network": "@network",
                "inferer": "@inferer",
                "postprocessing": "@postprocessing",
                "key_val_metric": "@key_metric",
                "additional_metrics": "@additional_metrics",
                "val_handlers": "@handlers",
                "decollate": True,
            },
            "run": ["$@evaluator.run()"],
        }
    )
    return cfg


def inference_config(spec: ModelSpec, lilaw_config: Mapping[str, Any]) -> dict[str, Any]:
    """``configs/inference.yaml``: class probabilities of every image file in ``dataset_dir``."""
    cfg = _common(spec, lilaw_config)
    cfg.update(
        {
            "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
            "output_dir": "$@bundle_root + '/eval'",
            "dataset_dir": "/workspace/data",
            "pattern": "*",
            # one item per file (or DICOM series folder) of dataset_dir; override with --datalist "[...]"
            "datalist": "$[{'image': p, 'id': os.path.basename(p)} "
            "for p in sorted(glob.glob(os.path.join(@dataset_dir, @pattern)))]",
            "network": "$@network_def.to(@device)",
            "preprocessing": _preprocessing(lilaw_config),
            "dataset": {"_target_": "monai.data.Dataset", "data": "@datalist", "transform": "@preprocessing"},
            "dataloader": {"_target_": "monai.data.DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False,
                           "num_workers": 0},
            "inferer": {"_target_": "monai.inferers.SimpleInferer"},
            "postprocessing": _postprocessing(spec, with_label=False),
            "handlers": [
                {"_target_": "monai.handlers.CheckpointLoader", "load_path": "@ckpt_path", "load_dict": {"model": "@network"},
                 "map_location": "@device"},
                {
                    "_target_": "monai.handlers.ClassificationSaver",
                    "output_dir": "@output_dir",
                    "filename": "predictions.csv",
                    # the decollated batch: one dict per item; rows are named by the item's id (file name)
                    "batch_transform": "$lambda batch: [{'filename_or_obj': item['id']} for item in batch]",
                    "output_transform": "$monai.handlers.from_engine(['pred'])",
                },
            ],
            "evaluator": {
                "_target_": "monai.engines.SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@dataloader",
                "network": "@network",
                "inferer": "@inferer",
                "postprocessing": "@postprocessing",
                "val_handlers": "@handlers",
            },
            "run": ["$@evaluator.run()"],
        }
    )
    return cfg


# ---------------------------------------------------------------------------------------- docs
_LICENSE = """\
Copyright (c) {year} {authors}

Licensed under the Apache License, Version 2.0 (the "License"); you may not use the files of this
bundle except in compliance with the License. You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software distributed under the License
is distributed on an "AS IS" BASIS, WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or
implied. See the License for the specific language governing permissions and limitations under the
License.

The model weights (models/) were trained on data that may carry its own licence: check the terms
of the training data before sharing or using them. Research use only; not for diagnosis.
"""


def _readme(spec: ModelSpec, meta: Mapping[str, Any], cfg: Mapping[str, Any], has_model: bool, multi_gpu: bool) -> str:
    shape = meta["network_data_format"]["inputs"]["image"]["spatial_shape"]
    lilaw = cfg["lilaw"]
    lines = [
        f"# {meta['task']}",
        "",
        meta["description"],
        "",
        "## Model",
        "",
        f"- network: `{spec.network}` ({spec.spatial_dims}D, {spec.in_channels} input channel(s), input {shape})",
        f"- outputs: {spec.num_outputs} logit(s): " + ", ".join(f"{i}: {n}" for i, n in enumerate(spec.class_names)),
        f"- trained with LiLAW: {'yes' if lilaw['enabled'] else 'no (baseline)'} (alpha={lilaw['alpha']}, "
        f"beta={lilaw['beta']}, delta={lilaw['delta']} initially; meta lr={lilaw['lr']}, "
        f"weight decay={lilaw['weight_decay']}, warm-up {lilaw['warmup_epochs']} epoch(s))",
        f"- weights: {'`models/model.pt` (from the exported run)' if has_model else 'none yet: train first'}",
    ]
    if meta.get("eval_metrics"):
        lines += ["", "## Results of the exported run", ""]
        lines += [f"- {k}: {v:.4f}" for k, v in meta["eval_metrics"].items()]
    cal = meta.get("lilaw_med_calibration")
    if cal:
        lines += [
            "", "## Calibration", "",
            f"The configs below output the uncalibrated softmax. The exported run fitted `{cal['method']}` calibration "
            "on its noisy validation split (`lilaw_med_calibration` in `configs/metadata.json`): divide the logits by "
            f"the temperature {cal.get('temperature', 1.0):.4g}"
            + (", add `class_bias` (a balanced class prior)" if "class_bias" in cal else "")
            + (f", and predict class 1 when its probability is at least {cal['threshold']:.4g}" if "threshold" in cal else "")
            + "; `lilaw-med predict` on the run folder does this.",
        ]
    lines += [
        "",
        "## Commands (run from this folder)",
        "",
        "Train (writes the lilaw-med run folder `runs/train/` and `models/model.pt`):",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/train.yaml --meta_file configs/metadata.json",
        "```",
        "",
        "Any config value can be overridden, e.g. another datalist or more epochs:",
        "`--lilaw_config#data#datalist /data/my_datalist.json --lilaw_config#train#epochs 50`;",
        "`--output_dir runs/other` picks another run folder (an existing one is never overwritten).",
        "Values are Python literals: `True`/`False`, not `true`/`false`.",
        "",
        "Evaluate `models/model.pt` on the test split of `configs/datalist.json` (AUROC and accuracy in `eval/`):",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/evaluate.yaml --meta_file configs/metadata.json",
        "```",
        "",
        "The image paths in `configs/datalist.json` are relative to `dataset_dir`, the folder they lay in when the",
        "bundle was exported. On another machine, or after moving the images, name their folder:",
        "`--dataset_dir /data/my_images` (the same relative layout below it).",
        "",
        "Predict every file of a folder (`eval/predictions.csv`):",
        "",
        "```bash",
        "python -m monai.bundle run --config_file configs/inference.yaml --meta_file configs/metadata.json \\",
        "    --dataset_dir /path/to/images",
        "```",
        "",
        "Check the network against the metadata, and export TorchScript (`models/model.ts`):",
        "",
        "```bash",
        "python -m monai.bundle verify_net_in_out network_def --meta_file configs/metadata.json \\",
        "    --config_file configs/inference.yaml" + (" --any 64" if "*" in shape else ""),
        "python -m monai.bundle ckpt_export network_def --filepath models/model.ts --ckpt_file models/model.pt \\",
        "    --meta_file configs/metadata.json --config_file configs/inference.yaml",
        "```",
    ]
    if multi_gpu:
        lines += [
            "",
            "Train on several GPUs (torchrun):",
            "",
            "```bash",
            "torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\",
            "    --config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\" --meta_file configs/metadata.json",
            "```",
        ]
    lines += [
        "",
        "## Requirements",
        "",
        "`pip install lilaw-med` (which brings MONAI, PyTorch, pytorch-ignite, fire and jsonschema); versions in "
        "`configs/metadata.json` (`required_packages_version`).",
        "",
        "## Reference",
        "",
        meta["references"][0],
        "",
    ]
    return "\n".join(lines)


def multi_gpu_config() -> dict[str, Any]:
    """``configs/multi_gpu_train.yaml`` of an exported bundle: a torchrun override of ``train.yaml``.

    It initialises the process group from torchrun's variables
    (:func:`lilaw_med.training.distributed.init_distributed`), runs the same ``training`` on this
    process's device (``run_training`` partitions the data and wraps the network in DDP when a
    process group is up; only rank 0 writes), installs the weights on rank 0 and cleans up.
    (``lilaw_med.configs.bundle/multi_gpu_train.yaml`` is the template for model-zoo bundles with the
    overlay: it edits their ``train#...`` ids, which an exported bundle does not have.)
    """
    return {
        "+imports": ["$import lilaw_med.training.distributed"],
        "distributed": {
            "_target_": "lilaw_med.training.distributed.init_distributed",
            "device": "@lilaw_config#train#device",
        },
        "training#device": "$str(@distributed.device)",
        "initialize": ["$@distributed"],
        "run": [
            "$@training",
            "$lilaw_med.bundle.export.install_model(@output_dir, @ckpt_path) if @distributed.is_rank0 else None",
        ],
        "finalize": ["$lilaw_med.training.distributed.cleanup_distributed(@distributed)"],
    }


# ---------------------------------------------------------------------------------------- export
def export_bundle(
    config: Mapping[str, Any] | str | os.PathLike,
    out_dir: str | os.PathLike,
    run_dir: str | os.PathLike | None = None,
    *,
    version: str = "0.1.0",
    task: str | None = None,
    description: str | None = None,
    authors: str = "lilaw-med developers",
    copyright: str | None = None,
    spatial_shape: Sequence[int] | None = None,
    value_range: Sequence[float] = (),
    license_file: str | os.PathLike | None = None,
    overwrite: bool = False,
    datalist: Any = None,
    base_dir: str | os.PathLike | None = None,
) -> BundleExport:
    """Writes a MONAI bundle for a lilaw-med config, with the trained weights of ``run_dir``.

    Args:
        config: a config mapping or YAML file (validated here; relative paths are resolved
            against ``base_dir`` and written as absolute paths).
        out_dir: the bundle folder (created).
        run_dir: a finished run of this config: its best weights become ``models/model.pt``, its
            test metrics the metadata's ``eval_metrics``; its network must be the config's.
        version: the bundle's version.
        task: one line for the metadata (default: from the preset).
        description: a longer description (default: built from the preset and the classes).
        authors: the model's authors.
        copyright: the copyright line (default: ``"Copyright (c) <authors>"``).
        spatial_shape: the network's input size; default: from the preset's transform options.
        value_range: ``[min, max]`` of the preprocessed input, when known.
        license_file: a licence text to ship as ``LICENSE`` (default: Apache-2.0 notice).
        overwrite: allow writing into an existing non-empty folder.
        datalist: the prepared datalist (``None``: the run's ``datalist.json``, else read from the config).
        base_dir: the folder the config's relative paths are resolved against (default: the run
            folder when ``config`` is the run's own ``config.yaml``, else the current folder). With
            the run's own config, the bundle reads the run's ``datalist.json`` (never sample data).

    Returns:
        The :class:`BundleExport`.

    Raises:
        FileExistsError: when ``out_dir`` is not empty and ``overwrite`` is off.
        FileNotFoundError: when the config, the run's checkpoint or the licence file is missing.
        ValueError: when the config is invalid, or the run's network differs from the config's.
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another folder or pass overwrite.")
    cfg = load_config(config) if isinstance(config, (str, os.PathLike)) else validate_config(config)
    run = RunDir(run_dir) if run_dir is not None else None
    # the run's own config.yaml: its relative paths belong to the run folder, never to the current one
    own = run is not None and (
        (isinstance(config, (str, os.PathLike)) and Path(config).absolute() == run.config.absolute())
        or (base_dir is not None and Path(base_dir).absolute() == run.root.absolute())
    )
    cfg = _absolute_paths(cfg, Path(os.path.abspath(base_dir)) if base_dir is not None else (
        Path(os.path.abspath(run.root)) if own else Path.cwd()))
    if run is not None and run.datalist.is_file() and (own or not cfg["data"]["datalist"]):
        # the items the run trained on (absolute paths, ids, splits): sample data is never regenerated
        cfg["data"]["datalist"] = os.path.abspath(run.datalist)
    _check_no_config_syntax(cfg)
    if run is not None:
        spec, state_dict, summary = _from_run(cfg, run.root)
        if datalist is None and cfg["data"]["datalist"]:
            from lilaw_med.data.datalist import load_datalist

            data = cfg["data"]
            datalist = load_datalist(cfg["data"]["datalist"], class_names=data["class_names"], multi_label=bool(
                data["multi_label"]), val_fraction=data["val_fraction"], seed=data["split_seed"] if data["split_seed"]
                is not None else cfg["train"]["seed"], strict=False)
    else:
        if datalist is None:
            datalist = prepare_datalist(cfg)
        spec, state_dict, summary = model_spec_from_config(cfg, datalist), None, {}
    shape = list(spatial_shape) if spatial_shape else input_spatial_shape(cfg, spec.spatial_dims)
    if len(shape) != spec.spatial_dims:
        raise ValueError(f"spatial_shape {shape} must have {spec.spatial_dims} entries (model.spatial_dims).")
    meta = _metadata(
        cfg, spec, shape, summary, task=task, description=description, version=version, authors=authors,
        copyright=copyright, value_range=value_range,
    )
    result = BundleExport(root=out.absolute(), metadata=meta, model=spec)
    _write_bundle(result, cfg, state_dict, license_file, authors, datalist)
    logger.info("bundle written to %s (%d files)", result.root, len(result.files))
    return result


def _from_run(cfg: Mapping[str, Any], run_dir: str | os.PathLike) -> tuple[ModelSpec, dict[str, torch.Tensor], dict]:
    """``(spec, weights, summary)`` of a finished run, checked against the config being exported.

    Raises:
        FileNotFoundError: when the run has no model checkpoint.
        ValueError: when the run's network differs from the config's.
    """
    spec, state_dict = model_spec_from_run(run_dir, dropout=float(cfg["model"]["dropout"]))
    described = (cfg["model"]["network"], *input_shape(cfg))
    if described != (spec.network, spec.spatial_dims, spec.in_channels):
        raise ValueError(
            f"run {run_dir} trained {spec.network} ({spec.spatial_dims}D, {spec.in_channels} channel(s)) but the "
            f"config describes {described[0]} ({described[1]}D, {described[2]} channel(s)): export the run with "
            f"its own {RunDir.CONFIG}."
        )
    run = RunDir(run_dir)
    if run.config.is_file():
        own = _absolute_paths(load_config(run.config), run.root.absolute())
        given = copy.deepcopy(dict(cfg))
        if given["data"]["datalist"] == os.path.abspath(run.datalist):
            given["data"]["datalist"] = own["data"]["datalist"]  # the run's datalist.json is the run's own data
        if given["data"]["datalist"] and own["data"]["datalist"]:
            given["data"]["sample_dir"] = own["data"]["sample_dir"]  # not read when a datalist is given
        differences = _differences(given, own)
        if differences:
            logger.warning(
                "the bundle's train.yaml follows the given config, which differs from the run's %s in %s: "
                "export with --config %s to reproduce the run.", run.config, ", ".join(differences), run.config,
            )
    return spec, state_dict, run.read_json(RunDir.SUMMARY) if run.summary.is_file() else {}


def _metadata(
    cfg: Mapping[str, Any], spec: ModelSpec, shape: list[int | str], summary: Mapping[str, Any], *, task: str | None,
    description: str | None, version: str, authors: str, copyright: str | None, value_range: Sequence[float],
) -> dict[str, Any]:
    """``configs/metadata.json``: the preset's task and modality, the run's test metrics (see :func:`export_bundle`)."""
    preset = get_preset(cfg["data"]["preset"])
    lilaw_on = bool(cfg["lilaw"]["enabled"])
    test = (summary.get("best") or summary.get("final") or {}).get("test") or {}
    eval_metrics = {f"test_{k}": float(test[k]) for k in ("auroc", "accuracy", "balanced_accuracy") if k in test}
    method = (
        "LiLAW learns three scalars (alpha, beta, delta) that weight every sample's loss by its difficulty, "
        "meta-updated on a validation batch after every training batch, which makes training robust to "
        "mislabeled samples."
        if lilaw_on
        else "Plain training (the baseline, LiLAW switched off)."
    )
    meta = build_metadata(
        class_names=spec.class_names if spec.num_outputs > 1 else [f"P({spec.class_names[-1]})"],
        in_channels=spec.in_channels,
        spatial_shape=shape,
        task=task or f"{preset.task} trained on noisy labels" + (" with LiLAW" if lilaw_on else ""),
        description=description
        or f"A {spec.network} classifier ({', '.join(spec.class_names)}) trained with lilaw-med. {method}",
        version=version,
        authors=authors,
        copyright=copyright or f"Copyright (c) {authors}",
        modality=preset.modality,
        value_range=value_range,
        multi_label=spec.multi_label,
        is_patch_data=preset.patches,
        eval_metrics=eval_metrics or None,
        # the file name only: absolute paths of the exporting machine stay out of the metadata
        data_source=f"lilaw-med datalist {Path(cfg['data']['datalist']).name}"
        if cfg["data"]["datalist"]
        else "lilaw-med synthetic sample data",
    )
    calibration = summary.get("calibration") or {}
    calibration = calibration.get("best") if summary.get("best") else calibration.get("final")
    if calibration and calibration.get("method", "none") != "none":
        # the bundle's configs output the plain softmax; the run's calibration is recorded to apply by hand
        meta["lilaw_med_calibration"] = {k: calibration[k] for k in
                                         ("method", "temperature", "threshold", "class_bias") if calibration.get(k) is not None}
    missing = missing_metadata_keys(meta)
    if missing:  # a bug here, not a user error
        raise RuntimeError(f"exported metadata lacks {missing}.")
    return meta


# the comment at the top of each config file of a bundle
_COMMENTS: dict[str, str] = {
    "train.yaml": (
        "Trains with LiLAW: `training` is lilaw_med.training.run.run_training on `lilaw_config`, the\n"
        "same function `lilaw-med train` calls, so both give the same results on the same config and seed.\n"
        "Then the best weights are installed as models/model.pt.\n"
        "python -m monai.bundle run --config_file configs/train.yaml --meta_file configs/metadata.json"
    ),
    "evaluate.yaml": (
        "Evaluates models/model.pt on the `split` (default test) of configs/datalist.json, whose image paths are\n"
        "relative to `dataset_dir` (on another machine: --dataset_dir /where/the/images/are).\n"
        "python -m monai.bundle run --config_file configs/evaluate.yaml --meta_file configs/metadata.json"
    ),
    "inference.yaml": (
        "Class probabilities of every file in `dataset_dir` (eval/predictions.csv).\n"
        "python -m monai.bundle run --config_file configs/inference.yaml --meta_file configs/metadata.json "
        "--dataset_dir DIR"
    ),
    _MULTI_GPU: (
        "Multi-GPU (DDP) training: pass it AFTER train.yaml, under torchrun (one process per GPU):\n"
        "torchrun --standalone --nproc_per_node=2 -m monai.bundle run \\\n"
        "    --config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\" --meta_file configs/metadata.json\n"
        "train.batch_size is per process: the effective batch is N times larger (see lilaw-med's docs/distributed.md)."
    ),
}


def _write_bundle(
    result: BundleExport, cfg: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None,
    license_file: str | os.PathLike | None, authors: str, datalist: Any = None,
) -> None:
    """Writes the bundle's files under ``result.root``, listing each in ``result.files``."""
    spec, meta = result.model, result.metadata
    assert spec is not None

    def write(rel: str, data: str | bytes) -> None:
        atomic_write(result.root / rel, data)
        result.files.append(rel)

    write("configs/metadata.json", json.dumps(meta, indent=4) + "\n")
    data_root = None
    if datalist is not None:
        content, data_root = bundle_datalist(datalist)
        write("configs/datalist.json", json.dumps(content, indent=1) + "\n")
    configs = {
        "train.yaml": train_config(spec, cfg), "evaluate.yaml": evaluate_config(spec, cfg, data_root),
        "inference.yaml": inference_config(spec, cfg), _MULTI_GPU: multi_gpu_config(),
    }
    for name, content in configs.items():
        write(f"configs/{name}", _yaml(content, _COMMENTS[name]))
    write("configs/logging.conf", _LOGGING_CONF)
    write("docs/README.md", _readme(spec, meta, cfg, state_dict is not None, True))
    if license_file is not None:
        if not Path(license_file).is_file():
            raise FileNotFoundError(f"licence file {license_file} does not exist.")
        write("LICENSE", Path(license_file).read_bytes())
    else:
        import datetime

        write("LICENSE", _LICENSE.format(year=datetime.date.today().year, authors=authors))
    if state_dict is not None:
        atomic_save_torch({k: v.detach().cpu() for k, v in state_dict.items()}, result.root / "models" / "model.pt")
        result.files.append("models/model.pt")
    else:
        (result.root / "models").mkdir(parents=True, exist_ok=True)


def copy_overlay(dest: str | os.PathLike, name: str = "lilaw_overlay.yaml") -> Path:
    """Copies a packaged bundle template (the generic LiLAW overlay ``lilaw_overlay.yaml``, or
    ``multi_gpu_train.yaml``) to ``dest``. :mod:`lilaw_med.bundle.overlay` writes one for a given bundle.

    Args:
        dest: a file path, or a folder to copy it into.
        name: the packaged file under ``lilaw_med.configs.bundle``.

    Returns:
        The written file.
    """
    source = resources.files("lilaw_med.configs.bundle") / name
    target = Path(dest)
    if target.is_dir():
        target = target / name
    return atomic_write(target, source.read_bytes())
