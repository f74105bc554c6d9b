"""A run folder written before a config key existed reads with the value it trained with."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lilaw_med.errors import InputError
from lilaw_med.run.config import Config
from lilaw_med.run.run_dir import RunDir
from lilaw_med.training.resume import check_resume_config


def _old_run(tmp_path: Path) -> RunDir:
    rd = RunDir(tmp_path / "run").create()
    config = Config.from_mapping({"data": {"sample_data": True}}).to_dict()
    del config["lilaw"]["epoch_budget"]  # the keys did not exist when this run was written
    del config["lilaw"]["meta_objective"]
    rd.config.write_text(yaml.safe_dump(config))
    return rd


def test_a_run_without_the_later_keys_reads_with_the_behaviour_it_trained_with(tmp_path: Path) -> None:
    saved = _old_run(tmp_path).read_config()
    assert saved["lilaw"]["epoch_budget"] is None
    assert saved["lilaw"]["meta_objective"] == "mean"
    assert Config.from_mapping(saved).lilaw.epoch_budget is None


def test_resuming_an_old_run_with_todays_default_names_the_key(tmp_path: Path) -> None:
    rd = _old_run(tmp_path)
    saved = rd.read_config()
    check_resume_config(saved, saved, rd.config)  # the run's own settings resume
    today = Config.from_mapping({"data": {"sample_data": True}})
    assert today.lilaw.epoch_budget == 32
    with pytest.raises(InputError, match="lilaw.epoch_budget"):
        check_resume_config(saved, today, rd.config)
