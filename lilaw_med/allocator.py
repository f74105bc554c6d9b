"""glibc ``malloc`` settings for training steps whose activations are tens of MiB (3D networks).

glibc serves an allocation above its mmap threshold with a fresh ``mmap`` and returns it with
``munmap`` when freed. The threshold adapts up to 32 MiB only, so a 3D network's first
activation (e.g. 2 x 16 x 64^3 float32 = 32 MiB) is mapped and unmapped on every step, and
every page of it faults in again: about 80k page faults per step, a third of the step's CPU
time spent in the kernel (measured by ``python -m benchmarks.loading``). Raising the mmap
threshold serves such buffers from the heap, where a freed buffer is reused by the next step;
raising the trim threshold keeps the freed top of the heap instead of handing it back to the
kernel after each step. The price: memory freed after a peak stays with the process (up to
``trim_threshold`` at the top of the heap), which a training process reuses on its next step.

:func:`tune_malloc` sets both through ``mallopt`` (glibc reads the ``MALLOC_*_`` environment
variables only when the process starts, too late for a command line to set them). The
``lilaw-med`` command calls it first thing; ``LILAW_MED_MALLOC=off`` keeps glibc's defaults, and
a ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``glibc.malloc`` tunable set by the
user wins. On other C libraries (macOS, musl) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
from collections.abc import Mapping

__all__ = ["DEFAULT_MMAP_THRESHOLD", "DEFAULT_TRIM_THRESHOLD", "ENV_SWITCH", "tune_malloc"]

logger = logging.getLogger(__name__)

DEFAULT_MMAP_THRESHOLD = 256 << 20
"""Allocations up to 256 MiB come from the heap (glibc's adaptive threshold stops at 32 MiB)."""
DEFAULT_TRIM_THRESHOLD = 512 << 20
"""Up to 512 MiB of free memory at the top of the heap stays with the process (glibc: 128 KiB)."""
ENV_SWITCH = "LILAW_MED_MALLOC"
"""``off`` (or ``0``, ``false``) keeps glibc's defaults in ``lilaw-med``."""

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def _user_has_settings(environ: Mapping[str, str]) -> bool:
    return any(k in environ for k in _USER_SETTINGS) or "glibc.malloc" in environ.get("GLIBC_TUNABLES", "")


def tune_malloc(
    mmap_threshold: int = DEFAULT_MMAP_THRESHOLD,
    trim_threshold: int = DEFAULT_TRIM_THRESHOLD,
    environ: Mapping[str, str] | None = None,
) -> bool:
    """Raises glibc's mmap and trim thresholds of this process (see the module docstring).

    Call it before the large allocations start (it affects allocations made afterwards).

    Args:
        mmap_threshold: allocations of at least this many bytes are mapped separately.
        trim_threshold: free bytes at the top of the heap kept before it is trimmed.
        environ: the environment to read the switch and the user's own settings from
            (``os.environ`` when ``None``).

    Returns:
        Whether both settings were applied: ``False`` when switched off, when the user set glibc's
        own variables, or when the C library is not glibc.

    Raises:
        ValueError: when a threshold is not an int in [1, 2^31 - 1].
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not isinstance(value, int) or not 0 < value < 2**31:  # mallopt takes a C int
            raise ValueError(f"{name} must be an int in [1, 2^31 - 1] (bytes) but is {value!r}.")
    env = os.environ if environ is None else environ
    if env.get(ENV_SWITCH, "").strip().lower() in ("off", "0", "false", "no"):
        logger.debug("malloc settings left as they are (%s=%s).", ENV_SWITCH, env[ENV_SWITCH])
        return False
    if _user_has_settings(env):
        logger.debug("malloc settings left as they are: the environment sets glibc's own.")
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc: nothing to tune
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))
    logger.debug("malloc mmap threshold %d, trim threshold %d: %s.", mmap_threshold, trim_threshold, ok)
    return ok
