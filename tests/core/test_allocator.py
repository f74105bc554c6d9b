"""glibc malloc settings: no mmap/munmap (and page faults) for large buffers freed and reallocated each step."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from lilaw_med import allocator
from lilaw_med.allocator import tune_malloc

_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# a 40 MiB buffer (above glibc's 32 MiB adaptive limit) malloc'ed, written and freed 20 times; the
# module is run alone (runpy) because the package imports torch, which takes seconds
_CHILD = """
import ctypes, resource, runpy, sys
applied = runpy.run_path(sys.argv[2])["tune_malloc"](environ={}) if sys.argv[1] == "on" else False
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
def once():
    p = libc.malloc(40 << 20)
    ctypes.memset(p, 1, 40 << 20)
    libc.free(p)
once()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    once()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    cmd = [sys.executable, "-c", _CHILD, mode, allocator.__file__]
    applied, faults = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(not _GLIBC, reason="glibc's mallopt")
def test_tuned_malloc_reuses_a_large_freed_buffer_instead_of_faulting_it_in_again() -> None:
    applied, tuned = _faults("on")
    _, default = _faults("off")
    assert applied == "True"
    # glibc's default maps the buffer afresh each time: 10240 pages fault in per round
    assert default > 20 * 5000, default
    assert tuned < 2000, tuned


def test_malloc_settings_stay_off_when_switched_off_or_set_by_the_user() -> None:
    assert tune_malloc(environ={"LILAW_MED_MALLOC": "off"}) is False
    assert tune_malloc(environ={"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert tune_malloc(environ={"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) is False
    with pytest.raises(ValueError, match="mmap_threshold must be an int"):
        tune_malloc(mmap_threshold=2**31)
