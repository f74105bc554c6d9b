"""Shared fixtures: determinism, CPU threads, and the real MedMNIST data (skipped when absent)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from lilaw_med.quiet import filter_known_warnings

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LILAW_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))

# the suite's own cache folder (pre-flight manifests), removed at exit: no test writes to ~/.cache;
# set before any test runs, so subprocesses (torchrun, the CLI) inherit it
_CACHE_DIR = tempfile.TemporaryDirectory(prefix="lilaw-med-test-cache-")
os.environ["LILAW_MED_CACHE_DIR"] = _CACHE_DIR.name

torch.set_num_threads(1)  # CI has 2 cores; small models run fastest single-threaded and deterministic


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # pytest restores the warning filters around each test, dropping those lilaw_med sets at import;
    # set them again before any fixture (a module-scoped training run included) is set up
    filter_known_warnings()


@pytest.fixture
def shared_data() -> Path:
    """The folder of real MedMNIST npz files; skips the test with a clear message when absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real MedMNIST data not found at {SHARED_DATA} (set LILAW_SHARED_DATA to its folder)")
    return SHARED_DATA
