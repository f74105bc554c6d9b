"""Shared body of the preset pipelines: each preset is its specification and packaged YAML plus the generic run."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lilaw_med.data.presets import get_preset
from lilaw_med.run.config import ConfigError, apply_overrides, load_preset_config, validate_config
from lilaw_med.training.run import RunResult, run_training
from lilaw_med.training.trainer import TrainingComponents, build_components

__all__ = ["Preset"]


class Preset:
    """A preset pipeline: a registered preset (:mod:`lilaw_med.data.presets`) and its packaged config.

    Args:
        name: the preset's name (``data.preset``); its YAML is the spec's ``config_file``.
    """

    def __init__(self, name: str) -> None:
        self.spec = get_preset(name)

    def config(self, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The preset's validated config: the packaged YAML (or ``base``) with ``--set``-style overrides.

        Raises:
            ConfigError: when the result is invalid or names another transform preset.
        """
        if base is None:
            cfg = load_preset_config(self.spec.config_file, overrides)
        else:
            cfg = validate_config(apply_overrides(base, overrides))
        if cfg["data"]["preset"] != self.spec.name:
            raise ConfigError(
                f"config field 'data.preset' must be '{self.spec.name}' for this pipeline but is '{cfg['data']['preset']}'."
            )
        return cfg

    def build(self, config: Mapping[str, Any] | None = None, overrides: Sequence[str] = (), **kwargs: Any) -> TrainingComponents:
        """MONAI components (datasets, transforms, network, SupervisedTrainer + LiLAWLoss + LiLAWHandler) of the preset."""
        return build_components(self.config(overrides, base=config), **kwargs)

    def run(
        self,
        config: Mapping[str, Any] | None = None,
        output_dir: str | os.PathLike | None = None,
        overrides: Sequence[str] = (),
        **kwargs: Any,
    ) -> RunResult:
        """Trains the preset and writes its run folder (see :func:`lilaw_med.training.run.run_training`)."""
        return run_training(self.config(overrides, base=config), output_dir, **kwargs)
