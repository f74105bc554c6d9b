"""Readers on files no one here wrote (pydicom's and nibabel's test files) and on generated ones."""

from __future__ import annotations

import gzip
import json
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


def test_undecodable_pixel_data_names_the_file_and_the_transfer_syntax(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom.pixels import get_decoder

    path = get_testdata_file("JPEG-lossy.dcm")
    # with no decoder plugin for JPEG Extended, whatever this machine has installed: whether one of
    # them reads this particular 12-bit stream is the corpus test's business (test_file_verdicts.py)
    decoder = get_decoder(pydicom.dcmread(path).file_meta.TransferSyntaxUID)
    monkeypatch.setattr(decoder, "_available", {})
    with pytest.raises(ValueError, match=r"JPEG-lossy\.dcm.*JPEG Extended.*no installed decoder can read"):
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


# ------------------------------------------------------------- one read of a small .nii.gz
def _plain(path: str | Path, reader: object) -> object:
    """MONAI's own loader (LoadImaged + EnsureChannelFirstd) with the given MONAI reader."""
    from monai.transforms import EnsureChannelFirstd, LoadImaged

    d = LoadImaged("image", reader=reader, image_only=True)({"image": str(path)})
    return EnsureChannelFirstd("image")(d)["image"]


def _same_as_monai(path: str | Path, reader: object, invert: bool = False) -> None:
    """Our loader gives MONAI's values (MONOCHROME1 inverted when ``invert``), dtype, shape and affine."""
    ours = LoadMedicalImaged("image")({"image": str(path)})["image"]
    plain = _plain(path, reader)
    assert ours.dtype == plain.dtype
    assert ours.shape == plain.shape
    expected = np.asarray(plain)
    if invert:  # the one departure from MONAI: bright means dense for every photometric interpretation
        expected = expected.max() + expected.min() - expected
    np.testing.assert_array_equal(np.asarray(ours), expected)
    np.testing.assert_array_equal(np.asarray(ours.affine), np.asarray(plain.affine))


@pytest.mark.parametrize(
    "dtype, slope, order",
    [
        (np.int16, None, "<"),
        (np.int16, (2.5, -10.0), "<"),
        (np.uint8, None, "<"),
        (np.float32, None, "<"),
        (np.float64, None, ">"),
        (np.int16, (0.5, 3.0), ">"),
    ],
)
def test_small_nii_gz_read_in_one_go_equals_monai_nibabel_reader(
    tmp_path: Path, dtype: type, slope: tuple[float, float] | None, order: str
) -> None:
    from monai.data import NibabelReader

    from lilaw_med.data.readers.nifti import _read_nifti_gz

    rng = np.random.default_rng(1)
    data = (rng.random((11, 7, 5)) * 200).astype(dtype)
    affine = np.array([[-0.9, 0, 0, 30], [0, 1.1, 0.1, -12], [0, 0, 2.5, 7], [0, 0, 0, 1]])
    img = nib.Nifti1Image(data, affine)
    img.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"an extension before the voxels"))
    if slope:
        img.header.set_slope_inter(*slope)
    if order == ">":
        img = nib.Nifti1Image(data, affine, img.header.as_byteswapped(">"))
    path = tmp_path / "v.nii.gz"
    nib.save(img, path)
    assert _read_nifti_gz(path) is not None  # the one-read path, not nibabel.load's
    _same_as_monai(path, NibabelReader())


def test_nii_gz_that_one_read_does_not_take_loads_through_nibabel(tmp_path: Path) -> None:
    from monai.data import NibabelReader

    from lilaw_med.data.readers.nifti import _read_nifti_gz

    data = np.arange(6 * 5 * 4, dtype=np.int16).reshape(6, 5, 4)
    raw = tmp_path / "v.nii"
    nib.save(nib.Nifti1Image(data, np.eye(4)), raw)
    blob = raw.read_bytes()
    # two gzip members (as bgzip writes): valid gzip, which only nibabel's stream reads whole
    members = tmp_path / "members.nii.gz"
    members.write_bytes(gzip.compress(blob[:400]) + gzip.compress(blob[400:]))
    nifti2 = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti2Image(data, np.eye(4)), nifti2)
    for path in (members, nifti2, raw):
        assert _read_nifti_gz(path) is None
        _same_as_monai(path, NibabelReader())


def test_truncated_nii_gz_gets_the_same_error_as_through_nibabel(tmp_path: Path, monkeypatch) -> None:
    from lilaw_med.data.readers import nifti as readers

    path = tmp_path / "cut.nii.gz"
    nib.save(
        nib.Nifti1Image(np.random.default_rng(0).random((20, 20, 20)).astype(np.float32), np.eye(4)), path
    )
    path.write_bytes(path.read_bytes()[:-2000])
    assert readers._read_nifti_gz(path) is None
    with pytest.raises(ValueError) as fast:
        _load(path)
    monkeypatch.setattr(readers, "_read_nifti_gz", lambda _: None)
    with pytest.raises(ValueError) as slow:
        _load(path)
    assert str(fast.value) == str(slow.value) and str(path) in str(fast.value)


def test_nii_gz_declaring_too_many_voxels_is_refused_from_its_header(tmp_path: Path) -> None:
    from lilaw_med.data.readers.nifti import _read_nifti_gz

    header = nib.Nifti1Header()
    header.set_data_shape((30000, 30000, 30000))
    header.set_data_dtype(np.int16)
    header["vox_offset"] = 352
    path = tmp_path / "huge.nii.gz"
    path.write_bytes(gzip.compress(header.binaryblock + b"\0" * 4 + b"\0" * 1000))
    for check in (_read_nifti_gz, _load):
        with pytest.raises(
            ValueError, match=r"huge\.nii\.gz: the header declares 30000 x 30000 x 30000 voxels"
        ):
            check(path)


def test_sample_nifti_and_dicom_load_as_monai_plain_loader_does(tmp_path: Path) -> None:
    from monai.data import NibabelReader, PydicomReader

    from lilaw_med.data.sample import write_sample_data

    paths = write_sample_data(tmp_path, n_2d=16, n_3d=16, n_tiles=40, n_slides=3)
    for key, reader in (("radiology_3d", NibabelReader()), ("radiology_2d", PydicomReader())):
        folder = paths[key].parent
        items = json.loads(paths[key].read_text())["training"][:4]
        for item in items:
            path = folder / item["image"]
            invert = (
                key == "radiology_2d" and pydicom.dcmread(path).PhotometricInterpretation == "MONOCHROME1"
            )
            _same_as_monai(path, reader, invert=invert)
