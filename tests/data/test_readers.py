"""Readers on files no one here wrote (pydicom's and nibabel's test files) and on generated ones."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from nibabel.testing import data_path as nib_data
from PIL import Image
from pydicom.data import get_testdata_file

from lilaw_med.data.readers import LoadMedicalImaged, read_header

_PYDICOM_DIR = Path(get_testdata_file("CT_small.dcm")).parent  # shipped with pydicom, offline


def _load(path: str | Path, **kwargs) -> np.ndarray:
    return np.asarray(LoadMedicalImaged("image", **kwargs)({"image": str(path)})["image"])


def test_ct_dicom_applies_rescale_to_hounsfield_units_and_puts_x_first() -> None:
    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    img = _load(path)
    assert img.shape == (1, ds.Columns, ds.Rows)
    expected = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    np.testing.assert_allclose(img[0], expected.T)


def test_monochrome1_is_inverted_so_bright_means_dense() -> None:
    path = _PYDICOM_DIR / "dicomdirtests" / "77654033" / "CR1" / "6154"
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    raw = pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).astype(np.float32).T
    inverted = _load(path)[0]
    np.testing.assert_allclose(inverted, raw.max() + raw.min() - raw)
    np.testing.assert_allclose(_load(path, invert_monochrome1=False)[0], raw)


def test_window_in_the_file_is_honoured_when_asked() -> None:
    path = get_testdata_file("MR_small.dcm")
    ds = pydicom.dcmread(path)
    center, width = float(ds.WindowCenter), float(ds.WindowWidth)
    windowed = _load(path, voi_lut=True)[0]
    plain = _load(path)[0]
    # linear window: values below the window floor map to the minimum, and the output keeps order
    floor = center - 0.5 - (width - 1) / 2
    assert np.all(windowed[plain <= floor] == windowed.min())
    assert not np.allclose(windowed, plain)
    order = np.argsort(plain.ravel())
    assert np.all(np.diff(windowed.ravel()[order]) >= -1e-3)


def test_multiframe_dicom_puts_frames_last() -> None:
    path = get_testdata_file("rtdose.dcm")
    ds = pydicom.dcmread(path)
    img = _load(path)
    assert img.shape == (1, ds.Columns, ds.Rows, int(ds.NumberOfFrames))
    assert read_header(path).shape == (ds.Columns, ds.Rows, int(ds.NumberOfFrames))


def test_series_folder_reads_as_one_volume_in_instance_order_with_patient_affine(tmp_path: Path) -> None:
    src = _PYDICOM_DIR / "dicomdirtests" / "77654033" / "CT2"
    series = tmp_path / "series"
    shutil.copytree(src, series)
    slices = sorted((pydicom.dcmread(f) for f in series.iterdir()), key=lambda d: int(d.InstanceNumber))
    out = LoadMedicalImaged("image")({"image": str(series)})["image"]
    assert tuple(out.shape) == (1, 16, 16, len(slices))
    for k, ds in enumerate(slices):
        np.testing.assert_allclose(
            np.asarray(out[0, :, :, k]), pydicom.pixels.apply_modality_lut(ds.pixel_array, ds).T
        )
    # the affine follows the DICOM patient position (LPS converted to RAS: x and y negated)
    ipp = np.asarray(slices[0].ImagePositionPatient, dtype=float)
    affine = np.asarray(out.affine)
    np.testing.assert_allclose(affine[:3, 3], [-ipp[0], -ipp[1], ipp[2]], atol=1e-3)
    assert read_header(series).shape == (16, 16, len(slices))


def test_compressed_transfer_syntaxes_decode_with_the_installed_plugins() -> None:
    ref = _load(get_testdata_file("MR_small.dcm"))
    for name in ("MR_small_RLE.dcm", "MR_small_jpeg_ls_lossless.dcm", "MR_small_jp2klossless.dcm"):
        np.testing.assert_allclose(_load(get_testdata_file(name)), ref, err_msg=name)


def test_undecodable_pixel_data_names_the_file_and_the_transfer_syntax() -> None:
    path = get_testdata_file("JPEG-lossy.dcm")  # a JPEG extended stream the installed decoders reject
    with pytest.raises(ValueError, match=r"JPEG-lossy\.dcm.*JPEG Extended"):
        _load(path)


@pytest.mark.parametrize(
    "name, match",
    [
        ("MR_truncated.dcm", "truncated pixel data"),
        ("badVR.dcm", "invalid image header value"),
        ("no_meta.dcm", "not a readable DICOM file"),
        ("rtplan.dcm", "no image"),
    ],
)
def test_bad_dicom_headers_are_reported_with_the_file(name: str, match: str) -> None:
    path = get_testdata_file(name)
    with pytest.raises(ValueError, match=match) as err:
        read_header(path)
    assert name in str(err.value)


@pytest.mark.parametrize("name", ["MR_truncated.dcm", "no_meta.dcm", "rtplan.dcm"])
def test_bad_dicom_files_fail_loading_with_the_file_named(name: str) -> None:
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        _load(get_testdata_file(name))


def test_series_with_mixed_slice_sizes_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), folder / "a.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "b.dcm")
    with pytest.raises(ValueError, match="mixes slice sizes"):
        read_header(folder)
    with pytest.raises(ValueError, match="mixes slice sizes"):
        _load(folder)


def test_nibabel_shipped_nifti_files_load_with_their_shape() -> None:
    for name in ("anatomical.nii", "standard.nii.gz"):
        path = Path(nib_data) / name
        if not path.exists():
            continue
        img = nib.load(path)
        assert _load(path).shape == (1, *img.shape)
        assert read_header(path).shape == img.shape
    path = Path(nib_data) / "anatomical.nii"
    np.testing.assert_allclose(_load(path)[0], np.asarray(nib.load(path).dataobj, dtype=np.float32))


def test_4d_nifti_is_refused_by_the_loader_not_averaged() -> None:
    path = Path(nib_data) / "example4d.nii.gz"
    if not path.exists():
        pytest.skip(f"{path.name} is not shipped with this nibabel")
    for check in (read_header, _load):
        with pytest.raises(
            ValueError, match=r"example4d\.nii\.gz: a 4D NIfTI image \(shape \(128, 96, 24, 2\)"
        ):
            check(path)


def test_png_nifti_npy_and_dicom_of_one_picture_give_the_same_array(tmp_path: Path) -> None:
    from lilaw_med.data.npz_import import write_image

    rng = np.random.default_rng(0)
    pic = rng.integers(0, 255, (12, 17), dtype=np.uint8)  # (H, W) row-major
    arrays = {}
    for fmt, ext in (("png", ".png"), ("dicom", ".dcm"), ("nifti", ".nii.gz")):
        arrays[fmt] = _load(write_image(pic, tmp_path / f"p{ext}", fmt))
    np.save(tmp_path / "p.npy", pic.T)  # .npy is read as stored: store x first
    arrays["npy"] = _load(tmp_path / "p.npy")
    for fmt, arr in arrays.items():
        np.testing.assert_array_equal(arr[0], pic.T, err_msg=fmt)
    rgb = rng.integers(0, 255, (9, 11, 3), dtype=np.uint8)
    a = _load(write_image(rgb, tmp_path / "c.png", "png"))
    b = _load(write_image(rgb, tmp_path / "c.dcm", "dicom"))
    assert a.shape == (3, 11, 9)
    np.testing.assert_array_equal(a, b)


def test_tiff_and_jpeg_files_load(tmp_path: Path) -> None:
    pic = np.arange(20 * 30, dtype=np.uint8).reshape(20, 30)
    Image.fromarray(pic).save(tmp_path / "a.tif")
    np.testing.assert_array_equal(_load(tmp_path / "a.tif")[0], pic.T)
    Image.fromarray(np.stack([pic] * 3, -1)).save(tmp_path / "a.jpg", quality=95)
    assert _load(tmp_path / "a.jpg").shape == (3, 30, 20)


def test_nan_in_float_nifti_or_npy_is_refused_by_the_header_check(tmp_path: Path) -> None:
    arr = np.zeros((6, 6, 6), np.float32)
    arr[1, 2, 3] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "n.nii.gz")
    with pytest.raises(ValueError, match=r"n\.nii\.gz: NaN or inf"):
        read_header(tmp_path / "n.nii.gz")
    np.save(tmp_path / "i.npy", np.full((4, 4), np.inf))
    with pytest.raises(ValueError, match=r"i\.npy: NaN or inf"):
        read_header(tmp_path / "i.npy")
    arr[1, 2, 3] = 0
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "n.nii.gz")
    assert read_header(tmp_path / "n.nii.gz").finite is True


def test_missing_and_unknown_files_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_header(tmp_path / "nope.png")
    (tmp_path / "x.xyz").write_text("hello")
    with pytest.raises(ValueError, match="unsupported image format"):
        read_header(tmp_path / "x.xyz")
    with pytest.raises(FileNotFoundError, match="nope.png"):
        _load(tmp_path / "nope.png")
    assert os.path.exists(tmp_path / "x.xyz")
