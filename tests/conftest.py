"""Shared fixtures: determinism, CPU threads, the process-wide state an in-process ``lilaw-med``
command changes (restored after each test and each module), and the real MedMNIST data (skipped
when absent)."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator
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


# loggers whose level the command line sets (ignite's engines are quiet without --verbose)
_CLI_LOGGERS = ("ignite",)


@contextlib.contextmanager
def _process_state_restored() -> Iterator[None]:
    """Restores what ``lilaw_med.cli.main`` sets for the whole process: logger levels, the root
    logger's handlers and their filters (``LogOnce``), and ``logging.captureWarnings``.

    pytest's own log handlers live for the session: a ``LogOnce`` filter left on them by one test
    would drop another test's repeated warnings from ``caplog``; warnings captured into logging
    would bypass pytest's warning capture.
    """
    for name in _CLI_LOGGERS:
        logging.getLogger(name)
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    levels = {lg: lg.level for lg in loggers}
    root = logging.getLogger()
    handlers = list(root.handlers)
    filters = {h: list(h.filters) for h in handlers}
    capturing = logging._warnings_showwarning is not None  # type: ignore[attr-defined]
    try:
        yield
    finally:
        if not capturing and logging._warnings_showwarning is not None:  # type: ignore[attr-defined]
            logging.captureWarnings(False)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)
        for h, saved in filters.items():
            h.filters[:] = saved
        for lg, level in levels.items():
            if lg.level != level:  # setLevel clears every logger's cache: only where it changed
                lg.setLevel(level)


@pytest.fixture(autouse=True, scope="module")
def _module_process_state() -> Iterator[None]:
    """For module-scoped fixtures that run a command (a training shared by the module's tests)."""
    with _process_state_restored():
        yield


@pytest.fixture(autouse=True)
def _test_process_state() -> Iterator[None]:
    with _process_state_restored():
        yield


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
