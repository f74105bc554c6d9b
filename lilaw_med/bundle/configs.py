"""The config files of an exported bundle: ``train.yaml``, ``evaluate.yaml``, ``inference.yaml``,
``multi_gpu_train.yaml`` (as dicts, then as YAML text with their comments) and ``datalist.json``.

``train.yaml`` embeds the complete, validated config (``lilaw_config``) and its ``training`` component
is :func:`lilaw_med.training.run.run_training` called with it, the very function ``lilaw-med train``
calls: nothing is rebuilt from bundle-side components, so the two paths cannot drift apart. What
the configs call at run time lives in :mod:`lilaw_med.bundle.runtime`.

Example::

    texts = config_files(spec, lilaw_config, data_root="/data/images")
    print(texts["train.yaml"])
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lilaw_med import __version__
from lilaw_med.bundle.command import bundle_run_command
from lilaw_med.bundle.source import ModelSpec
from lilaw_med.bundle.yaml_text import config_yaml
from lilaw_med.run.transforms import transform_options

__all__ = [
    "MULTI_GPU",
    "MULTI_GPU_FILES",
    "TRAIN_FILES",
    "bundle_datalist",
    "config_files",
    "evaluate_config",
    "inference_config",
    "multi_gpu_config",
    "train_config",
]

MULTI_GPU = "multi_gpu_train.yaml"
TRAIN_FILES = ["configs/train.yaml"]
MULTI_GPU_FILES = ["configs/train.yaml", f"configs/{MULTI_GPU}"]
"""The config lists of one-process and of torchrun training (the override after train.yaml)."""


def _common(spec: ModelSpec, lilaw_config: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "imports": [
            "$import glob", "$import os", "$import torch", "$import lilaw_med", "$import lilaw_med.bundle.runtime",
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
                "$lilaw_med.bundle.runtime.install_model(@output_dir, @ckpt_path)",
                "$lilaw_med.bundle.runtime.log_final_metrics(@training)",
            ],
        }
    )
    return cfg


def _preprocessing(lilaw_config: Mapping[str, Any]) -> dict[str, Any]:
    """The run's evaluation chain as a config entry: the options of :func:`lilaw_med.run.transforms.transform_options`."""
    return {
        "_target_": "lilaw_med.data.transforms.build_transforms",
        "preset": lilaw_config["data"]["preset"],
        "options": transform_options(lilaw_config),
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
                "datalist": "$lilaw_med.bundle.runtime.load_bundle_datalist("
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
            "$lilaw_med.bundle.runtime.install_model(@output_dir, @ckpt_path) if @distributed.is_rank0 else None",
        ],
        "finalize": ["$lilaw_med.training.distributed.cleanup_distributed(@distributed)"],
    }


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


def _comments() -> dict[str, str]:
    """The comment at the top of each config file (the exact command that runs it)."""
    return {
        "train.yaml": (
            "Trains with LiLAW: `training` is lilaw_med.training.run.run_training on `lilaw_config`, the\n"
            "same function `lilaw-med train` calls, so both give the same results on the same config and seed.\n"
            "Then the best weights are installed as models/model.pt.\n" + bundle_run_command(TRAIN_FILES)
        ),
        "evaluate.yaml": (
            "Evaluates models/model.pt on the `split` (default test) of configs/datalist.json, whose image paths are\n"
            "relative to `dataset_dir` (on another machine: --dataset_dir /where/the/images/are).\n"
            + bundle_run_command(["configs/evaluate.yaml"])
        ),
        "inference.yaml": (
            "Class probabilities of every file in `dataset_dir` (eval/predictions.csv).\n"
            + bundle_run_command(["configs/inference.yaml"], extra=["--dataset_dir", "DIR"])
        ),
        MULTI_GPU: (
            "Multi-GPU (DDP) training: pass it AFTER train.yaml, under torchrun (one process per GPU):\n"
            + bundle_run_command(MULTI_GPU_FILES, nproc=2) + "\n"
            "train.batch_size is per process: the effective batch is N times larger (see lilaw-med's docs/distributed.md)."
        ),
    }


def config_files(spec: ModelSpec, lilaw_config: Mapping[str, Any], data_root: str | None = None) -> dict[str, str]:
    """The text of each config file of the bundle, by file name under ``configs/``.

    Args:
        spec: the network.
        lilaw_config: the validated config to embed (absolute paths).
        data_root: the folder the shipped ``datalist.json``'s image paths start from (``None``: no
            datalist shipped; ``evaluate.yaml`` then reads the config's own).

    Returns:
        ``{file name: YAML text}``.
    """
    contents = {
        "train.yaml": train_config(spec, lilaw_config),
        "evaluate.yaml": evaluate_config(spec, lilaw_config, data_root),
        "inference.yaml": inference_config(spec, lilaw_config),
        MULTI_GPU: multi_gpu_config(),
    }
    header = (f"MONAI bundle config written by `lilaw-med bundle export` (lilaw-med {__version__}).\n"
              "Components are lilaw-med functions and classes referenced by their full dotted paths.\n")
    comments = _comments()
    return {name: config_yaml(content, header + comments[name]) for name, content in contents.items()}
