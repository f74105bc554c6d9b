"""The LiLAW overlay (configs/bundle/lilaw_overlay.yaml) on a model-zoo style classification bundle."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.bundle.scripts import create_workflow
from torch import nn

from lilaw_med import LiLAWHandler, LiLAWLoss
from lilaw_med.data.presets import PRESETS
from tests.bundle.fixture_bundle import write_classification_bundle

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")

REPO = Path(__file__).resolve().parents[2]
OVERLAY = REPO / "configs" / "bundle" / "lilaw_overlay.yaml"


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    return write_classification_bundle(tmp_path / "toy_classification", n_train=24, n_val=8, batch_size=8, max_epochs=2)


def _merged_parser(bundle: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / "train.json"), str(OVERLAY)])
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    return parser


def test_overlay_and_every_package_file_ship_in_an_installed_wheel(tmp_path: Path) -> None:
    # the editable checkout finds every file whatever package-data says: build a wheel of the
    # sources as `pip install .` would, install it into a folder, and look there
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("lilaw_med", "pipelines", "configs"):
        shutil.copytree(REPO / folder, src / folder, ignore=ignore)
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(tmp_path / "dist"),
                    str(src)], check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("lilaw_med-*.whl")
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-index", "--target", str(site), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    installed = site / "lilaw_med"
    assert (installed / "configs" / "bundle" / "lilaw_overlay.yaml").read_bytes() == OVERLAY.read_bytes()
    for spec in PRESETS.values():
        assert (installed / "configs" / spec.config_file).is_file(), spec.config_file
    # pipelines/ and configs/ install inside the package; every module and data file must be there
    sources = {"lilaw_med": installed, "pipelines": installed / "pipelines", "configs": installed / "configs"}
    missing = [
        str(path.relative_to(src))
        for folder, target in sources.items()
        for path in (src / folder).rglob("*")
        if path.is_file() and not (target / path.relative_to(src / folder)).is_file()
    ]
    assert missing == []


def test_model_zoo_reducing_loss_is_refused_by_lilaw_loss(bundle: Path) -> None:
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    reducing = parser.get_parsed_content("loss")
    assert reducing.reduction == "sum"
    with pytest.raises(ValueError, match="reduction='none'"):
        LiLAWLoss(reducing, warmup_epochs=0)(torch.randn(4, 2), torch.tensor([0, 1, 1, 0]))


def test_overlay_wraps_the_bundles_own_loss_and_keeps_its_ids(bundle: Path) -> None:
    parser = _merged_parser(bundle)
    raw = parser.get()
    assert raw["loss"] == {"_target_": "torch.nn.CrossEntropyLoss", "reduction": "none"}
    handlers = raw["train"]["handlers"]
    assert [h.get("_target_") for h in handlers[:2]] == ["ValidationHandler", "StatsHandler"]
    assert handlers[2:] == ["@lilaw#handler", "@lilaw#saver"]

    trainer = parser.get_parsed_content("train#trainer")
    loss = trainer.loss_function
    assert isinstance(loss, LiLAWLoss)
    assert isinstance(loss.base_loss, nn.CrossEntropyLoss) and loss.base_loss.reduction == "none"
    handler = parser.get_parsed_content("lilaw#handler")
    assert isinstance(handler, LiLAWHandler) and handler.loss is loss
    assert trainer.has_event_handler(handler)
    # the meta step reads the bundle's validation data, reshuffled
    assert handler.val_loader.dataset is parser.get_parsed_content("validate#dataset")
    assert isinstance(handler.val_loader.sampler, torch.utils.data.RandomSampler)
    assert handler.val_loader.batch_size == 8


def test_overlay_loss_is_the_sum_loss_over_the_batch_size_before_weighting(bundle: Path) -> None:
    """The scale change the overlay documents: mean(w * L) with w = 1 equals sum(L) / N."""
    parser = _merged_parser(bundle)
    loss = parser.get_parsed_content("lilaw#loss")
    pred, target = torch.randn(8, 2), torch.randint(0, 2, (8,))
    summed = nn.CrossEntropyLoss(reduction="sum")(pred, target)
    loss.set_epoch(1)  # inside the one-epoch warm-up: every weight is 1
    torch.testing.assert_close(loss(pred, target), summed / 8)
    loss.set_epoch(2)  # alpha = beta = 2: w = 1 + W_delta, so the loss lies between sum/N and 2 sum/N
    weighted = loss(pred, target)
    assert summed / 8 < weighted < 2 * summed / 8


def test_overlay_trains_the_fixture_bundle_and_learns_alpha_beta_delta(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # ConfigWorkflow.run() prepends the bundle root
    workflow = create_workflow(
        config_file=[str(bundle / "configs" / "train.json"), str(OVERLAY)],
        meta_file=str(bundle / "configs" / "metadata.json"),
        logging_file=False,
        bundle_root=str(bundle),
    )
    workflow.run()
    workflow.finalize()

    handler = workflow.parser.get_parsed_content("lilaw#handler")
    trainer = workflow.parser.get_parsed_content("train#trainer")
    assert trainer.state.iteration == 6  # 2 epochs x 3 batches of 8
    assert handler.steps == 3 and handler.skipped_steps == 0  # epoch 1 is the warm-up
    learnt = handler.loss.weighting.as_dict()
    assert all(abs(v - 2.0) > 1e-5 for v in learnt.values()), learnt
    assert learnt["alpha"] >= 1.0 and learnt["delta"] >= learnt["beta"]  # the spec's clamps held
    assert {"lilaw_alpha", "lilaw_beta", "lilaw_delta"} <= set(trainer.state.metrics)

    # the bundle's own best-model saver still works, and the overlay saved the learnt scalars
    assert (bundle / "models" / "model.pt").is_file()
    # ignite stores a lone object's state_dict un-nested: LiLAWHandler.state_dict() itself
    saved = torch.load(bundle / "models" / "lilaw.pt", weights_only=True)
    assert saved["steps"] == 3
    for name, value in learnt.items():
        assert saved["weighting"][name].item() == pytest.approx(value)


def test_overlay_defaults_are_the_cores_defaults() -> None:
    import inspect

    import yaml

    from lilaw_med import LiLAWWeighting

    settings = yaml.safe_load(OVERLAY.read_text())["lilaw"]
    for cls, names in (
        (LiLAWWeighting, ("alpha", "beta", "delta")),
        (LiLAWLoss, ("warmup_epochs", "reduce_classes", "multi_label", "detach_weights", "normalize_weights")),
        (LiLAWHandler, ("lr", "weight_decay", "val_mode", "epoch_budget")),
    ):
        params = inspect.signature(cls.__init__).parameters
        for name in names:
            assert settings[name] == params[name].default, name
    assert settings["meta_every"] == inspect.signature(LiLAWHandler.__init__).parameters["every"].default
