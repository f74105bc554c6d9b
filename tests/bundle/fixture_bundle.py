"""Tiny classification bundles in the layouts and with the ids of MONAI model-zoo classification
bundles, written for the tests, in each id style (``STYLES``):

- ``"nested"``: ``configs/train.json`` with ``loss``, ``train#trainer``, ``train#handlers``,
  ``validate#dataset``, ``validate#dataloader``, ``ckpt_dir`` (the endoscopic-classification layout);
- ``"flat"``: ``configs/train.yaml`` with flat ids (``lossfn``, ``trainer``, ``handlers``,
  ``train_dataset``, ``val_dataset``, ``val_dataloader``, ``evaluator``) and no ``ckpt_dir`` (the
  best-model saver writes to ``$@bundle_root + '/models'`` itself), as MONAI's classification template;
- ``"expression"``: the nested JSON with the loss written as an expression
  (``"$torch.nn.CrossEntropyLoss(reduction='mean')"``), so no config key reaches its arguments.

Like the model-zoo bundles it loads image files listed in JSON datalists with ``LoadImaged``, trains
a ``SupervisedTrainer`` with a REDUCING ``CrossEntropyLoss`` (``reduction="sum"``), validates every
epoch with a ``ValidationHandler`` and keeps the best model with a ``CheckpointSaver``. Sizes are
tiny so that a few CPU iterations take a second.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

__all__ = ["STYLES", "write_classification_bundle", "write_images"]

IMAGE_SIZE = 16
STYLES = ("nested", "flat", "expression")


def write_images(folder: Path, n: int, rng: np.random.Generator, prefix: str) -> list[dict]:
    """Writes ``n`` grey PNG images of two classes told apart by a bright square.

    Every third label is flipped (label noise), so LiLAW has something to weight.

    Args:
        folder: where the PNG files go (created).
        n: number of images; classes alternate 0, 1, 0, ...
        rng: the generator of the background noise.
        prefix: file-name prefix (``{prefix}_{i:03d}.png``).

    Returns:
        Datalist items ``{"image": absolute path, "label": given (possibly flipped) label}``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for i in range(n):
        label = i % 2
        img = rng.integers(0, 60, size=(IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
        if label:
            img[4:12, 4:12] += 150
        path = folder / f"{prefix}_{i:03d}.png"
        Image.fromarray(img).save(path)
        given = 1 - label if i % 3 == 0 else label
        items.append({"image": str(path), "label": given})
    return items


def _train_config(batch_size: int, max_epochs: int) -> dict:
    deterministic = [
        {"_target_": "LoadImaged", "keys": "image", "image_only": True},
        {"_target_": "EnsureChannelFirstd", "keys": "image", "channel_dim": "no_channel"},
        {"_target_": "ScaleIntensityd", "keys": "image"},
        {"_target_": "CastToTyped", "keys": "image", "dtype": "$torch.float32"},
        {"_target_": "ToTensord", "keys": "label"},
    ]
    return {
        "imports": ["$import json", "$import os", "$import torch", "$import ignite"],
        "bundle_root": ".",
        "ckpt_dir": "$@bundle_root + '/models'",
        "output_dir": "$@bundle_root + '/eval'",
        "dataset_dir": "$@bundle_root + '/data'",
        "train_json": "$@dataset_dir + '/train_samples.json'",
        "val_json": "$@dataset_dir + '/val_samples.json'",
        "train_dict": "$json.load(open(@train_json))",
        "val_dict": "$json.load(open(@val_json))",
        "val_interval": 1,
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "network_def": {
            "_target_": "Classifier",
            "in_shape": [1, IMAGE_SIZE, IMAGE_SIZE],
            "classes": 2,
            "channels": [4, 8],
            "strides": [2, 2],
        },
        "network": "$@network_def.to(@device)",
        "loss": {"_target_": "torch.nn.CrossEntropyLoss", "reduction": "sum"},
        "optimizer": {"_target_": "torch.optim.Adam", "params": "$@network.parameters()", "lr": 0.001},
        "train": {
            "deterministic_transforms": deterministic,
            "random_transforms": [{"_target_": "RandFlipd", "keys": "image", "spatial_axis": 0, "prob": 0.5}],
            "preprocessing": {
                "_target_": "Compose",
                "transforms": "$@train#deterministic_transforms + @train#random_transforms",
            },
            "dataset": {"_target_": "Dataset", "data": "@train_dict", "transform": "@train#preprocessing"},
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@train#dataset",
                "batch_size": batch_size,
                "shuffle": True,
                "num_workers": 0,
            },
            "inferer": {"_target_": "SimpleInferer"},
            "handlers": [
                {
                    "_target_": "ValidationHandler",
                    "validator": "@validate#evaluator",
                    "epoch_level": True,
                    "interval": "@val_interval",
                },
                {
                    "_target_": "StatsHandler",
                    "tag_name": "train_loss",
                    "output_transform": "$monai.handlers.from_engine(['loss'], first=True)",
                },
            ],
            "key_metric": {
                "train_accu": {
                    "_target_": "ignite.metrics.Accuracy",
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },
            "postprocessing": {
                "_target_": "Compose",
                "transforms": [
                    {
                        "_target_": "AsDiscreted",
                        "keys": ["pred", "label"],
                        "argmax": [True, False],
                        "to_onehot": [2, 2],
                    }
                ],
            },
            "trainer": {
                "_target_": "SupervisedTrainer",
                "max_epochs": max_epochs,
                "device": "@device",
                "train_data_loader": "@train#dataloader",
                "network": "@network",
                "loss_function": "@loss",
                "optimizer": "@optimizer",
                "inferer": "@train#inferer",
                "postprocessing": "@train#postprocessing",
                "key_train_metric": "@train#key_metric",
                "train_handlers": "@train#handlers",
            },
        },
        "validate": {
            "preprocessing": {"_target_": "Compose", "transforms": "%train#deterministic_transforms"},
            "dataset": {"_target_": "Dataset", "data": "@val_dict", "transform": "@validate#preprocessing"},
            "dataloader": {
                "_target_": "DataLoader",
                "dataset": "@validate#dataset",
                "batch_size": batch_size,
                "shuffle": False,
                "num_workers": 0,
            },
            "inferer": {"_target_": "SimpleInferer"},
            "postprocessing": "%train#postprocessing",
            "handlers": [
                {"_target_": "StatsHandler", "iteration_log": False},
                {
                    "_target_": "CheckpointSaver",
                    "save_dir": "@ckpt_dir",
                    "save_dict": {"model": "@network"},
                    "save_key_metric": True,
                    "key_metric_filename": "model.pt",
                },
            ],
            "key_metric": {
                "val_accu": {
                    "_target_": "ignite.metrics.Accuracy",
                    "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
                }
            },
            "evaluator": {
                "_target_": "SupervisedEvaluator",
                "device": "@device",
                "val_data_loader": "@validate#dataloader",
                "network": "@network",
                "inferer": "@validate#inferer",
                "postprocessing": "@validate#postprocessing",
                "key_val_metric": "@validate#key_metric",
                "val_handlers": "@validate#handlers",
            },
        },
        "initialize": ["$monai.utils.set_determinism(seed=123)"],
        "run": ["$@train#trainer.run()"],
    }


def _flat_config(batch_size: int, max_epochs: int) -> dict:
    """The ``"flat"`` style: the nested config's components under flat ids, no ``ckpt_dir``."""
    nested = _train_config(batch_size, max_epochs)
    train, validate = nested["train"], nested["validate"]
    refs = {  # nested id -> flat id, for every reference inside the moved components
        "@train#": "@train_", "@validate#": "@val_", "%train#": "%train_",
    }

    def rename(node: object) -> object:
        if isinstance(node, dict):
            return {k: rename(v) for k, v in node.items()}
        if isinstance(node, list):
            return [rename(v) for v in node]
        if isinstance(node, str):
            for old, new in refs.items():
                node = node.replace(old, new)
            for old, new in (("@train_trainer", "@trainer"), ("@val_evaluator", "@evaluator"),
                             ("@train_handlers", "@handlers"), ("@loss", "@lossfn")):
                node = node.replace(old, new)
            return node
        return node

    flat = {k: v for k, v in nested.items() if k not in ("train", "validate", "ckpt_dir", "output_dir", "loss")}
    flat["lossfn"] = nested["loss"]
    for key, value in train.items():
        flat[{"trainer": "trainer", "handlers": "handlers"}.get(key, f"train_{key}")] = value
    for key, value in validate.items():
        flat[{"evaluator": "evaluator"}.get(key, f"val_{key}")] = value
    flat = rename(flat)
    # no ckpt_dir: the best-model saver names the folder itself
    saver = flat["val_handlers"][1]
    saver["save_dir"] = "$@bundle_root + '/models'"
    flat["run"] = ["$@trainer.run()"]
    return flat


def _expression_config(batch_size: int, max_epochs: int) -> dict:
    """The ``"expression"`` style: the nested config with the loss written as an expression."""
    cfg = _train_config(batch_size, max_epochs)
    cfg["loss"] = "$torch.nn.CrossEntropyLoss(reduction='mean')"
    return cfg


def _metadata() -> dict:
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": "US",
        "num_channels": 1,
        "spatial_shape": [IMAGE_SIZE, IMAGE_SIZE],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {"0": "image"},
    }
    pred = {
        "type": "probabilities",
        "format": "classes",
        "modality": "n/a",
        "num_channels": 2,
        "spatial_shape": [1, 2],
        "dtype": "float32",
        "value_range": [0, 1],
        "is_patch_data": False,
        "channel_def": {"0": "no square", "1": "square"},
    }
    return {
        "version": "0.1.0",
        "changelog": {"0.1.0": "test fixture"},
        "monai_version": "1.6.1",
        "pytorch_version": "2.4.0",
        "numpy_version": "1.24.0",
        "required_packages_version": {},
        "task": "toy square classification",
        "description": "A fixture bundle written for lilaw-med's tests.",
        "authors": "lilaw-med tests",
        "copyright": "Copyright (c) lilaw-med developers",
        "network_data_format": {"inputs": {"image": image}, "outputs": {"pred": pred}},
    }


def write_classification_bundle(
    root: str | Path,
    n_train: int = 24,
    n_val: int = 8,
    batch_size: int = 8,
    max_epochs: int = 2,
    seed: int = 0,
    style: str = "nested",
) -> Path:
    """Writes the fixture bundle: ``configs/train.json`` (``train.yaml`` for the flat style),
    ``configs/metadata.json``, PNG images and the datalists under ``data/``.

    Args:
        root: the bundle's folder (created).
        n_train: training images.
        n_val: validation images.
        batch_size: batch size of both loaders.
        max_epochs: training epochs.
        seed: seed of the image noise.
        style: the id style, one of ``STYLES``.

    Returns:
        The bundle folder.

    Raises:
        ValueError: on an unknown style.
    """
    if style not in STYLES:
        raise ValueError(f"style must be one of {STYLES} but is {style!r}.")
    root = Path(root)
    rng = np.random.default_rng(seed)
    data = root / "data"
    train_items = write_images(data / "images", n_train, rng, "train")
    val_items = write_images(data / "images", n_val, rng, "val")
    (data / "train_samples.json").write_text(json.dumps(train_items, indent=1))
    (data / "val_samples.json").write_text(json.dumps(val_items, indent=1))
    configs = root / "configs"
    configs.mkdir(parents=True, exist_ok=True)
    if style == "flat":
        text = yaml.safe_dump(_flat_config(batch_size, max_epochs), sort_keys=False)
        (configs / "train.yaml").write_text(text)
    else:
        build = _expression_config if style == "expression" else _train_config
        (configs / "train.json").write_text(json.dumps(build(batch_size, max_epochs), indent=4))
    (configs / "metadata.json").write_text(json.dumps(_metadata(), indent=4))
    (root / "models").mkdir(exist_ok=True)
    return root
