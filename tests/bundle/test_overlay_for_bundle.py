"""`lilaw-med bundle overlay --bundle`: the overlay written with a bundle's own ids, found by structure,
on fixture bundles in each id style a model-zoo bundle uses (tests/bundle/fixture_bundle.py)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from torch import nn

from lilaw_med import LiLAWHandler, LiLAWLoss
from lilaw_med.bundle.overlay import LayoutError, find_layout, lilaw_overlay, per_sample_loss
from lilaw_med.cli import main
from tests.bundle.fixture_bundle import STYLES, write_classification_bundle
from tests.torchrun import torchrun_command, torchrun_env
from tests.write_audit import write_audit_env, writes_by_rank

pytestmark = pytest.mark.filterwarnings("ignore:parsing config_file")

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, N_VAL, BATCH = 8, 4, 4

# style -> (trainer, loss, loss is a component, handler list, validation dataset, where models go)
EXPECTED = {
    "nested": ("train#trainer", "loss", True, "train#handlers", "validate#dataset", "@ckpt_dir"),
    "flat": ("trainer", "lossfn", True, "handlers", "val_dataset", "$@bundle_root + '/models'"),
    "expression": ("train#trainer", "loss", False, "train#handlers", "validate#dataset", "@ckpt_dir"),
}


def _bundle(tmp_path: Path, style: str, **kwargs) -> Path:
    return write_classification_bundle(
        tmp_path / style, n_train=N_TRAIN, n_val=N_VAL, batch_size=BATCH, max_epochs=1, style=style, **kwargs
    )


def _config_path(bundle: Path) -> Path:
    return next(p for p in (bundle / "configs" / "train.json", bundle / "configs" / "train.yaml") if p.is_file())


def _edit_config(bundle: Path, edit) -> None:
    """Applies ``edit(config)`` to the bundle's training config (JSON or YAML)."""
    path = _config_path(bundle)
    is_json = path.suffix == ".json"
    cfg = json.loads(path.read_text()) if is_json else yaml.safe_load(path.read_text())
    edit(cfg)
    path.write_text(json.dumps(cfg, indent=1) if is_json else yaml.safe_dump(cfg, sort_keys=False))


def _merged(bundle: Path, overlay: Path) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(_config_path(bundle)), str(overlay)])
    parser["bundle_root"] = str(bundle)
    return parser


@pytest.mark.parametrize("style", STYLES)
def test_layout_is_found_by_structure_in_each_id_style(tmp_path: Path, style: str) -> None:
    layout = find_layout(_bundle(tmp_path, style))
    found = (layout.trainer_id, layout.loss_id, layout.loss_is_component, layout.handlers_id, layout.val_dataset_id,
             layout.ckpt_dir)
    assert found == EXPECTED[style]
    assert layout.config_file == ("configs/train.yaml" if style == "flat" else "configs/train.json")
    loader = "val_dataloader" if style == "flat" else "validate#dataloader"
    assert layout.val_batch_size == f"@{loader}#batch_size"


@pytest.mark.parametrize("style", STYLES)
def test_overlay_with_the_bundles_ids_wires_lilaw_into_its_trainer(tmp_path: Path, style: str) -> None:
    bundle = _bundle(tmp_path, style)
    overlay = tmp_path / "overlay.yaml"
    main(["bundle", "overlay", "--bundle", str(bundle), "-o", str(overlay)])
    parser = _merged(bundle, overlay)
    trainer_id, loss_id = EXPECTED[style][:2]
    trainer = parser.get_parsed_content(trainer_id)
    loss = trainer.loss_function
    assert isinstance(loss, LiLAWLoss)
    assert isinstance(loss.base_loss, nn.CrossEntropyLoss) and loss.base_loss.reduction == "none"
    if style == "expression":  # the bundle's own object stays as written; LiLAW wraps a per-sample copy
        assert parser.get_parsed_content(loss_id).reduction == "mean"
    handler = parser.get_parsed_content("lilaw#handler")
    assert isinstance(handler, LiLAWHandler) and handler.loss is loss and trainer.has_event_handler(handler)
    assert handler.val_loader.dataset is parser.get_parsed_content(EXPECTED[style][4])
    assert handler.val_loader.batch_size == BATCH


@pytest.mark.parametrize("inline", ["$torch.nn.CrossEntropyLoss(reduction='sum')",
                                    {"_target_": "torch.nn.CrossEntropyLoss", "reduction": "sum"}])
def test_a_loss_written_inside_the_trainer_is_wrapped_too(tmp_path: Path, inline: object) -> None:
    bundle = _bundle(tmp_path, "nested")
    _edit_config(bundle, lambda cfg: cfg["train"]["trainer"].update(loss_function=inline))
    layout = find_layout(bundle)
    assert layout.loss_id is None and layout.loss_is_component == isinstance(inline, dict)
    overlay = tmp_path / "overlay.yaml"
    main(["bundle", "overlay", "--bundle", str(bundle), "-o", str(overlay)])
    loss = _merged(bundle, overlay).get_parsed_content("train#trainer").loss_function
    assert isinstance(loss, LiLAWLoss) and loss.base_loss.reduction == "none"


def test_without_saver_or_ckpt_dir_lilaw_saves_under_bundle_root_models(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "flat")
    _edit_config(bundle, lambda cfg: cfg.update(val_handlers=cfg["val_handlers"][:1]))
    assert find_layout(bundle).ckpt_dir == "$@bundle_root + '/models'"
    bundle = _bundle(tmp_path / "b", "nested")
    _edit_config(bundle, lambda cfg: cfg["validate"].update(handlers=cfg["validate"]["handlers"][:1]))
    assert find_layout(bundle).ckpt_dir == "@ckpt_dir"


def _edits() -> dict[str, tuple]:
    def two_trainers(cfg: dict) -> None:
        cfg["trainer2"] = dict(cfg["train"]["trainer"])

    def no_evaluator(cfg: dict) -> None:
        cfg["train"]["handlers"] = cfg["train"]["handlers"][1:]
        cfg["validate"]["evaluator"]["_target_"] = "monai.engines.Workflow"

    def handlers_expression(cfg: dict) -> None:
        cfg["train"]["trainer"]["train_handlers"] = "$@train#handlers[:1]"

    def no_loss(cfg: dict) -> None:
        del cfg["train"]["trainer"]["loss_function"]

    return {
        "trainer": (two_trainers, "--trainer-id"),
        "evaluator": (no_evaluator, "--val-dataset-id"),
        "handlers": (handlers_expression, "--handlers-id"),
        "loss": (no_loss, "--loss-id"),
    }


@pytest.mark.parametrize("case", sorted(_edits()))
def test_what_cannot_be_decided_stops_with_one_line_naming_the_option(
    tmp_path: Path, case: str, capsys: pytest.CaptureFixture
) -> None:
    edit, option = _edits()[case]
    bundle = _bundle(tmp_path, "nested")
    _edit_config(bundle, edit)
    out = tmp_path / "overlay.yaml"
    assert main(["bundle", "overlay", "--bundle", str(bundle), "-o", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert option in err and "could not find" in err, err
    assert not out.exists()


def test_options_settle_what_the_structure_leaves_open(tmp_path: Path) -> None:
    bundle = _bundle(tmp_path, "nested")
    _edit_config(bundle, _edits()["trainer"][0])
    with pytest.raises(LayoutError, match="--trainer-id"):
        find_layout(bundle)
    layout = find_layout(bundle, trainer_id="train#trainer", val_dataset_id="train#dataset", val_batch_size=2)
    assert (layout.trainer_id, layout.val_dataset_id, layout.val_batch_size) == ("train#trainer", "train#dataset", 2)
    assert lilaw_overlay(layout)["lilaw"]["val_loader"]["dataset"] == "@train#dataset"


def test_per_sample_loss_copies_a_reducing_loss_and_refuses_one_without_reduction() -> None:
    summed = nn.BCEWithLogitsLoss(reduction="sum")
    per = per_sample_loss(summed)
    assert per is not summed and per.reduction == "none" and summed.reduction == "sum"
    assert per_sample_loss(per) is per
    with pytest.raises(ValueError, match="--loss-id"):
        per_sample_loss(nn.Identity())


# ------------------------------------------------------------------ real training through monai.bundle
def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO)}


def _printed_commands(capsys: pytest.CaptureFixture) -> list[str]:
    return [line.strip() for line in capsys.readouterr().out.splitlines() if "monai.bundle run" in line]


@pytest.mark.slow
@pytest.mark.parametrize("style", STYLES)
def test_generated_overlay_trains_each_bundle_style_with_the_printed_command(
    tmp_path: Path, style: str, capsys: pytest.CaptureFixture
) -> None:
    bundle = _bundle(tmp_path, style)
    assert main(["bundle", "overlay", "--bundle", str(bundle), "-o", str(tmp_path / "lilaw_overlay.yaml")]) == 0
    (command,) = _printed_commands(capsys)
    ext = "yaml" if style == "flat" else "json"
    assert command.startswith(f"python -m monai.bundle run --config_file \"['configs/train.{ext}','../lilaw_overlay.yaml']\"")
    assert "--bundle_root ." in command
    args = shlex.split(command) + ["--lilaw#warmup_epochs", "0"]  # the fixture trains one epoch
    args[0] = sys.executable
    proc = subprocess.run(args, cwd=bundle, env=_env(), capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-3000:]
    # the meta step moved all three scalars, and the overlay saved them where the bundle keeps models
    saved = torch.load(bundle / "models" / "lilaw.pt", weights_only=True)
    assert saved["steps"] == N_TRAIN // BATCH
    assert all(abs(float(v) - 2.0) > 1e-5 for v in saved["weighting"].values()), saved
    # the bundle's own validation ran and its best-model saver wrote its checkpoint
    assert re.search(r"val_accu: \d", log), log[-2000:]
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert state and not any(k.startswith("module.") for k in state)


@pytest.mark.slow
def test_generated_multi_gpu_override_trains_under_torchrun_with_two_gloo_processes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    bundle = _bundle(tmp_path, "flat")  # flat ids, no ckpt_dir: the case the packaged template cannot run
    assert main(["bundle", "overlay", "--bundle", str(bundle), "-o", str(tmp_path / "lilaw.yaml"), "--multi-gpu"]) == 0
    _, multi = _printed_commands(capsys)
    assert multi.startswith("torchrun --standalone --nnodes 1 --nproc_per_node 2 -m monai.bundle run")
    args = shlex.split(multi)
    run_args = args[args.index("-m"):]  # torchrun with a fixed local port instead of --standalone
    run_args += ["--lilaw#warmup_epochs", "0"]  # the fixture trains one epoch
    env = write_audit_env(tmp_path, bundle, torchrun_env(tmp_path, _env()))
    proc = subprocess.run(torchrun_command(2, *run_args), cwd=bundle, env=env, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "terminate called" not in log
    # rank 0 writes the bundle's checkpoints and LiLAW's state; rank 1 writes nothing at all under the bundle
    writes = writes_by_rank(tmp_path, 2)
    assert writes[0] is not None and writes[1] is not None, "the write-audit hook did not run in the ranks"
    assert any("/models/" in w for w in writes[0]), writes[0]
    assert writes[1] == [], f"rank 1 wrote under the bundle: {writes[1][:10]}"
    # each rank takes half of every epoch: one iteration of 2 x 4 items; logged once (rank 0's StatsHandler)
    assert re.findall(r"Iter: \d+/(\d+)", log) == ["1"], log[-2000:]
    saved = torch.load(bundle / "models" / "lilaw.pt", weights_only=True)
    assert saved["steps"] == 1
    assert all(abs(float(v) - 2.0) > 1e-5 for v in saved["weighting"].values()), saved
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    assert not any(k.startswith("module.") for k in state)
