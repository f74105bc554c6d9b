"""Preset pipeline: Pathology patches: RGB H&E tiles (PNG/JPEG/TIFF) or patches of whole slides.

A thin preset over :func:`lilaw_med.training.run.run_training`: its config is the packaged
``lilaw_med/configs/pathology_patch.yaml`` (copy it with ``lilaw-med init-config pathology_patch -o my.yaml``).

Example:
    >>> from lilaw_med.pipelines import pathology_patch
    >>> result = pathology_patch.run(overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from lilaw_med.pipelines._preset import Preset

__all__ = ["build", "default_config", "run"]

_PRESET = Preset("pathology")  # its specification: lilaw_med.data.presets

# the preset's API, shared by every preset (see Preset): its validated config (the packaged YAML
# with --set-style overrides), its MONAI components, and a training run that writes a run folder
default_config = _PRESET.config
build = _PRESET.build
run = _PRESET.run
