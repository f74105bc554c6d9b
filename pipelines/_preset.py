"""Shared body of the preset pipelines: each preset is its packaged YAML plus the generic builder."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from lilaw_med.training.builder import RunResult, TrainingComponents, build_components, run_training
from lilaw_med.training.config import apply_overrides, load_preset_config, validate_config

__all__ = ["Preset"]


class Preset:
    """A preset pipeline: a packaged config file and the transform preset it must use.

    Args:
        config_file: the YAML in ``lilaw_med.configs``.
        data_preset: the transform preset (``data.preset``) the pipeline is for.
    """

    def __init__(self, config_file: str, data_preset: str) -> None:
        self.config_file = config_file
        self.data_preset = data_preset

    def config(self, overrides: Sequence[str] = (), base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The preset's validated config: the packaged YAML (or ``base``) with ``--set``-style overrides.

        Raises:
            ConfigError: when the result is invalid or names another transform preset.
        """
        if base is None:
            cfg = load_preset_config(self.config_file, overrides)
        else:
            cfg = validate_config(apply_overrides(base, overrides))
        if cfg["data"]["preset"] != self.data_preset:
            from lilaw_med.training.config import ConfigError

            raise ConfigError(
                f"config field 'data.preset' must be '{self.data_preset}' for this pipeline but is '{cfg['data']['preset']}'."
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
        """Trains the preset and writes its run folder (see :func:`lilaw_med.training.builder.run_training`)."""
        return run_training(self.config(overrides, base=config), output_dir, **kwargs)
