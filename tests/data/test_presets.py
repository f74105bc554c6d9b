"""The preset registry: one specification per preset, checked when it is registered, read everywhere."""

from __future__ import annotations

import pytest

from lilaw_med.data.presets import (
    AUGMENT_DEFAULTS,
    PRESETS,
    PresetSpec,
    find_preset,
    get_preset,
    register_preset,
)
from lilaw_med.run.config import ConfigError, validate_config
from lilaw_med.training.model import input_shape, model_shape


def _spec(**changes: object) -> PresetSpec:
    fields = {
        "name": "tiny_grey", "spatial_dims": 2, "channels": 1, "intensities": ("minmax", "none"),
        "options": {"spatial_size": [16, 16], "intensity": "minmax"}, "config_file": "tiny_grey.yaml",
        "task": "tiny grey image classification",
    }
    return PresetSpec(**{**fields, **changes})  # type: ignore[arg-type]


def test_builtin_presets_state_their_dims_channels_and_files() -> None:
    facts = {name: (s.spatial_dims, s.channels, s.config_file, s.sample_key, s.patches) for name, s in PRESETS.items()}
    assert facts == {
        "radiology_2d": (2, 1, "radiology_2d.yaml", "radiology_2d", False),
        "radiology_3d": (3, 1, "radiology_3d.yaml", "radiology_3d", False),
        "pathology": (2, 3, "pathology_patch.yaml", "pathology", True),
    }
    assert find_preset("pathology_patch") is find_preset("pathology") is PRESETS["pathology"]
    assert find_preset("ultrasound_4d") is None
    for spec in PRESETS.values():
        assert spec.config_resource().is_file()


def test_default_options_add_the_shared_ones_to_the_presets_own() -> None:
    opts = get_preset("pathology").default_options()
    assert opts == {"spatial_size": None, "intensity": "scale", "resize_mode": "area", "channels": 3,
                    "multi_label": False, **AUGMENT_DEFAULTS}
    opts["spatial_size"] = [1, 1]
    assert get_preset("pathology").default_options()["spatial_size"] is None  # a copy every time


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "radiology_2d"}, "registered already"),
        ({"spatial_dims": 4}, "spatial_dims must be 2 or 3"),
        ({"channels": 2}, "channels must be 1 or 3"),
        ({"options": {"intensity": "minmax"}}, r"options must hold \['spatial_size'\]"),
        ({"options": {"spatial_size": None, "intensity": "percentile"}}, "default intensity 'percentile' must be one of"),
        ({"options": {"spatial_size": None, "intensity": "none", "flip": True}}, r"options \['flip'\] are shared"),
    ],
)
def test_a_contradictory_specification_is_refused(changes: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_preset(_spec(**changes))
    assert "tiny_grey" not in PRESETS


def test_a_registered_preset_is_a_valid_data_preset_with_its_own_options(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = {"data": {"preset": "tiny_grey", "sample_data": True, "options": {"spatial_size": [8, 8]}}}
    with pytest.raises(ConfigError, match="'data.preset' must be one of"):
        validate_config(raw)
    monkeypatch.setitem(PRESETS, "tiny_grey", _spec())
    assert validate_config(raw)["data"]["preset"] == "tiny_grey"
    with pytest.raises(ConfigError, match="'data.options.percentiles' is unknown for preset 'tiny_grey'"):
        validate_config({"data": {"preset": "tiny_grey", "sample_data": True, "options": {"percentiles": [1, 99]}}})


def test_the_model_shape_follows_the_preset_the_channels_option_and_the_loss(monkeypatch: pytest.MonkeyPatch) -> None:
    base = {"data": {"preset": "radiology_3d", "sample_data": True}}
    assert input_shape(base) == (3, 1)
    assert input_shape({"data": {"preset": "pathology", "sample_data": True}}) == (2, 3)
    grey_as_rgb = {"data": {"preset": "radiology_2d", "sample_data": True, "options": {"channels": 3}}}
    assert input_shape(grey_as_rgb) == (2, 3)
    assert input_shape({**grey_as_rgb, "model": {"in_channels": 1, "spatial_dims": 3}}) == (3, 1)
    assert model_shape(base, 4).num_outputs == 4
    assert model_shape({**base, "loss": {"name": "bce"}}, 2).num_outputs == 1  # one logit for a binary task
    multi = {"data": {"preset": "radiology_3d", "sample_data": True, "multi_label": True}, "loss": {"name": "bce"}}
    assert model_shape(multi, 5).num_outputs == 5  # one sigmoid per label
    with pytest.raises(ConfigError, match="needs 2 classes"):
        model_shape({**base, "loss": {"name": "bce"}}, 3)
    with pytest.raises(ConfigError, match="at least 2"):
        model_shape(base, 1)
