"""Known third-party warnings that say nothing to a lilaw-med user, filtered once at start-up.

MONAI registers its nvImageCodec DICOM reader with every ``LoadImage``; without nvImageCodec (any
CPU machine, most GPU ones) each construction logs "nvImageCodec is not available" and warns
"NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register successfully", once per
transform chain and once per whole-slide chunk. pydicom's own decoders read every file lilaw-med
supports, so both are dropped. :func:`filter_known_warnings` runs when ``lilaw_med`` is imported.
"""

from __future__ import annotations

import logging
import warnings

__all__ = ["filter_known_warnings"]

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
