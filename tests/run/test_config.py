"""Config schema: defaults, unknown keys with suggestions, types and ranges, overrides."""

from __future__ import annotations

import importlib.resources

import pytest
import yaml

from lilaw_med import LiLAWHandler, LiLAWLoss, LiLAWWeighting
from lilaw_med.errors import InputError
from lilaw_med.run.config import (
    SCHEMA,
    ConfigError,
    apply_overrides,
    config_differences,
    default_config,
    dump_config,
    load_config,
    parse_override,
    validate_config,
)

MINIMAL = {"data": {"sample_data": True}}


def test_defaults_are_filled_and_lilaw_defaults_come_from_the_core() -> None:
    cfg = validate_config(MINIMAL)
    assert cfg["lilaw"]["alpha"] == LiLAWWeighting().alpha.item() == 2.0
    assert cfg["lilaw"]["lr"] == 0.01 and cfg["lilaw"]["weight_decay"] == 0.01
    assert cfg["lilaw"]["val_mode"] == "train" and cfg["lilaw"]["warmup_epochs"] == 1
    import inspect

    assert cfg["lilaw"]["detach_weights"] == inspect.signature(LiLAWLoss).parameters["detach_weights"].default
    handler = inspect.signature(LiLAWHandler).parameters  # config.py writes them out to stay import-light
    for key, param in (("lr", "lr"), ("weight_decay", "weight_decay"), ("val_mode", "val_mode"), ("meta_every", "every")):
        assert cfg["lilaw"][key] == handler[param].default, key
    assert (cfg["optim"]["name"], cfg["optim"]["lr"], cfg["optim"]["weight_decay"]) == ("adam", 1e-3, 1e-4)
    assert cfg["train"]["batch_size"] == 64 and cfg["model"]["network"] == "small_cnn"
    assert set(cfg) == set(default_config())


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({**MINIMAL, "trian": {}}, "section 'trian' is unknown; did you mean 'train'?"),
        ({**MINIMAL, "train": {"batchsize": 8}}, "'train.batchsize' is unknown; did you mean 'batch_size'?"),
        ({**MINIMAL, "lilaw": {"enabeld": False}}, "did you mean 'enabled'?"),
    ],
)
def test_unknown_keys_are_named_with_the_closest_valid_one(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("?", r"\?").replace("(", r"\(")):
        validate_config(raw)


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("train", "batch_size", "64", "'train.batch_size' must be integer but is str '64'"),
        ("train", "epochs", 0, "'train.epochs' must be >= 1 but is 0"),
        ("train", "epochs", True, "'train.epochs' must be integer but is the boolean True"),
        ("optim", "lr", 0.0, "'optim.lr' must be > 0.0"),
        ("model", "network", "resnet19", "must be one of .* but is 'resnet19'; did you mean 'resnet18'"),
        ("data", "val_fraction", 1.5, "'data.val_fraction' must be <= 0.9"),
        ("lilaw", "lr", float("nan"), "'lilaw.lr' must be finite"),
        ("loss", "class_weights", [1.0, "a"], r"'loss.class_weights\[1\]' must be"),
    ],
)
def test_bad_types_and_ranges_name_the_field(section: str, key: str, value, message: str) -> None:
    raw = {**MINIMAL, section: {**MINIMAL.get(section, {}), key: value}}
    with pytest.raises(ConfigError, match=message):
        validate_config(raw)


def test_ints_are_accepted_for_floats_and_stored_as_floats() -> None:
    cfg = validate_config({**MINIMAL, "optim": {"lr": 1}})
    assert cfg["optim"]["lr"] == 1.0 and isinstance(cfg["optim"]["lr"], float)


def test_inconsistent_fields_are_rejected() -> None:
    with pytest.raises(ConfigError, match="data.datalist' is required"):
        validate_config({})
    with pytest.raises(ConfigError, match="'lilaw.delta' must be >= lilaw.beta"):
        validate_config({**MINIMAL, "lilaw": {"beta": 3.0, "delta": 2.0}})
    with pytest.raises(ConfigError, match="'model.weights' must name a local weights file"):
        validate_config({**MINIMAL, "model": {"pretrained": True}})
    with pytest.raises(ConfigError, match="'loss.name' must be 'bce' when data.multi_label"):
        validate_config({"data": {"sample_data": True, "multi_label": True}})


def test_transform_options_are_checked_against_the_preset() -> None:
    with pytest.raises(ConfigError, match="'data.options.spatial_sise' is unknown .*did you mean 'spatial_size'"):
        validate_config({"data": {"sample_data": True, "options": {"spatial_sise": [32, 32]}}})


def test_overrides_are_parsed_as_yaml_values() -> None:
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("lilaw.enabled=false") == ("lilaw.enabled", False)
    assert parse_override("data.options.spatial_size=[32, 32]") == ("data.options.spatial_size", [32, 32])
    assert parse_override("data.datalist=null") == ("data.datalist", None)
    assert parse_override("data.datalist=a=b.json") == ("data.datalist", "a=b.json")
    with pytest.raises(ConfigError, match="must look like section.key=value"):
        parse_override("train.epochs")
    out = apply_overrides(MINIMAL, ["train.epochs=2", "data.options.flip=true"])
    assert out["train"]["epochs"] == 2 and out["data"]["options"] == {"flip": True}
    assert MINIMAL == {"data": {"sample_data": True}}  # not modified


def test_yaml_tags_are_never_constructed() -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_override("output.name=!!python/object/apply:os.system ['true']")


def test_packaged_presets_validate_and_round_trip(tmp_path) -> None:
    for name in ("radiology_2d.yaml", "radiology_3d.yaml", "pathology_patch.yaml"):
        text = importlib.resources.files("lilaw_med.configs").joinpath(name).read_text()
        path = tmp_path / name
        path.write_text(text)
        cfg = load_config(path)
        again = tmp_path / f"resolved_{name}"
        again.write_text(dump_config(cfg))
        assert load_config(again) == cfg == validate_config(yaml.safe_load(dump_config(cfg)))


def test_load_config_names_the_file(tmp_path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("data: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: config section 'data' must be a mapping"):
        load_config(path)
    with pytest.raises(FileNotFoundError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_config_differences_names_each_changed_key_with_both_values() -> None:
    a = {"train": {"seed": 0, "epochs": 2}, "data": {"options": {}, "preset": "radiology_2d"}}
    b = {"train": {"seed": 5, "epochs": 2}, "data": {"options": {"spatial_size": [32, 32]}, "preset": "radiology_2d"}}
    assert config_differences(a, b) == {
        "data.options.spatial_size": (None, [32, 32]),  # absent on one side counts as None
        "train.seed": (0, 5),
    }
    assert list(config_differences(b, a)) == ["data.options.spatial_size", "train.seed"]  # sorted keys
    assert config_differences(a, a) == {}
    assert config_differences({"x": [1, 2]}, {"x": [1, 3]}) == {"x": ([1, 2], [1, 3])}  # a list is one value


def test_config_errors_are_input_errors_and_resumable_is_a_field_property() -> None:
    with pytest.raises(InputError, match="config field 'train.epochs' must be >= 1 but is 0"):
        validate_config({"data": {"sample_data": True}, "train": {"epochs": 0}})
    assert issubclass(ConfigError, InputError) and issubclass(ConfigError, ValueError)
    assert SCHEMA["train"]["epochs"].resumable and SCHEMA["train"]["seed"].resumable is None
