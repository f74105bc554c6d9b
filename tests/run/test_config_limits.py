"""Config limits: sizes that would allocate tens of GB, integers that overflow later, YAML nested
20,000 deep, binary files: each is refused up front with one line naming the field or the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lilaw_med.cli import main
from lilaw_med.run.config import (
    MAX_CONFIG_DEPTH,
    MAX_SPATIAL_VOXELS,
    ConfigError,
    load_config,
    parse_override,
    validate_config,
)

MINIMAL = {"data": {"sample_data": True}}


@pytest.mark.parametrize(
    ("preset", "size", "message"),
    [
        ("radiology_2d", [100000, 100000], "asks for 10000000000 pixels per image (100000x100000), more than the limit"),
        ("radiology_3d", [1024, 1024, 256], "asks for 268435456 pixels per image (1024x1024x256)"),
        ("radiology_3d", 600, "asks for 216000000 pixels per image (600x600x600)"),
        ("radiology_2d", [64, 0], "must be 2 positive integers (or null) for preset 'radiology_2d' but is [64, 0]"),
        ("radiology_3d", [64, 64], "must be 3 positive integers (or null) for preset 'radiology_3d' but is [64, 64]"),
        ("radiology_2d", [64, True], "must be 2 positive integers"),
    ],
)
def test_spatial_size_is_bounded_before_anything_is_allocated(preset: str, size: object, message: str) -> None:
    config = {"data": {"sample_data": True, "preset": preset, "options": {"spatial_size": size}}}
    with pytest.raises(ConfigError, match="config field 'data.options.spatial_size'") as e:
        validate_config(config)
    assert message in str(e.value)
    # the limit itself is allowed (a 512^3 volume), as is null (each image keeps its size)
    cube = round(MAX_SPATIAL_VOXELS ** (1 / 3))
    validate_config({"data": {"sample_data": True, "preset": "radiology_3d", "options": {"spatial_size": [cube] * 3}}})
    validate_config({"data": {"sample_data": True, "preset": "radiology_2d", "options": {"spatial_size": None}}})


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.batch_size=99999999999999999999", "'train.batch_size' must fit in a 64-bit integer but is 99999999999999999999"),
        ("train.batch_size=65537", "'train.batch_size' must be <= 65536"),
        ("lilaw.val_batch_size=100000", "'lilaw.val_batch_size' must be <= 65536"),
        ("data.max_items=99999999999999999999", "'data.max_items' must fit in a 64-bit integer"),
        ("train.seed=4294967296", "'train.seed' must be <= 4294967295"),
        ("data.split_seed=-1", "'data.split_seed' must be >= 0"),
        ("train.epochs=10000000", "'train.epochs' must be <= 1000000"),
    ],
)
def test_integers_that_would_overflow_or_exhaust_memory_are_refused(override: str, message: str) -> None:
    key, value = parse_override(override)
    section, name = key.split(".")
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        validate_config({**MINIMAL, section: {**MINIMAL.get(section, {}), name: value}})
    validate_config({**MINIMAL, "train": {"batch_size": 65536, "seed": 4294967295}})  # the bounds themselves pass


def _deep_flow(depth: int) -> str:
    return "data:\n  sample_data: true\n  options: " + "{a: " * depth + "1" + "}" * depth + "\n"


def test_yaml_nested_20000_deep_is_one_line_naming_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[int] = []  # collections opened on the parser's event stream, per parse
    parse = yaml.parse

    def counting_parse(*args, **kwargs):
        opened.append(0)
        for event in parse(*args, **kwargs):
            if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
                opened[-1] += 1
            yield event

    def no_document(*args, **kwargs):
        raise AssertionError("the document was built")

    for name, text in (
        ("mapping.yaml", _deep_flow(20_000)),
        ("list.yaml", "data: " + "[" * 20_000 + "]" * 20_000 + "\n"),
    ):
        path = tmp_path / name
        path.write_text(text)
        with monkeypatch.context() as m:
            m.setattr(yaml, "parse", counting_parse)
            m.setattr(yaml, "safe_load", no_document)
            with pytest.raises(ConfigError) as e:
                load_config(path)
        assert opened[-1] == MAX_CONFIG_DEPTH + 1  # stops at the first level too deep, never builds the document
        assert str(e.value).startswith(f"{path}: nested deeper than {MAX_CONFIG_DEPTH} levels (at line ")
        assert main(["train", "--config", str(path), "-o", str(tmp_path / "r")]) == 1
        err = capsys.readouterr().err
        assert "RecursionError" not in err and len(err.strip().splitlines()) == 1
        assert err.startswith(f"lilaw-med train: error: invalid config: {path}: nested deeper than")
    # the same through --set; at the limit itself, the text parses and the usual checks apply
    with pytest.raises(ConfigError, match=r"^override 'data.options.x=\[\[.*: the value: nested deeper than 32 levels"):
        parse_override("data.options.x=" + "[" * 5000 + "]" * 5000)
    assert parse_override("data.options.x=" + "[" * MAX_CONFIG_DEPTH + "]" * MAX_CONFIG_DEPTH)[0] == "data.options.x"
    at_limit = tmp_path / "at_limit.yaml"
    at_limit.write_text(_deep_flow(MAX_CONFIG_DEPTH - 2))  # the document and `data` are the first two levels
    with pytest.raises(ConfigError, match="config key 'data.options.a' is unknown"):
        load_config(at_limit)


def test_binary_and_oversized_config_files_name_the_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    binary = tmp_path / "image.yaml"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe")
    with pytest.raises(ConfigError, match=r"image\.yaml: not a YAML text file \(byte 0x89 at offset 0 is not UTF-8"):
        load_config(binary)
    nul = tmp_path / "nul.yaml"
    nul.write_bytes(b"data:\n  sample_data: true\x00\n")  # valid UTF-8, not YAML
    with pytest.raises(ConfigError, match=r"nul\.yaml: not valid YAML: unacceptable character #x0000"):
        load_config(nul)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:
        f.truncate(64 * 2**20)
    with pytest.raises(ConfigError, match=r"big\.yaml: 67108864 bytes; a config is a small YAML text file"):
        load_config(big)
    for path in (binary, nul, big):
        assert main(["train", "--config", str(path), "-o", str(tmp_path / "r")]) == 1
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err and "Traceback" not in err
