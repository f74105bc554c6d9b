"""Preset pipeline: Radiology 2D: CR / DX / US / MG grey images (DICOM, PNG, TIFF, 2D NIfTI), small CNN or MONAI ResNet/DenseNet/EfficientNet in 2D.

A thin preset over :func:`lilaw_med.training.run.run_training`: its config is the packaged
``lilaw_med/configs/radiology_2d.yaml`` (copy it with ``lilaw-med init-config radiology_2d -o my.yaml``).

Example:
    >>> from lilaw_med.pipelines import radiology_2d
    >>> result = radiology_2d.run(overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from lilaw_med.pipelines._preset import Preset

__all__ = ["build", "default_config", "run"]

_PRESET = Preset("radiology_2d")  # its specification: lilaw_med.data.presets

# the preset's API, shared by every preset (see Preset): its validated config (the packaged YAML
# with --set-style overrides), its MONAI components, and a training run that writes a run folder
default_config = _PRESET.config
build = _PRESET.build
run = _PRESET.run
