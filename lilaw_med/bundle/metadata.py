"""``configs/metadata.json`` of an exported bundle: its content and the checks on it.

The mandatory keys are those of the MONAI Bundle Specification
(https://docs.monai.io/en/latest/mb_specification.html, "metadata.json File"), with the
``required_packages_version`` name that MONAI >= 1.2 uses (``optional_packages_version`` is its
deprecated alias, which MONAI's parser renames). :func:`missing_metadata_keys` checks them offline.

MONAI's own JSON schema is published on the web only (the ``schema`` URL written into every
metadata file) and ships in no installable package: :func:`verify_metadata_schema` runs MONAI's
``verify_metadata`` against a LOCAL COPY of it that the user supplies, and never downloads or
substitutes anything.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import monai
import numpy
import torch
from monai.bundle import verify_metadata

from lilaw_med.errors import InputError

__all__ = [
    "MANDATORY_KEYS",
    "MONAI_SCHEMA_URL",
    "SCHEMA_ENV_VAR",
    "TENSOR_KEYS",
    "build_metadata",
    "missing_metadata_keys",
    "package_versions",
    "schema_path_from_env",
    "verify_metadata_schema",
]

logger = logging.getLogger(__name__)

MONAI_SCHEMA_URL = "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
"""The schema URL model-zoo bundles name in their ``schema`` key (the file itself is not shipped)."""

SCHEMA_ENV_VAR = "LILAW_BUNDLE_SCHEMA"
"""Environment variable naming a local copy of MONAI's metadata schema, for offline validation."""

MANDATORY_KEYS: tuple[str, ...] = (
    "schema",
    "version",
    "monai_version",
    "pytorch_version",
    "numpy_version",
    "required_packages_version",
    "task",
    "description",
    "authors",
    "copyright",
    "network_data_format",
)
"""Top-level keys every bundle's metadata must have (the specification's list, plus ``schema``,
which ``verify_metadata`` needs to find the schema)."""

TENSOR_KEYS: tuple[str, ...] = (
    "type",
    "format",
    "modality",
    "num_channels",
    "spatial_shape",
    "dtype",
    "value_range",
    "is_patch_data",
    "channel_def",
)
"""Keys every tensor format specifier (each input and output) must have, per the specification."""

# what an exported bundle needs besides MONAI's own requirements (torch, numpy)
_REQUIRED_PACKAGES = ("lilaw-med", "pytorch-ignite", "pyyaml", "nibabel", "pydicom", "pillow", "scikit-learn")


def package_versions(names: Sequence[str]) -> dict[str, str]:
    """Installed versions of the named distributions; uninstalled ones are left out.

    Args:
        names: distribution names as pip knows them (``"lilaw-med"``, ``"pytorch-ignite"``).

    Returns:
        ``{name: version}`` for the installed ones, in the given order.
    """
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            logger.debug("package %s is not installed; left out of required_packages_version", name)
    return versions


def _core_versions() -> dict[str, str]:

    return {
        "monai_version": monai.__version__.split("+")[0],
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": numpy.__version__,
    }


def _channel_names(in_channels: int) -> dict[str, str]:
    if in_channels == 1:
        return {"0": "image"}
    if in_channels == 3:
        return {"0": "R", "1": "G", "2": "B"}
    return {str(i): f"channel {i}" for i in range(in_channels)}


def build_metadata(
    *,
    class_names: Sequence[str],
    in_channels: int,
    spatial_shape: Sequence[int | str],
    task: str,
    description: str,
    version: str = "0.1.0",
    changelog: Mapping[str, str] | None = None,
    authors: str = "lilaw-med developers",
    copyright: str = "Copyright (c) lilaw-med developers",
    modality: str = "n/a",
    input_format: str = "magnitude",
    value_range: Sequence[float] = (),
    multi_label: bool = False,
    is_patch_data: bool = False,
    eval_metrics: Mapping[str, float] | None = None,
    data_source: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Builds the content of ``configs/metadata.json`` for a classifier exported by lilaw-med.

    The network's input is ``image`` of shape (N, in_channels, *spatial_shape); its output ``pred``
    holds raw logits of shape (N, num_classes) (``value_range`` unknown, ``[]``); softmax (sigmoid for
    multi-label) turns them into the probabilities described under ``post_processed_outputs``.

    Args:
        class_names: one name per output channel (class, or label for ``multi_label``).
        in_channels: image channels.
        spatial_shape: the spatial size the network is trained on, ``[H, W]`` or ``[H, W, D]``.
        task: one line: what the model predicts.
        description: a longer description.
        version: the bundle's version.
        changelog: ``{version: what changed}``; one entry for ``version`` when ``None``.
        authors: the model's authors.
        copyright: the copyright line.
        modality: "CT", "MR", "US", "CR", "DX", "SM" (slide microscopy), ... or "n/a".
        input_format: the specification's format of the input ("magnitude", "hounsfield", ...).
        value_range: ``[min, max]`` of the network's input after preprocessing, ``[]`` if unknown.
        multi_label: independent sigmoid outputs instead of a softmax over classes.
        is_patch_data: the input is a patch of a larger image (pathology tiles of a slide).
        eval_metrics: ``{metric: value}`` measured on the test split, when known.
        data_source: where the training data came from.
        extra: further keys to add (they override the computed ones).

    Returns:
        The metadata as a JSON-serialisable dict with every key of :data:`MANDATORY_KEYS`.

    Raises:
        InputError: on fewer than one class name, a non-positive ``in_channels``, or a
            ``spatial_shape`` that is not 1-, 2- or 3-dimensional.
    """
    names = [str(c) for c in class_names]
    _check_shapes(names, in_channels, spatial_shape)
    activation = "sigmoid per label" if multi_label else "softmax over classes"
    meta: dict[str, Any] = {
        "schema": MONAI_SCHEMA_URL,
        "version": version,
        "changelog": dict(changelog) if changelog else {version: "exported by lilaw-med"},
        **_core_versions(),
        "required_packages_version": package_versions(_REQUIRED_PACKAGES),
        "task": task,
        "description": description,
        "authors": authors,
        "copyright": copyright,
        "data_type": "image files (DICOM, NIfTI, PNG/TIFF) listed in a lilaw-med datalist",
        "image_classes": _image_classes(in_channels, spatial_shape, value_range),
        "label_classes": ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        "pred_classes": f"{len(names)} logits, {activation} gives the probabilities of: "
        + ", ".join(f"{i}: {n}" for i, n in enumerate(names)),
        "intended_use": "Research only; not for diagnostic use.",
        "references": [
            "Moturu, A., Goldenberg, A., Taati, B. LiLAW: Lightweight Learnable Adaptive Weighting to "
            "Meta-Learn Sample Difficulty and Improve Noisy Training. arXiv:2509.20786 (2025)."
        ],
        "network_data_format": _network_data_format(
            names, in_channels, spatial_shape, input_format, modality, value_range, is_patch_data
        ),
    }
    if eval_metrics:
        meta["eval_metrics"] = {str(k): float(v) for k, v in eval_metrics.items()}
    if data_source:
        meta["data_source"] = data_source
    meta.update(extra or {})
    return meta


def _network_data_format(
    names: Sequence[str], in_channels: int, spatial_shape: Sequence[int | str], input_format: str, modality: str,
    value_range: Sequence[float], is_patch_data: bool,
) -> dict[str, Any]:
    """The specification's ``network_data_format``: the image in, the logits out, the probabilities after."""
    channels = {str(i): name for i, name in enumerate(names)}
    image = {
        "type": "image",
        "format": input_format,
        "modality": modality,
        "num_channels": int(in_channels),
        "spatial_shape": [s if isinstance(s, str) else int(s) for s in spatial_shape],
        "dtype": "float32",
        "value_range": [float(v) for v in value_range],
        "is_patch_data": bool(is_patch_data),
        "channel_def": _channel_names(int(in_channels)),
    }
    logits = {
        "type": "probabilities",
        "format": "classes",
        "modality": "n/a",
        "num_channels": len(names),
        "spatial_shape": [],
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": False,
        "channel_def": channels,
    }
    probabilities = dict(logits, value_range=[0.0, 1.0])
    return {
        "inputs": {"image": image},
        "outputs": {"pred": logits},
        "post_processed_outputs": {"pred": probabilities},
    }


def _check_shapes(names: Sequence[str], in_channels: int, spatial_shape: Sequence[int | str]) -> None:
    """Raises InputError for no class name, a non-positive ``in_channels`` or a shape not 1D to 3D."""
    if not names:
        raise InputError("class_names must name at least one output channel but is empty.")
    if int(in_channels) < 1:
        raise InputError(f"in_channels must be >= 1 but is {in_channels}.")
    if not 1 <= len(spatial_shape) <= 3:
        raise InputError(f"spatial_shape must have 1 to 3 dimensions but is {list(spatial_shape)}.")


def _image_classes(in_channels: int, spatial_shape: Sequence[int | str], value_range: Sequence[float]) -> str:
    """The metadata's ``image_classes`` line: channels, dimensions and the input's intensity range."""
    scale = f"intensity in [{value_range[0]}, {value_range[1]}]" if len(value_range) == 2 else "normalised intensity"
    return f"{in_channels}-channel image, {len(spatial_shape)}D, {scale}"


def missing_metadata_keys(meta: Mapping[str, Any]) -> list[str]:
    """Lists what the MONAI Bundle Specification requires and ``meta`` lacks (offline check).

    Checks the top-level :data:`MANDATORY_KEYS`, ``network_data_format`` having ``inputs`` and
    ``outputs`` (with an ``image`` input and a ``pred`` output, the names ``verify_net_in_out`` and
    ``ckpt_export`` read), and :data:`TENSOR_KEYS` in every input and output.

    Args:
        meta: the parsed ``metadata.json``.

    Returns:
        Dotted paths of the missing keys (e.g. ``"network_data_format.inputs.image.dtype"``);
        empty when nothing is missing.
    """
    missing = [k for k in MANDATORY_KEYS if k not in meta]
    fmt = meta.get("network_data_format")
    if not isinstance(fmt, Mapping):
        return missing
    for side, name in (("inputs", "image"), ("outputs", "pred")):
        tensors = fmt.get(side)
        if not isinstance(tensors, Mapping):
            missing.append(f"network_data_format.{side}")
            continue
        if name not in tensors:
            missing.append(f"network_data_format.{side}.{name}")
        for tname, spec in tensors.items():
            if not isinstance(spec, Mapping):
                missing.append(f"network_data_format.{side}.{tname}")
                continue
            missing += [f"network_data_format.{side}.{tname}.{k}" for k in TENSOR_KEYS if k not in spec]
    return missing


def schema_path_from_env() -> Path | None:
    """The local copy of MONAI's metadata schema named by ``$LILAW_BUNDLE_SCHEMA``, if any.

    Returns:
        The path, or ``None`` when the variable is unset or empty.

    Raises:
        FileNotFoundError: when the variable names a file that does not exist.
    """
    value = os.environ.get(SCHEMA_ENV_VAR, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{SCHEMA_ENV_VAR}={value} names no file; expected a local copy of {MONAI_SCHEMA_URL}.")
    return path


def verify_metadata_schema(meta_file: str | os.PathLike, schema_file: str | os.PathLike) -> None:
    """Validates a metadata file with MONAI's ``verify_metadata`` against a local schema copy.

    ``verify_metadata`` downloads the schema to its ``filepath`` unless a file is already there;
    pointing ``filepath`` at the local copy makes it run offline, without any substitute schema.

    Args:
        meta_file: the bundle's ``configs/metadata.json``.
        schema_file: a local copy of MONAI's schema (e.g. downloaded from :data:`MONAI_SCHEMA_URL`).

    Raises:
        FileNotFoundError: when either file is missing.
        ValueError: when the metadata does not validate (MONAI's message, naming the failing key).
    """

    for what, path in (("metadata file", meta_file), ("schema file", schema_file)):
        if not Path(path).is_file():
            raise FileNotFoundError(f"{what} {path} does not exist.")
    with warnings.catch_warnings():
        # the schema is the caller's local file, which MONAI would otherwise warn it cannot hash-check
        warnings.filterwarnings("ignore", message="No hash value provided", category=UserWarning)
        verify_metadata(meta_file=str(meta_file), filepath=str(schema_file))
