"""An in-process ``lilaw-med`` command leaves no process-wide logging state behind once the test
suite's fixture (tests/conftest.py) has restored it."""

from __future__ import annotations

import logging
from pathlib import Path

from lilaw_med.cli import main
from lilaw_med.quiet import LogOnce
from tests.conftest import _process_state_restored


def test_the_suites_fixture_undoes_what_main_sets_for_the_process(tmp_path: Path) -> None:
    root = logging.getLogger()
    before = {h: len(h.filters) for h in root.handlers}
    ignite = logging.getLogger("ignite").level
    capturing = logging._warnings_showwarning is not None  # type: ignore[attr-defined]
    with _process_state_restored():
        assert main(["evaluate", str(tmp_path / "no-run"), "-o", str(tmp_path / "e.json")]) == 1
        # what main sets: ignite quiet, warnings into logging, each repeated library warning once
        assert logging.getLogger("ignite").level == logging.WARNING != ignite
        assert logging._warnings_showwarning is not None  # type: ignore[attr-defined]
        assert all(any(isinstance(f, LogOnce) for f in h.filters) for h in root.handlers)
    assert logging.getLogger("ignite").level == ignite
    assert (logging._warnings_showwarning is not None) == capturing  # type: ignore[attr-defined]
    assert {h: len(h.filters) for h in root.handlers} == before
