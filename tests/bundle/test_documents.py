"""The exported bundle's README, LICENSE and logging.conf, rendered from their templates."""

from __future__ import annotations

import configparser

from lilaw_med.bundle.command import bundle_run_command
from lilaw_med.bundle.configs import MULTI_GPU_FILES
from lilaw_med.bundle.documents import license_text, logging_conf, readme
from lilaw_med.bundle.source import ModelSpec

_SPEC = ModelSpec("small_cnn", 2, 1, 2, ["benign", "malignant"])
_LILAW = {"lilaw": {"enabled": True, "alpha": 2.0, "beta": 2.0, "delta": 2.0, "lr": 0.01, "weight_decay": 0.01,
                    "warmup_epochs": 0}}


def _meta(**extra) -> dict:
    return {"task": "the task", "description": "the description", "references": ["the paper"],
            "network_data_format": {"inputs": {"image": {"spatial_shape": ["*", "*"]}}}, **extra}


def test_readme_lists_the_model_metrics_calibration_and_the_exact_commands() -> None:
    cal = {"method": "threshold", "temperature": 1.25, "threshold": 0.4218}
    text = readme(_SPEC, _meta(eval_metrics={"test_auroc": 0.91234}, lilaw_med_calibration=cal), _LILAW, has_model=True)
    lines = text.splitlines()
    assert lines[:3] == ["# the task", "", "the description"]
    assert "- outputs: 2 logit(s): 0: benign, 1: malignant" in lines
    assert "- trained with LiLAW: yes (alpha=2.0, beta=2.0, delta=2.0 initially; meta lr=0.01, weight decay=0.01, " \
           "warm-up 0 epoch(s))" in lines
    assert "- test_auroc: 0.9123" in lines
    assert "the temperature 1.25, and predict class 1 when its probability is at least 0.4218;" in text
    assert bundle_run_command(MULTI_GPU_FILES, nproc=2) in lines
    assert "    --config_file configs/inference.yaml --any 64" in lines  # a '*' input size needs one for the check
    assert text.endswith("## Reference\n\nthe paper\n")


def test_readme_without_metrics_or_calibration_leaves_their_sections_out() -> None:
    text = readme(_SPEC, _meta(), {"lilaw": {**_LILAW["lilaw"], "enabled": False}}, has_model=False)
    assert "## Results" not in text and "## Calibration" not in text
    assert "- trained with LiLAW: no (baseline)" in text and "- weights: none yet: train first" in text


def test_license_and_logging_conf() -> None:
    assert license_text("The Authors", 2031).startswith("Copyright (c) 2031 The Authors\n\nLicensed under the Apache")
    conf = configparser.RawConfigParser()
    conf.read_string(logging_conf())
    assert conf["logger_root"]["level"] == "INFO" and conf["handler_consoleHandler"]["args"] == "(sys.stdout,)"
