"""Hostile inputs to the readers: headers that declare more than memory holds, FIFOs and looping links.

* a NIfTI header (no voxels) declaring 30000^3 int16 voxels, a DICOM file or series, a TIFF page over
  the limit (``$LILAW_MED_MAX_IMAGE_BYTES``) are refused in one line naming the file and the declared
  size, by the pre-flight check (``read_header``) and by the loader alike, before any allocation;
* a FIFO inside a DICOM series folder is never opened: the series reads as if it were not there, in
  a forked child with a timeout (a reader that opened it would block forever);
* a FIFO given as an input is refused in one line;
* a self-looping symbolic link in a series folder is one line naming it, for the check, the loader
  and ``lilaw-med validate-data``.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
import tracemalloc
import warnings
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from PIL import Image

from lilaw_med.data.readers import MAX_IMAGE_BYTES_ENV, LoadMedicalImaged, list_series_files, read_header

SERIES = Path(pydicom.__file__).parent / "data" / "test_files" / "dicomdirtests" / "77654033" / "CT2"
CT_SMALL = Path(pydicom.__file__).parent / "data" / "test_files" / "CT_small.dcm"
CHILD_TIMEOUT_S = 60.0

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="FIFOs, fork and symlinks (Linux)")


def _load(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(LoadMedicalImaged("image")({"image": str(path)})["image"])


def _refusals(path: Path) -> list[str]:
    """The one-line errors of the pre-flight check and of the loader for ``path``."""
    messages = []
    for check in (read_header, _load):
        with pytest.raises(ValueError) as err:
            check(path)
        messages.append(str(err.value))
    return messages


def _in_child(fn: Callable[[], int], timeout: float = CHILD_TIMEOUT_S) -> int:
    """Runs ``fn`` in a forked child; its return value is the exit status. A child still running after
    ``timeout`` seconds is SIGKILLed and the test fails (it hung)."""
    pid = os.fork()
    if pid == 0:
        code = 99
        try:
            code = int(fn())
        except BaseException:  # the parent sees 99
            import traceback

            traceback.print_exc()
        finally:
            os._exit(code)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    pytest.fail(f"the child did not finish within {timeout:.0f} s (blocked on a FIFO?)")


def _series(tmp_path: Path) -> Path:
    if not SERIES.is_dir():
        pytest.skip(f"pydicom {pydicom.__version__} ships no {SERIES}")
    folder = tmp_path / "series"
    shutil.copytree(SERIES, folder)
    return folder


# ------------------------------------------------------------------------- declared sizes
def test_nifti_header_declaring_98_tib_is_refused_before_allocation(tmp_path: Path) -> None:
    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path = tmp_path / "huge.nii"
    path.write_bytes(header.binaryblock + b"\0" * 4)  # the header only: no voxel is stored
    tracemalloc.start()  # numpy's buffers are traced: an attempt to allocate the voxels would show
    try:
        messages = _refusals(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    for message in messages:
        assert message.startswith(f"{path}: the header declares 30000 x 30000 x 30000 voxels of int16")
        assert "98.2 TiB" in message and "4.0 GiB" in message and MAX_IMAGE_BYTES_ENV in message
        assert "\n" not in message
    assert peak < 64 << 20, peak


def test_limit_is_configurable_and_bounds_nifti_dicom_tiff_and_series(tmp_path: Path, monkeypatch) -> None:
    volume = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), volume)
    tiff = tmp_path / "page.tif"
    Image.fromarray(np.zeros((40, 30), np.uint16)).save(tiff)
    assert read_header(volume).shape == (8, 8, 8) and read_header(tiff).shape == (30, 40)
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1000")
    assert "8 x 8 x 8 voxels of float32" in _refusals(volume)[0]
    for message in _refusals(tiff):
        assert message.startswith(
            f"{tiff}: the header declares 30 x 40 x 1 (width x height x bands) pixels of 16 bits"
        )
    for message in _refusals(CT_SMALL):  # 128 x 128 x 16 bits = 32 KiB
        assert message.startswith(
            f"{CT_SMALL}: the header declares 128 x 128 x 1 x 1 (Rows x Columns x frames x samples)"
        )
    series = _series(tmp_path)
    assert (
        len(list_series_files(series)) == 4
    )  # 4 slices of 16 x 16 x 16 bits: 512 bytes each, 2 KiB together
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "1000")  # each slice fits, the series does not
    for message in _refusals(series):
        assert message.startswith(f"{series}: the header declares") and "slices of pixels together" in message
    monkeypatch.setenv(MAX_IMAGE_BYTES_ENV, "many")
    with pytest.raises(
        ValueError, match=f"{MAX_IMAGE_BYTES_ENV} must be a positive number of bytes but is 'many'"
    ):
        read_header(volume)


# ------------------------------------------------------------------------- FIFOs and links
def test_fifo_in_a_series_folder_is_never_opened(tmp_path: Path) -> None:
    folder = _series(tmp_path)
    expected = _load(folder)
    os.mkfifo(folder / "0000_slice.dcm")  # a DICOM name, sorted first: the old reader opened it and blocked
    os.mkfifo(folder / "pipe")

    def check_and_load() -> int:
        header = read_header(folder)
        return 0 if header.shape[-1] == expected.shape[-1] and np.array_equal(_load(folder), expected) else 1

    assert _in_child(check_and_load) == 0


def test_fifo_given_as_an_input_is_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "scan.dcm"
    os.mkfifo(fifo)

    def refuse() -> int:
        for message in _refusals(fifo):
            if (
                message
                != f"{fifo}: a FIFO, not an image file; it was not opened (reading one can block forever)."
            ):
                return 1
        return 0

    assert _in_child(refuse) == 0


def test_self_looping_symlink_in_a_series_folder_is_one_line(tmp_path: Path, capsys) -> None:
    folder = _series(tmp_path)
    (folder / "loop.dcm").symlink_to("loop.dcm")
    for message in _refusals(folder):
        assert message == (
            f"{folder / 'loop.dcm'}: a symbolic link that loops (Too many levels of symbolic links) in the series "
            "folder; expected the series' DICOM files."
        )


def test_validate_data_reports_fifo_and_loop_in_one_line_each_without_hanging(tmp_path: Path) -> None:
    from lilaw_med.cli import main

    good, looping = _series(tmp_path / "a"), _series(tmp_path / "b")
    os.mkfifo(good / "0000_slice.dcm")
    (looping / "loop").symlink_to("loop")
    fifo = tmp_path / "input.dcm"
    os.mkfifo(fifo)
    datalist = tmp_path / "datalist.json"
    items = [{"image": str(p), "label": 0, "id": f"c{i}"} for i, p in enumerate((good, looping, fifo))]
    datalist.write_text(json.dumps({"training": items}))
    out = tmp_path / "out.txt"

    def validate() -> int:
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        return int(main(["validate-data", str(datalist), "--dims", "3", "--no-cache"]))

    assert _in_child(validate) == 1
    printed = out.read_text()
    assert "Traceback" not in printed
    assert "] c0 (" not in printed  # the series with a FIFO beside its slices is fine
    assert f"] c1 ({looping}): {looping / 'loop'}: a symbolic link that loops" in printed
    assert f"] c2 ({fifo}): a FIFO, not an image file" in printed
    assert "2 problem(s) in 3 items" in printed
