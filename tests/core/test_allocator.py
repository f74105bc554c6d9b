"""glibc malloc settings: no mmap/munmap (and page faults) for large buffers freed and reallocated each step."""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from lilaw_med import allocator
from lilaw_med.allocator import tune_malloc

_GLIBC = platform.system() == "Linux" and platform.libc_ver()[0] == "glibc"

# where glibc serves a 40 MiB buffer (above its 32 MiB adaptive mmap limit): mallinfo2's hblkhd counts
# the bytes in separately mapped chunks, which the kernel faults in afresh after each munmap; the
# module is run alone (runpy) because the package imports torch, which takes seconds
_CHILD = """
import ctypes, runpy, sys
applied = runpy.run_path(sys.argv[2])["tune_malloc"](environ={}) if sys.argv[1] == "on" else False
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
libc.mallinfo2.restype = Info
mapped = libc.mallinfo2().hblkhd
p = libc.malloc(40 << 20)
print(applied, libc.mallinfo2().hblkhd - mapped)
libc.free(p)
"""


def _mapped_bytes(mode: str) -> tuple[str, int]:
    cmd = [sys.executable, "-c", _CHILD, mode, allocator.__file__]
    applied, mapped = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return applied, int(mapped)


def _has_mallinfo2() -> bool:
    try:
        return hasattr(ctypes.CDLL("libc.so.6"), "mallinfo2")  # glibc >= 2.33
    except OSError:
        return False


@pytest.mark.skipif(not (_GLIBC and _has_mallinfo2()), reason="glibc >= 2.33 (mallopt, mallinfo2)")
def test_tuned_malloc_serves_a_large_buffer_from_the_heap_instead_of_a_fresh_mapping() -> None:
    applied, tuned = _mapped_bytes("on")
    _, default = _mapped_bytes("off")
    assert applied == "True"
    assert default >= 40 << 20  # glibc's default: a mapping of its own, unmapped again by free()
    assert tuned == 0  # from the heap, where a freed buffer is reused


def test_malloc_settings_stay_off_when_switched_off_or_set_by_the_user() -> None:
    assert tune_malloc(environ={"LILAW_MED_MALLOC": "off"}) is False
    assert tune_malloc(environ={"MALLOC_MMAP_THRESHOLD_": "65536"}) is False
    assert tune_malloc(environ={"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=1"}) is False
    with pytest.raises(ValueError, match="mmap_threshold must be an int"):
        tune_malloc(mmap_threshold=2**31)
