"""Preset pipeline: Radiology 3D: CT / MR volumes (NIfTI files or DICOM series folders), 3D networks.

A thin preset over :mod:`lilaw_med.training.builder`: its config is the packaged
``lilaw_med/configs/radiology_3d.yaml`` (copy it with ``lilaw-med init-config radiology_3d -o my.yaml``).

Example:
    >>> from lilaw_med.pipelines import radiology_3d
    >>> result = radiology_3d.run(overrides=["train.epochs=1"])  # doctest: +SKIP
"""

from lilaw_med.pipelines._preset import Preset

__all__ = ["CONFIG_FILE", "DATA_PRESET", "build", "default_config", "run"]

CONFIG_FILE = "radiology_3d.yaml"
DATA_PRESET = "radiology_3d"
_PRESET = Preset(CONFIG_FILE, DATA_PRESET)

# the preset's API, shared by every preset (see Preset): its validated config (the packaged YAML
# with --set-style overrides), its MONAI components, and a training run that writes a run folder
default_config = _PRESET.config
build = _PRESET.build
run = _PRESET.run
