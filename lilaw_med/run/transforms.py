"""A run's transform options and its evaluation chain, from its config: the one place they are put together.

Training (:func:`lilaw_med.training.data.build_data`), evaluation and prediction
(:class:`lilaw_med.workflows.trained_run.TrainedRun`), cross-fitting and the audit's thumbnails and
review page all build a run's evaluation chain through :func:`evaluation_transforms`, so an image
is read the same way everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lilaw_med.data.presets import get_preset
from lilaw_med.run.config import Config

__all__ = ["evaluation_transforms", "transform_options"]


def transform_options(config: Config | Mapping[str, Any]) -> dict[str, Any]:
    """``data.options`` completed with the preset's defaults, ``multi_label`` kept in step with ``data``.

    Args:
        config: a config (validated here when it is a mapping).

    Returns:
        The options for :func:`lilaw_med.data.transforms.build_transforms`.
    """
    cfg = Config.from_mapping(config)
    options = get_preset(cfg.data.preset).default_options()
    options.update(cfg.data.options)
    options["multi_label"] = bool(cfg.data.multi_label)
    return options


def evaluation_transforms(config: Config | Mapping[str, Any], **overrides: Any) -> Any:
    """The run's evaluation chain (a MONAI ``Compose``; its first transform loads the image).

    Args:
        config: the run's config (validated here when it is a mapping).
        **overrides: transform options to change, e.g. ``spatial_size=None`` to see an image at its
            own size (the review page).

    Returns:
        The chain of :func:`lilaw_med.data.transforms.build_transforms` with ``train=False``.

    Raises:
        ValueError: on an invalid option.

    Example::

        chain = evaluation_transforms(RunDir("runs/first").read_config())
        image = chain({"id": "x", "image": "x.png", "label": 0})["image"]
    """
    # MONAI's transforms (seconds to import) load only when a chain is built: an audit that shows no
    # image, `lilaw-med review --merge` and the command line's parser read run folders without them
    from lilaw_med.data.transforms import build_transforms

    cfg = Config.from_mapping(config)
    return build_transforms(cfg.data.preset, {**transform_options(cfg), **overrides}, train=False)
