"""The one `monai.bundle run` command builder and the dotted paths exported bundles call."""

from __future__ import annotations

import shlex

import yaml

from lilaw_med.bundle import export, runtime
from lilaw_med.bundle.command import bundle_run_command, config_list
from lilaw_med.bundle.configs import MULTI_GPU_FILES, TRAIN_FILES
from lilaw_med.bundle.yaml_text import config_yaml


def test_one_config_file_is_given_as_it_is_and_several_as_monais_list() -> None:
    assert bundle_run_command(TRAIN_FILES) == (
        "python -m monai.bundle run --config_file configs/train.yaml --meta_file configs/metadata.json"
    )
    assert bundle_run_command(MULTI_GPU_FILES, nproc=4) == (
        "torchrun --standalone --nnodes 1 --nproc_per_node 4 -m monai.bundle run "
        "--config_file \"['configs/train.yaml','configs/multi_gpu_train.yaml']\" --meta_file configs/metadata.json"
    )
    assert bundle_run_command(["a.json", "b.yaml"], bundle_root=".", meta_file=None, extra=["--x", "1"]) == (
        "python -m monai.bundle run --config_file \"['a.json','b.yaml']\" --bundle_root . --x 1"
    )


def test_a_config_list_with_shell_characters_reaches_monai_as_one_literal() -> None:
    files = ["configs/train.json", "it's $HOME/o.yaml"]
    (word,) = shlex.split(config_list(files))
    assert word == "['configs/train.json','it's $HOME/o.yaml']"


def test_the_yaml_writer_puts_the_comment_first_and_keeps_the_key_order() -> None:
    text = config_yaml({"z": 1, "a": {"b": [1, 2]}}, "first line\n\nthird line")
    assert text.startswith("# first line\n#\n# third line\n\nz: 1\na:\n")
    assert yaml.safe_load(text) == {"z": 1, "a": {"b": [1, 2]}}


def test_the_dotted_paths_of_bundles_already_exported_still_resolve() -> None:
    # bundles exported before the runtime helpers had their own module call them through bundle.export
    for name in ("install_model", "load_bundle_datalist", "log_final_metrics"):
        assert getattr(export, name) is getattr(runtime, name)
