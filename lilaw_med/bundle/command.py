"""The one ``monai.bundle run`` command line of the bundle tools, and its config-file list.

The exported README, the comments at the top of the exported configs, the overlay's printed
commands and the CLI's hints all spell the command through :func:`bundle_run_command`, so one form
(the launcher, the quoting of a config list, the torchrun arguments) holds everywhere.

Example::

    bundle_run_command(["configs/train.yaml", "configs/multi_gpu_train.yaml"], nproc=2)
    # torchrun --standalone --nnodes 1 --nproc_per_node 2 -m monai.bundle run
    #     --config_file "['configs/train.yaml','configs/multi_gpu_train.yaml']" --meta_file configs/metadata.json
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Sequence

__all__ = ["META_FILE", "bundle_run_command", "config_list"]

META_FILE = "configs/metadata.json"
"""The metadata file of a bundle, relative to its folder."""


def config_list(files: Sequence[str]) -> str:
    """``--config_file``'s value: one file as it is, several as MONAI's list literal, quoted for a shell.

    Args:
        files: config files, in the order MONAI merges them (later ones override).

    Returns:
        The shell word.
    """
    if len(files) == 1:
        return shlex.quote(files[0])
    text = "[" + ",".join(f"'{f}'" for f in files) + "]"
    return f'"{text}"' if not re.search(r"[\"$`\\']", "".join(files)) else shlex.quote(text)


def bundle_run_command(
    config_files: Sequence[str],
    *,
    meta_file: str | None = META_FILE,
    bundle_root: str | None = None,
    nproc: int | None = None,
    extra: Sequence[str] = (),
) -> str:
    """The ``monai.bundle run`` command line, run from the bundle's folder.

    Args:
        config_files: the config files (see :func:`config_list`).
        meta_file: the ``--meta_file`` (``None``: left out).
        bundle_root: the ``--bundle_root`` (``None``: left out).
        nproc: processes per node: the command then starts with ``torchrun`` (one node, standalone
            rendezvous); ``None``: one ``python`` process.
        extra: further arguments, appended as given (e.g. ``["--dataset_dir", "DIR"]``).

    Returns:
        One command line.
    """
    launcher = (
        f"torchrun --standalone --nnodes 1 --nproc_per_node {int(nproc)} -m monai.bundle run"
        if nproc is not None
        else "python -m monai.bundle run"
    )
    parts = [launcher, "--config_file", config_list(config_files)]
    if bundle_root is not None:
        parts += ["--bundle_root", bundle_root]
    if meta_file is not None:
        parts += ["--meta_file", meta_file]
    return " ".join([*parts, *extra])
