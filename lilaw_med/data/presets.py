"""Modality presets: one :class:`PresetSpec` per preset, the only place that knows a preset's facts.

A preset names how images of one kind are read and prepared (``data.preset`` in a config): its
spatial dimensions, its default input channels, its transform options and their defaults, the
intensity scalings it offers, the packaged YAML that documents it, the key of its generated
sample data, and the words and DICOM modality a bundle's metadata uses for it. The transforms
(:mod:`lilaw_med.data.transforms`), the config validation, training, the bundle exporter and the
CLI all read this registry; none keeps a table of its own.

Adding a preset is one :func:`register_preset` call (below, for the built-in ones) plus its YAML
in ``configs/``. A preset's transform chain is assembled from its options by
:func:`lilaw_med.data.transforms.build_transforms`: an option the preset declares (e.g.
``orientation``) switches the matching step on.

This module imports no MONAI, so validating a config stays cheap.
"""

from __future__ import annotations

import copy
import importlib.resources
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lilaw_med.errors import InputError

if TYPE_CHECKING:
    from importlib.resources.abc import Traversable

__all__ = ["AUGMENT_DEFAULTS", "PRESETS", "PresetSpec", "find_preset", "get_preset", "register_preset"]

AUGMENT_DEFAULTS: dict[str, Any] = {
    "flip": False,  # random flips along every spatial axis (p=0.5 each)
    "rotate90": False,  # random multiples of 90 degrees in the first two spatial axes (p=0.5)
    "affine": False,  # small random affine (rotation, scaling), p=0.5
    "affine_rotate_deg": 10.0,
    "affine_scale": 0.1,
}
"""Augmentation options every preset has, all off by default (the LiLAW method needs none)."""

# options every preset has; a preset's own options must not redefine them
_SHARED_OPTIONS = ("channels", "multi_label", *AUGMENT_DEFAULTS)


@dataclass(frozen=True)
class PresetSpec:
    """Everything that differs between two modality presets.

    Attributes:
        name: the value of ``data.preset``.
        spatial_dims: 2 or 3: the images' spatial dimensions and the network's.
        channels: the channels the images are read with and the default ``channels`` option
            (the network's input channels unless ``data.options.channels`` or ``model.in_channels``
            say otherwise): 1 (grey) or 3 (RGB).
        intensities: the ``intensity`` option's allowed values (its default is in ``options``).
        options: the preset's own transform options and their defaults; with ``channels``,
            ``multi_label`` and :data:`AUGMENT_DEFAULTS` they are the valid option names. Must hold
            ``spatial_size`` (the network's input size; ``None`` keeps each image's own size) and
            ``intensity``.
        config_file: the documented YAML of the preset: a file name in ``lilaw_med.configs`` (the
            repository's ``configs/``), or an absolute path for a preset registered from outside.
        task: one line naming the task, for a bundle's metadata (e.g. "2D radiology image classification").
        modality: the DICOM modality of a bundle's metadata (``"n/a"`` when the preset mixes several).
        sample_key: the key of :func:`lilaw_med.data.sample.write_sample_data` whose datalist
            ``data.sample_data: true`` uses; ``None`` when the preset has no sample data.
        patches: items may be patches of whole-slide images (``location`` keys), and ``lilaw-med
            predict`` tiles whole slides.
    """

    name: str
    spatial_dims: int
    channels: int
    intensities: tuple[str, ...]
    options: Mapping[str, Any]
    config_file: str
    task: str
    modality: str = "n/a"
    sample_key: str | None = None
    patches: bool = False

    def default_options(self) -> dict[str, Any]:
        """The preset's transform options at their defaults (their keys are the valid option names).

        Returns:
            A new dict of option name -> default value.
        """
        return copy.deepcopy({**self.options, "channels": self.channels, "multi_label": False, **AUGMENT_DEFAULTS})

    def config_resource(self) -> Traversable:
        """The preset's YAML: ``lilaw_med.configs/<config_file>``, or the absolute path itself."""
        path = Path(self.config_file)
        if path.is_absolute():
            return path
        return importlib.resources.files("lilaw_med.configs").joinpath(self.config_file)

    @property
    def config_name(self) -> str:
        """The YAML's stem (``pathology_patch``), which also names the preset's pipeline module."""
        return Path(self.config_file).stem


PRESETS: dict[str, PresetSpec] = {}
"""The registered presets by name; read it, extend it with :func:`register_preset`."""


def register_preset(spec: PresetSpec) -> PresetSpec:
    """Adds a preset to :data:`PRESETS`.

    Args:
        spec: the preset.

    Returns:
        ``spec``.

    Raises:
        ValueError: when the name is taken, or the specification contradicts itself (dimensions,
            channels, a missing ``spatial_size``/``intensity`` option, an intensity default that is
            not one of ``intensities``, an option that shadows a shared one).
    """
    if spec.name in PRESETS:
        raise ValueError(f"preset {spec.name!r} is registered already.")
    if spec.spatial_dims not in (2, 3):
        raise ValueError(f"preset {spec.name!r}: spatial_dims must be 2 or 3 but is {spec.spatial_dims}.")
    if spec.channels not in (1, 3):
        raise ValueError(f"preset {spec.name!r}: channels must be 1 or 3 but is {spec.channels}.")
    missing = {"spatial_size", "intensity"} - set(spec.options)
    if missing:
        raise ValueError(f"preset {spec.name!r}: options must hold {sorted(missing)}.")
    if spec.options["intensity"] not in spec.intensities:
        raise ValueError(
            f"preset {spec.name!r}: the default intensity {spec.options['intensity']!r} must be one of {spec.intensities}."
        )
    shadowed = sorted(set(spec.options) & set(_SHARED_OPTIONS))
    if shadowed:
        raise ValueError(f"preset {spec.name!r}: options {shadowed} are shared by every preset; set them elsewhere.")
    PRESETS[spec.name] = spec
    return spec


def get_preset(name: str) -> PresetSpec:
    """The registered preset called ``name``.

    Raises:
        InputError: for an unknown preset (listing the registered ones).
    """
    try:
        return PRESETS[name]
    except (KeyError, TypeError):
        raise InputError(f"preset must be one of {sorted(PRESETS)} but is {name!r}.") from None


def find_preset(name: str) -> PresetSpec | None:
    """The preset called ``name`` or whose YAML (and pipeline) is called ``name`` (``pathology_patch``).

    Returns:
        The preset, or ``None`` when no preset answers to the name.
    """
    if name in PRESETS:
        return PRESETS[name]
    return next((spec for spec in PRESETS.values() if spec.config_name == name), None)


register_preset(
    PresetSpec(
        name="radiology_2d",
        spatial_dims=2,
        channels=1,  # 1 grey (colour averaged); the option 3 repeats grey (ImageNet-style networks)
        intensities=("percentile", "window", "dicom_window", "minmax", "none"),
        options={
            "spatial_size": [224, 224],
            "intensity": "percentile",
            "percentiles": [0.5, 99.5],
            "window": None,  # [center, width] for intensity "window"
            "invert_monochrome1": True,
            "resize_mode": "area",
        },
        config_file="radiology_2d.yaml",
        task="2D radiology image classification",
        sample_key="radiology_2d",
    )
)
register_preset(
    PresetSpec(
        name="radiology_3d",
        spatial_dims=3,
        channels=1,
        intensities=("ct_window", "percentile", "minmax", "none"),
        options={
            "spatial_size": [96, 96, 96],
            "orientation": "RAS",  # None keeps the file's orientation
            "pixdim": None,  # e.g. [1.5, 1.5, 2.0] mm; None keeps the file's spacing
            "intensity": "percentile",
            "percentiles": [0.5, 99.5],
            "window": [40.0, 400.0],  # [center, width] in HU for intensity "ct_window" (soft tissue)
            "invert_monochrome1": True,
            "resize": "resize",  # resize | crop_or_pad
            "resize_mode": "area",
        },
        config_file="radiology_3d.yaml",
        task="3D radiology volume classification",
        sample_key="radiology_3d",
    )
)
register_preset(
    PresetSpec(
        name="pathology",
        spatial_dims=2,
        channels=3,
        intensities=("scale", "minmax", "none"),
        options={
            "spatial_size": None,  # None keeps the tile size (tiles of one data set share a size)
            "intensity": "scale",  # scale (x/255) | minmax | none
            "resize_mode": "area",
        },
        config_file="pathology_patch.yaml",
        task="pathology patch classification",
        modality="SM",
        sample_key="pathology",
        patches=True,
    )
)
