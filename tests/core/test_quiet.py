"""Library warnings at most once per process (lilaw_med.quiet)."""

from __future__ import annotations

import logging
import warnings

from lilaw_med.quiet import LogOnce, warn_once_per_process


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


def test_a_repeated_library_log_warning_is_shown_once_and_own_lines_repeat() -> None:
    handler = _Collect()
    warn_once_per_process([handler])
    warn_once_per_process([handler])  # idempotent: one filter
    assert sum(isinstance(f, LogOnce) for f in handler.filters) == 1
    lib, own = logging.getLogger("some_library.reader"), logging.getLogger("lilaw_med.test_quiet")
    for logger in (lib, own):
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    try:
        for _ in range(3):
            lib.warning("tag missing in %s", "a.dcm")
            own.warning("epoch line")
            lib.info("an info line")
        lib.warning("tag missing in %s", "b.dcm")
    finally:
        for logger in (lib, own):
            logger.removeHandler(handler)
            logger.propagate = True
        logging.captureWarnings(False)
    assert handler.lines.count("some_library.reader: tag missing in a.dcm") == 1
    assert handler.lines.count("some_library.reader: tag missing in b.dcm") == 1
    assert handler.lines.count("lilaw_med.test_quiet: epoch line") == 3
    assert handler.lines.count("some_library.reader: an info line") == 3


def test_a_repeated_library_warning_is_shown_once_even_after_the_filters_change() -> None:
    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with warnings.catch_warnings():  # restores showwarning (captureWarnings replaces it) and the filters
            warnings.simplefilter("always")  # the worst case: Python itself never dedupes
            warn_once_per_process([handler])
            for _ in range(3):
                warnings.warn("test_quiet: repeated per file", UserWarning, stacklevel=1)
                with warnings.catch_warnings():  # as MONAI does: resets the per-module registries
                    warnings.simplefilter("ignore", DeprecationWarning)
            warnings.warn("test_quiet: another one", RuntimeWarning, stacklevel=1)
    finally:
        logging.captureWarnings(False)
        root.removeHandler(handler)
    assert sum("test_quiet: repeated per file" in line for line in handler.lines) == 1
    assert sum("test_quiet: another one" in line for line in handler.lines) == 1
    assert all(line.startswith("py.warnings: ") for line in handler.lines)
