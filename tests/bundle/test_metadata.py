"""metadata.json content: every mandatory key of the MONAI Bundle Specification."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lilaw_med import __version__
from lilaw_med.bundle.metadata import (
    MANDATORY_KEYS,
    SCHEMA_ENV_VAR,
    TENSOR_KEYS,
    build_metadata,
    missing_metadata_keys,
    schema_path_from_env,
    verify_metadata_schema,
)
from tests.bundle.schema import SCHEMA_COPY, metadata_schemas

# the specification's lists, restated here so that a change in the module cannot pass unnoticed
SPEC_TOP_LEVEL = {
    "version", "monai_version", "pytorch_version", "numpy_version", "required_packages_version",
    "task", "description", "authors", "copyright", "network_data_format",
}
SPEC_TENSOR = {
    "type", "format", "modality", "num_channels", "spatial_shape", "dtype", "value_range", "is_patch_data",
    "channel_def",
}


def _meta(**kwargs) -> dict:
    args = dict(class_names=["benign", "malignant"], in_channels=1, spatial_shape=[28, 28], task="t", description="d")
    args.update(kwargs)
    return build_metadata(**args)


def test_mandatory_key_lists_cover_the_specification() -> None:
    assert SPEC_TOP_LEVEL <= set(MANDATORY_KEYS)
    assert SPEC_TENSOR <= set(TENSOR_KEYS)


def test_built_metadata_has_every_mandatory_key_and_lilaw_med_version() -> None:
    meta = _meta(value_range=[0, 1])
    assert missing_metadata_keys(meta) == []
    assert meta["required_packages_version"]["lilaw-med"] == __version__
    assert "optional_packages_version" not in meta  # MONAI renames it onto required_packages_version
    json.dumps(meta)  # serialisable as is
    image = meta["network_data_format"]["inputs"]["image"]
    pred = meta["network_data_format"]["outputs"]["pred"]
    assert (image["num_channels"], image["spatial_shape"], image["dtype"]) == (1, [28, 28], "float32")
    assert (pred["num_channels"], pred["dtype"]) == (2, "float32")
    assert pred["channel_def"] == {"0": "benign", "1": "malignant"}


def test_missing_keys_are_named_by_their_path() -> None:
    meta = _meta()
    del meta["copyright"]
    del meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    del meta["network_data_format"]["inputs"]["image"]
    assert missing_metadata_keys(meta) == [
        "copyright",
        "network_data_format.inputs.image",
        "network_data_format.outputs.pred.channel_def",
    ]


@pytest.mark.parametrize(
    "kwargs, match",
    [({"class_names": []}, "class_names"), ({"in_channels": 0}, "in_channels"), ({"spatial_shape": []}, "spatial_shape")],
)
def test_build_metadata_rejects_bad_shapes(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        _meta(**kwargs)


def test_schema_env_var_naming_a_missing_file_is_an_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(SCHEMA_ENV_VAR, str(tmp_path / "nope.json"))
    with pytest.raises(FileNotFoundError, match=SCHEMA_ENV_VAR):
        schema_path_from_env()
    monkeypatch.setenv(SCHEMA_ENV_VAR, "")
    assert schema_path_from_env() is None


@pytest.mark.parametrize("schema", metadata_schemas(), ids=lambda p: p.name)
def test_metadata_validates_with_monais_verify_metadata_offline(tmp_path: Path, schema: Path) -> None:
    meta_file = tmp_path / "metadata.json"
    meta_file.write_text(json.dumps(_meta(value_range=[0, 1])))
    verify_metadata_schema(meta_file, schema)  # the local file: no download
    broken = _meta()
    del broken["task"]
    meta_file.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="task"):
        verify_metadata_schema(meta_file, schema)
    wrong_type = _meta()
    wrong_type["network_data_format"]["inputs"]["image"]["num_channels"] = "1"
    meta_file.write_text(json.dumps(wrong_type))
    with pytest.raises(ValueError, match="'1' is not of type 'integer'"):
        verify_metadata_schema(meta_file, schema)


def test_the_test_schema_requires_what_the_specification_lists() -> None:
    schema = json.loads(SCHEMA_COPY.read_text())
    assert set(schema["required"]) == SPEC_TOP_LEVEL | {"schema"}
    assert set(schema["definitions"]["tensor"]["required"]) == SPEC_TENSOR
