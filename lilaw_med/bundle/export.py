"""Exports a lilaw-med config (and optionally a trained run) as a MONAI bundle: :func:`export_bundle`.

This module puts the bundle together from :mod:`~lilaw_med.bundle.source` (the config and the run's
network), :mod:`~lilaw_med.bundle.configs` (the config files), :mod:`~lilaw_med.bundle.documents`
(README, LICENSE, logging.conf) and :mod:`~lilaw_med.bundle.metadata`. The bundle's folder and
how to run it: docs/bundle.md.

Example::

    result = export_bundle("runs/my-run/config.yaml", "my_bundle", run_dir="runs/my-run")
    print(result.files)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from lilaw_med.bundle import documents
from lilaw_med.bundle.configs import bundle_datalist, config_files
from lilaw_med.bundle.metadata import build_metadata, missing_metadata_keys

# exported bundles call these by their former dotted path ($lilaw_med.bundle.export.install_model, ...)
from lilaw_med.bundle.runtime import install_model, load_bundle_datalist, log_final_metrics  # noqa: F401
from lilaw_med.bundle.source import (
    ModelSpec,
    absolute_paths,
    check_no_config_syntax,
    from_run,
    input_spatial_shape,
    model_spec_from_config,
)
from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.presets import get_preset
from lilaw_med.errors import InputError
from lilaw_med.run.config import Config, load_config, validate_config
from lilaw_med.run.run_dir import RunDir
from lilaw_med.run.summary import RunSummary
from lilaw_med.training.data import prepare_datalist
from lilaw_med.utils import atomic_save_torch, atomic_write

__all__ = ["BundleExport", "copy_overlay", "export_bundle"]

logger = logging.getLogger(__name__)


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

    Example::

        result = export_bundle("runs/my-run/config.yaml", "my_bundle", run_dir="runs/my-run")
        result.files                                            # the files written
    """
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty; choose another folder or pass overwrite.")
    run = RunDir(run_dir) if run_dir is not None else None
    cfg = _resolved_config(config, run, base_dir)
    spec, state_dict, summary, datalist = _model_source(cfg, run, datalist)
    shape = list(spatial_shape) if spatial_shape else input_spatial_shape(cfg, spec.spatial_dims)
    if len(shape) != spec.spatial_dims:
        raise InputError(f"spatial_shape {shape} must have {spec.spatial_dims} entries (model.spatial_dims).")
    meta = _metadata(
        cfg, spec, shape, summary, task=task, description=description, version=version, authors=authors,
        copyright=copyright, value_range=value_range,
    )
    result = BundleExport(root=out.absolute(), metadata=meta, model=spec)
    _write_bundle(result, cfg, state_dict, license_file, authors, datalist)
    logger.info("bundle written to %s (%d files)", result.root, len(result.files))
    return result


def _resolved_config(
    config: Mapping[str, Any] | str | os.PathLike, run: RunDir | None, base_dir: str | os.PathLike | None
) -> dict[str, Any]:
    """The validated config with absolute paths; with the run's own config, the run's ``datalist.json``."""
    cfg = load_config(config) if isinstance(config, (str, os.PathLike)) else validate_config(config)
    own = run is not None and _is_own_config(config, run, base_dir)
    if base_dir is not None:
        base = Path(os.path.abspath(base_dir))
    else:
        base = Path(os.path.abspath(run.root)) if run is not None and own else Path.cwd()
    cfg = absolute_paths(cfg, base)
    if run is not None and run.datalist.is_file() and (own or not cfg["data"]["datalist"]):
        # the items the run trained on (absolute paths, ids, splits): sample data is never regenerated
        cfg["data"]["datalist"] = os.path.abspath(run.datalist)
    check_no_config_syntax(cfg)
    return cfg


def _model_source(
    cfg: Mapping[str, Any], run: RunDir | None, datalist: Any
) -> tuple[ModelSpec, Any, RunSummary, Any]:
    """The network, its trained weights (``None`` without a run), the run's summary and the datalist."""
    if run is not None:
        spec, state_dict, summary = from_run(cfg, run.root)
        if datalist is None and cfg["data"]["datalist"]:
            datalist = _read_config_datalist(cfg)
        return spec, state_dict, summary, datalist
    if datalist is None:
        datalist = prepare_datalist(cfg)
    return model_spec_from_config(cfg, datalist), None, RunSummary(), datalist


def _is_own_config(config: Mapping[str, Any] | str | os.PathLike, run: RunDir, base_dir: str | os.PathLike | None) -> bool:
    """Whether ``config`` is the run's own ``config.yaml``, whose relative paths belong to the run folder
    (never to the current one): given as that file, or with ``base_dir`` the run folder."""
    return (isinstance(config, (str, os.PathLike)) and Path(config).absolute() == run.config.absolute()) or (
        base_dir is not None and Path(base_dir).absolute() == run.root.absolute())


def _read_config_datalist(cfg: Mapping[str, Any]) -> Any:
    """The config's datalist, split as the run split it (the same classes, validation share and seed)."""
    typed = Config.from_mapping(cfg)
    data = typed.data
    return load_datalist(data.datalist, class_names=data.class_names, multi_label=bool(data.multi_label),
                         val_fraction=data.val_fraction, seed=typed.split_seed, strict=False)


def _metadata(
    cfg: Mapping[str, Any], spec: ModelSpec, shape: list[int | str], summary: RunSummary, *, task: str | None,
    description: str | None, version: str, authors: str, copyright: str | None, value_range: Sequence[float],
) -> dict[str, Any]:
    """``configs/metadata.json``: the preset's task and modality, the run's test metrics (see :func:`export_bundle`)."""
    preset = get_preset(cfg["data"]["preset"])
    lilaw_on = bool(cfg["lilaw"]["enabled"])
    meta = build_metadata(
        class_names=spec.class_names if spec.num_outputs > 1 else [f"P({spec.class_names[-1]})"],
        in_channels=spec.in_channels,
        spatial_shape=shape,
        task=task or f"{preset.task} trained on noisy labels" + (" with LiLAW" if lilaw_on else ""),
        description=description or _description(spec, lilaw_on),
        version=version,
        authors=authors,
        copyright=copyright or f"Copyright (c) {authors}",
        modality=preset.modality,
        value_range=value_range,
        multi_label=spec.multi_label,
        is_patch_data=preset.patches,
        eval_metrics=_eval_metrics(summary),
        data_source=_data_source(cfg),
    )
    calibration = _calibration(summary)
    if calibration:
        # the bundle's configs output the plain softmax; the run's calibration is recorded to apply by hand
        meta["lilaw_med_calibration"] = calibration
    missing = missing_metadata_keys(meta)
    if missing:  # a bug here, not a user error
        raise RuntimeError(f"exported metadata lacks {missing}.")
    return meta


def _description(spec: ModelSpec, lilaw_on: bool) -> str:
    """The metadata's default description: the network, its classes and how it was trained."""
    method = (
        "LiLAW learns three scalars (alpha, beta, delta) that weight every sample's loss by its difficulty, "
        "meta-updated on a validation batch after every training batch, which makes training robust to "
        "mislabeled samples."
        if lilaw_on
        else "Plain training (the baseline, LiLAW switched off)."
    )
    return f"A {spec.network} classifier ({', '.join(spec.class_names)}) trained with lilaw-med. {method}"


def _eval_metrics(summary: RunSummary) -> dict[str, float] | None:
    """The best model's test metrics (``None``: the run has no test split, or no run)."""
    test = summary.results("best").get("test") or {}
    metrics = {f"test_{k}": float(test[k]) for k in ("auroc", "accuracy", "balanced_accuracy") if k in test}
    return metrics or None


def _data_source(cfg: Mapping[str, Any]) -> str:
    """The datalist's file name only: absolute paths of the exporting machine stay out of the metadata."""
    if cfg["data"]["datalist"]:
        return f"lilaw-med datalist {Path(cfg['data']['datalist']).name}"
    return "lilaw-med synthetic sample data"


def _calibration(summary: RunSummary) -> dict[str, Any]:
    """The calibration of the model the bundle ships (best, else final); ``{}`` when there is none."""
    calibration = summary.calibration("best")
    if calibration.get("method", "none") == "none":
        return {}
    return {k: calibration[k] for k in ("method", "temperature", "threshold", "class_bias") if calibration.get(k) is not None}


def _write_bundle(
    result: BundleExport, cfg: Mapping[str, Any], state_dict: Mapping[str, torch.Tensor] | None,
    license_file: str | os.PathLike | None, authors: str, datalist: Any = None,
) -> None:
    """Writes the bundle's files under ``result.root``, listing each in ``result.files``."""
    spec, meta = result.model, result.metadata
    if spec is None:
        raise RuntimeError("an export without a model spec")  # a bug here, not a user error

    def write(rel: str, data: str | bytes) -> None:
        atomic_write(result.root / rel, data)
        result.files.append(rel)

    write("configs/metadata.json", json.dumps(meta, indent=4) + "\n")
    data_root = None
    if datalist is not None:
        content, data_root = bundle_datalist(datalist)
        write("configs/datalist.json", json.dumps(content, indent=1) + "\n")
    for name, text in config_files(spec, cfg, data_root).items():
        write(f"configs/{name}", text)
    write("configs/logging.conf", documents.logging_conf())
    write("docs/README.md", documents.readme(spec, meta, cfg, has_model=state_dict is not None))
    if license_file is not None:
        if not Path(license_file).is_file():
            raise FileNotFoundError(f"licence file {license_file} does not exist.")
        write("LICENSE", Path(license_file).read_bytes())
    else:
        write("LICENSE", documents.license_text(authors))
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
