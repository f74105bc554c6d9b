"""Preset pipeline: Radiology 3D: CT / MR volumes (NIfTI files or DICOM series folders), 3D networks.

A thin preset over :func:`lilaw_med.training.run.run_training`: its config is the packaged
``lilaw_med/configs/radiology_3d.yaml`` (copy it with ``lilaw-med init-config radiology_3d -o my.yaml``).

Example:
    >>> from lilaw_med.pipelines import radiology_3d
    >>> result = radiology_3d.run(overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from lilaw_med.pipelines._preset import Preset

__all__ = ["build", "default_config", "run"]

_PRESET = Preset("radiology_3d")  # its specification: lilaw_med.data.presets

# the preset's API, shared by every preset (see Preset): its validated config (the packaged YAML
# with --set-style overrides), its MONAI components, and a training run that writes a run folder
default_config = _PRESET.config
build = _PRESET.build
run = _PRESET.run
