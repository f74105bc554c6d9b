"""The documents of an exported bundle, rendered from the Jinja2 templates in ``bundle/templates/``:
``docs/README.md`` (the model, its calibration, the exact commands), ``LICENSE`` and
``configs/logging.conf`` (MONAI model-zoo bundles' standard file, which ``monai.bundle run``
applies: INFO to stdout; stdlib classes and ``sys.stdout`` only, which MONAI requires).

Example::

    text = readme(spec, metadata, lilaw_config, has_model=True)
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined

from lilaw_med.bundle.command import bundle_run_command
from lilaw_med.bundle.configs import MULTI_GPU_FILES, TRAIN_FILES
from lilaw_med.bundle.source import ModelSpec

__all__ = ["license_text", "logging_conf", "readme"]


def _environment() -> Environment:
    # plain text and Markdown, not HTML: nothing to escape; a missing value is an error, not a blank
    return Environment(loader=PackageLoader("lilaw_med.bundle", "templates"), autoescape=False, trim_blocks=True,
                       lstrip_blocks=True, keep_trailing_newline=True, undefined=StrictUndefined)


def readme(spec: ModelSpec, meta: Mapping[str, Any], lilaw_config: Mapping[str, Any], has_model: bool) -> str:
    """``docs/README.md``.

    Args:
        spec: the network.
        meta: the bundle's metadata (task, description, input shape, metrics, calibration, references).
        lilaw_config: the embedded config (its ``lilaw`` section is described).
        has_model: whether ``models/model.pt`` is shipped.

    Returns:
        The Markdown text.
    """
    commands = {
        "train": bundle_run_command(TRAIN_FILES),
        "evaluate": bundle_run_command(["configs/evaluate.yaml"]),
        "inference": bundle_run_command(["configs/inference.yaml"], extra=["--dataset_dir", "/path/to/images"]),
        "multi_gpu": bundle_run_command(MULTI_GPU_FILES, nproc=2),
    }
    return _environment().get_template("README.md.j2").render(
        meta=meta, spec=spec, shape=meta["network_data_format"]["inputs"]["image"]["spatial_shape"],
        classes=", ".join(f"{i}: {name}" for i, name in enumerate(spec.class_names)),
        lilaw=lilaw_config["lilaw"], has_model=has_model, calibration=meta.get("lilaw_med_calibration"),
        commands=commands,
    )


def license_text(authors: str, year: int | None = None) -> str:
    """The Apache-2.0 notice shipped as ``LICENSE`` (with a word on the training data's own terms).

    Args:
        authors: the copyright holders.
        year: the copyright year (default: this year).

    Returns:
        The text.
    """
    return _environment().get_template("LICENSE.j2").render(
        year=year or datetime.date.today().year, authors=authors
    )


def logging_conf() -> str:
    """``configs/logging.conf``."""
    return _environment().get_template("logging.conf").render()
