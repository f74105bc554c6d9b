"""Known third-party warnings that say nothing to a lilaw-med user, filtered once at start-up.

MONAI registers its nvImageCodec DICOM reader with every ``LoadImage``; without nvImageCodec (any
CPU machine, most GPU ones) each construction logs "nvImageCodec is not available" and warns
"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully", once per
transform chain and once per whole-slide chunk. pydicom's own decoders read every file lilaw-med
supports, so both are dropped. :func:`filter_known_warnings` runs when ``lilaw_med`` is imported.

Other library warnings are real but repeat: MONAI's readers warn per file (a DICOM without
ImageOrientationPatient, once per item and epoch), and MONAI resets Python's per-module warning
registries each time it changes the filters (``warnings.catch_warnings``), so the ``default``
action shows them again (so would ``once``: CPython keeps its memory in the same registries).
:func:`warn_once_per_process`, which the ``lilaw-med`` command applies at start, shows each at most
once per process: warnings go through logging (``logging.captureWarnings``, logger ``py.warnings``,
as MONAI's own filters expect), and :class:`LogOnce` on the root logger's handlers passes the first
record of each (logger, level, message) of WARNING and above from loggers outside ``lilaw_med``
(a warning's message names its file and line; the toolkit's own lines may repeat).
"""

from __future__ import annotations

import logging
import threading
import warnings

__all__ = ["LogOnce", "filter_known_warnings", "warn_once_per_process"]

_NVIMGCODEC_LOGGER = "monai.data.nvimgcodec_pydicom_plugin"
_NVIMGCODEC_LOG = "nvImageCodec is not available"
_NVIMGCODEC_WARNING = r"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register"


class _DropMessage(logging.Filter):
    """Drops the records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


def filter_known_warnings() -> None:
    """Filters the known third-party warnings (idempotent: calling it again adds nothing)."""
    warnings.filterwarnings("ignore", message=_NVIMGCODEC_WARNING, category=UserWarning)  # replaces an equal filter
    log = logging.getLogger(_NVIMGCODEC_LOGGER)
    if not any(isinstance(f, _DropMessage) and f.prefix == _NVIMGCODEC_LOG for f in log.filters):
        log.addFilter(_DropMessage(_NVIMGCODEC_LOG))


class LogOnce(logging.Filter):
    """Passes the first record of each (logger, level, message) from outside ``own``; drops repeats.

    Records below ``level`` and records of ``own`` and its child loggers always pass.

    Args:
        own: the logger name whose records may repeat (the toolkit's progress and validation lines).
        level: records below this level always pass.
    """

    def __init__(self, own: str = "lilaw_med", level: int = logging.WARNING) -> None:
        super().__init__()
        self.own = own
        self.level = level
        self._seen: set[tuple[str, int, str]] = set()
        self._lock = threading.Lock()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level or record.name == self.own or record.name.startswith(self.own + "."):
            return True
        key = (record.name, record.levelno, record.getMessage())
        with self._lock:
            if key in self._seen:
                return False
            self._seen.add(key)
        return True


def warn_once_per_process(handlers: list[logging.Handler] | None = None) -> None:
    """Shows each library warning at most once per process (see the module docstring; idempotent).

    Args:
        handlers: the logging handlers to filter (default: the root logger's, set up by the caller).
    """
    logging.captureWarnings(True)
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(f, LogOnce) for f in handler.filters):
            handler.addFilter(LogOnce())
