"""A preset is one specification plus its YAML: a throwaway preset trains and exports through the
CLI, and the input-channel rule is the same for training and for the exported bundle."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml

from lilaw_med.cli import main
from lilaw_med.data.presets import PRESETS, PresetSpec, register_preset
from lilaw_med.run.run_dir import RunDir
from tests.pipelines.helpers import small_sample_data, tiny_overrides

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return small_sample_data(tmp_path_factory.mktemp("sample"))


@pytest.fixture
def tiny_grey(tmp_path: Path, sample: dict) -> Iterator[PresetSpec]:
    """A preset registered from outside the package: its specification and its YAML, nothing else."""
    config = {
        "data": {"preset": "tiny_grey", "datalist": str(sample["radiology_2d"]), "cache": "none",
                 "options": {"spatial_size": [16, 16]}},
        "train": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": False},
        "eval": {"calibration": "none"},
        "output": {"plots": False, "tensorboard": False},
    }
    path = tmp_path / "tiny_grey.yaml"
    path.write_text("# the tiny grey preset\n" + yaml.safe_dump(config))
    spec = register_preset(
        PresetSpec(
            name="tiny_grey", spatial_dims=2, channels=1, intensities=("minmax", "none"),
            options={"spatial_size": [24, 24], "intensity": "minmax", "resize_mode": "area"},
            config_file=str(path), task="tiny grey image classification", modality="OT",
        )
    )
    yield spec
    del PRESETS[spec.name]


def test_a_registered_preset_trains_and_exports_through_the_cli(tiny_grey: PresetSpec, tmp_path: Path) -> None:
    config = tmp_path / "my.yaml"
    assert main(["init-config", "tiny_grey", "-o", str(config)]) == 0
    assert config.read_text().startswith("# the tiny grey preset")
    assert main(["validate-data", str(yaml.safe_load(config.read_text())["data"]["datalist"]), "--preset", "tiny_grey",
                 "--no-cache"]) == 0
    run = tmp_path / "run"
    assert main(["train", "--config", str(config), "-o", str(run)]) == 0
    meta = torch.load(RunDir(run).final_model, weights_only=True)
    assert (meta["preset"], meta["spatial_dims"], meta["in_channels"], meta["num_outputs"]) == ("tiny_grey", 2, 1, 2)
    bundle = tmp_path / "bundle"
    assert main(["bundle", "export", "--run", str(run), str(bundle)]) == 0
    exported = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert exported["task"] == "tiny grey image classification trained on noisy labels with LiLAW"
    image = exported["network_data_format"]["inputs"]["image"]
    assert (image["modality"], image["num_channels"], image["spatial_shape"]) == ("OT", 1, [16, 16])


def test_a_grey_preset_read_as_rgb_exports_a_three_channel_network(sample: dict, tmp_path: Path) -> None:
    from lilaw_med.bundle.export import export_bundle
    from lilaw_med.pipelines import radiology_2d

    overrides = tiny_overrides("radiology_2d", sample, "data.options.channels=3", "output.plots=false")
    result = radiology_2d.run(output_dir=tmp_path / "run", overrides=overrides)
    assert torch.load(RunDir(result.run_dir).final_model, weights_only=True)["in_channels"] == 3
    config = radiology_2d.default_config(overrides)
    with_run = export_bundle(config, tmp_path / "with_run", run_dir=result.run_dir)
    without_run = export_bundle(config, tmp_path / "without_run")
    for export in (with_run, without_run):
        assert export.model is not None and export.model.in_channels == 3
        assert export.metadata["network_data_format"]["inputs"]["image"]["num_channels"] == 3
        train = yaml.safe_load((export.root / "configs" / "train.yaml").read_text())
        assert train["network_def"]["in_channels"] == 3
