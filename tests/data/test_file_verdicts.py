"""One verdict per file: the pre-flight check says what loading through the training transforms does.

The corpus is the files pydicom and nibabel ship on disk (pydicom's ``data/test_files``,
nibabel's ``tests/data``; nothing is downloaded: ``pydicom.data.get_testdata_files`` would try
and hang offline). :data:`VERDICTS` gives each file's expected verdict. For every file and both
dimensionalities, the test checks that

* the pre-flight of ``train`` and ``validate-data`` (:func:`check_datalist`) and the check of
  ``predict`` (``read_header(...).ndim``) agree, and agree with the table;
* a file they accept loads through the radiology preset's transforms;
* a file they refuse fails to load with a one-line error naming it, or is refused by a named
  rule on data that would load (NaN voxels).
"""

from __future__ import annotations

import csv
import importlib.metadata
import json
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import nibabel
import numpy as np
import pydicom
import pytest
from PIL import Image

from lilaw_med.data import preflight
from lilaw_med.data.datalist import Datalist, load_datalist
from lilaw_med.data.preflight import check_datalist, preflight_or_raise
from lilaw_med.data.readers import LoadMedicalImaged, read_header
from lilaw_med.data.transforms import build_transforms
from lilaw_med.run.run_dir import RunDir

PYDICOM_DIR = Path(pydicom.__file__).parent / "data" / "test_files"
NIBABEL_DIR = Path(nibabel.__file__).parent / "tests" / "data"
SOURCES = {"pydicom": (PYDICOM_DIR, pydicom.__version__), "nibabel": (NIBABEL_DIR, nibabel.__version__)}

# A verdict is "2D" or "3D" (accepted, for a model of that many dimensions only), "codec 2D"
# (compressed pixel data: "2D" when an installed decoder reads the stream, else refused with
# "cannot decode the pixel data"; decided by pydicom itself, so the table holds whatever codecs
# are installed), or a substring of the refusal reason.
CODEC_2D = "codec 2D"
NO_IMAGE = "no image"
NOT_DICOM = "not a readable DICOM file"
MULTIFRAME_COLOUR = "a multi-frame colour file"
SEG = "a DICOM segmentation (SEG"
FOUR_D = "NIfTI image (shape"
UNSUPPORTED = "unsupported image format"

VERDICTS: dict[tuple[str, str], str] = {
    # pydicom: uncompressed and deflated transfer syntaxes (pydicom's size rule, no decoding)
    ("pydicom", "CT_small.dcm"): "2D",
    ("pydicom", "MR_small.dcm"): "2D",
    ("pydicom", "MR_small_bigendian.dcm"): "2D",
    ("pydicom", "MR_small_expb.dcm"): "2D",
    ("pydicom", "MR_small_implicit.dcm"): "2D",
    ("pydicom", "MR_small_padded.dcm"): "2D",
    ("pydicom", "ExplVR_BigEnd.dcm"): "2D",
    ("pydicom", "SC_rgb_jpeg_dcmd.dcm"): "2D",
    ("pydicom", "SC_rgb_small_odd.dcm"): "2D",
    ("pydicom", "SC_rgb_small_odd_big_endian.dcm"): "2D",
    ("pydicom", "SC_ybr_full_422_uncompressed.dcm"): "2D",  # 2 bytes a pixel: was called "truncated"
    ("pydicom", "image_dfl.dcm"): "2D",  # deflated: was called "truncated"
    ("pydicom", "examples_overlay.dcm"): "2D",
    ("pydicom", "examples_palette.dcm"): "2D",  # palette colour, through its lookup tables
    ("pydicom", "examples_rgb_color.dcm"): "2D",
    ("pydicom", "rtdose.dcm"): "3D",  # grey multi-frame: frames are the third axis
    ("pydicom", "rtdose_1frame.dcm"): "2D",
    ("pydicom", "rtdose_expb.dcm"): "3D",
    ("pydicom", "rtdose_expb_1frame.dcm"): "2D",
    ("pydicom", "dicomdirtests/77654033/CR1/6154"): "2D",  # MONOCHROME1, no .dcm suffix
    ("pydicom", "dicomdirtests/77654033/CT2"): "3D",  # a series folder
    ("pydicom", "dicomdirtests/98892001/CT5N"): "3D",
    ("pydicom", "dicomdirtests/98892003/MR700"): "3D",
    # pydicom: RLE (pydicom's own decoder, always installed)
    ("pydicom", "MR_small_RLE.dcm"): "2D",
    ("pydicom", "SC_rgb_rle.dcm"): "2D",
    ("pydicom", "SC_rgb_rle_16bit.dcm"): "2D",
    ("pydicom", "SC_rgb_rle_32bit.dcm"): "2D",
    ("pydicom", "rtdose_rle.dcm"): "3D",
    ("pydicom", "rtdose_rle_1frame.dcm"): "2D",
    # pydicom: JPEG, JPEG-LS, JPEG 2000 (decoded at pre-flight by the installed plugins)
    ("pydicom", "693_J2KI.dcm"): CODEC_2D,
    ("pydicom", "GDCMJ2K_TextGBR.dcm"): CODEC_2D,
    ("pydicom", "J2K_pixelrep_mismatch.dcm"): CODEC_2D,
    ("pydicom", "JPEG-lossy.dcm"): CODEC_2D,
    ("pydicom", "JPEG2000-embedded-sequence-delimiter.dcm"): CODEC_2D,
    ("pydicom", "JPEG2000.dcm"): CODEC_2D,
    ("pydicom", "JPEGLSNearLossless_08.dcm"): CODEC_2D,
    ("pydicom", "JPEGLSNearLossless_16.dcm"): CODEC_2D,
    ("pydicom", "JPGExtended.dcm"): CODEC_2D,
    ("pydicom", "MR_small_jp2klossless.dcm"): CODEC_2D,
    ("pydicom", "MR_small_jpeg_ls_lossless.dcm"): CODEC_2D,
    ("pydicom", "SC_jpeg_no_color_transform.dcm"): CODEC_2D,
    ("pydicom", "SC_jpeg_no_color_transform_2.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_dcmtk_+eb+cr.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_dcmtk_+eb+cy+n1.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_dcmtk_+eb+cy+n2.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_dcmtk_+eb+cy+np.dcm"): CODEC_2D,  # YBR_FULL_422
    ("pydicom", "SC_rgb_dcmtk_+eb+cy+s2.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_dcmtk_+eb+cy+s4.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_gdcm_KY.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jls_lossy_line.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jls_lossy_sample.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jpeg.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jpeg_app14_dcmd.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jpeg_dcmtk.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jpeg_gdcm.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_jpeg_lossy_gdcm.dcm"): CODEC_2D,
    ("pydicom", "SC_rgb_small_odd_jpeg.dcm"): CODEC_2D,
    ("pydicom", "examples_jpeg2k.dcm"): CODEC_2D,
    # pydicom: refused by a rule
    ("pydicom", "SC_rgb_rle_2frame.dcm"): MULTIFRAME_COLOUR,
    ("pydicom", "SC_rgb_rle_16bit_2frame.dcm"): MULTIFRAME_COLOUR,
    ("pydicom", "SC_rgb_rle_32bit_2frame.dcm"): MULTIFRAME_COLOUR,
    ("pydicom", "examples_ybr_color.dcm"): MULTIFRAME_COLOUR,  # a 30-frame ultrasound cine
    ("pydicom", "liver_1frame.dcm"): SEG,  # 1-bit BINARY segmentation
    ("pydicom", "liver_expb_1frame.dcm"): SEG,
    ("pydicom", "dicomdirtests/98892003/MR1"): "the folder mixes 3 series",
    ("pydicom", "dicomdirtests/98892003/MR2"): "the folder mixes 3 series",
    # pydicom: broken or not an image
    ("pydicom", "MR_truncated.dcm"): "truncated pixel data",
    ("pydicom", "badVR.dcm"): "invalid image header value",
    ("pydicom", "ExplVR_BigEndNoMeta.dcm"): NOT_DICOM,
    ("pydicom", "ExplVR_LitEndNoMeta.dcm"): NOT_DICOM,
    ("pydicom", "no_meta.dcm"): NOT_DICOM,
    ("pydicom", "rtstruct.dcm"): NOT_DICOM,
    ("pydicom", "meta_missing_tsyntax.dcm"): "pixel data without Rows/Columns",
    ("pydicom", "nested_priv_SQ.dcm"): "pixel data without Rows/Columns",
    ("pydicom", "UN_sequence.dcm"): NO_IMAGE,
    ("pydicom", "empty_charset_LEI.dcm"): NO_IMAGE,
    ("pydicom", "no_meta_group_length.dcm"): NO_IMAGE,
    ("pydicom", "priv_SQ.dcm"): NO_IMAGE,
    ("pydicom", "reportsi.dcm"): "no image: the file holds no pixel data (Modality SR",
    ("pydicom", "reportsi_with_empty_number_tags.dcm"): NO_IMAGE,
    ("pydicom", "rtplan.dcm"): "no image: the file holds no pixel data (Modality RTPLAN",
    ("pydicom", "rtplan_truncated.dcm"): NO_IMAGE,
    ("pydicom", "test-SR.dcm"): NO_IMAGE,
    ("pydicom", "waveform_ecg.dcm"): "no image: the file holds no pixel data (Modality ECG",
    ("pydicom", "dicomdirtests/TINY_ALPHA/PT000000/ST000000/SE000000/IM000000"): NO_IMAGE,  # pixels stripped
    # nibabel
    ("nibabel", "0.dcm"): "2D",
    ("nibabel", "1.dcm"): "2D",
    ("nibabel", "anatomical.nii"): "3D",
    ("nibabel", "reoriented_anat_moved.nii"): "3D",
    ("nibabel", "standard.nii.gz"): "3D",
    ("nibabel", "resampled_anat_moved.nii"): "NaN or inf",  # loads, but NaN voxels
    ("nibabel", "example4d.nii.gz"): FOUR_D,
    ("nibabel", "example_nifti2.nii.gz"): FOUR_D,
    ("nibabel", "functional.nii"): FOUR_D,
    ("nibabel", "row_major.dconn.nii"): "a CIFTI-2 file",
    ("nibabel", "analyze.hdr"): UNSUPPORTED,
    ("nibabel", "example4d+orig.HEAD"): UNSUPPORTED,
    ("nibabel", "test.mgz"): UNSUPPORTED,
    ("nibabel", "tiny.mnc"): UNSUPPORTED,
    ("nibabel", "T1.PAR"): UNSUPPORTED,
    ("nibabel", "standard.trk"): UNSUPPORTED,
}

# refusals by a rule on data that would load: the test checks that the rule's reason is real
LOADABLE_REFUSALS = ("NaN or inf",)

_TRANSFORMS: dict[int, Any] = {}


def _transforms(dims: int) -> Any:
    # the radiology presets' training chains (small sizes: the verdict does not depend on them)
    if dims not in _TRANSFORMS:
        preset, size = ("radiology_2d", [16, 16]) if dims == 2 else ("radiology_3d", [8, 8, 8])
        _TRANSFORMS[dims] = build_transforms(preset, {"spatial_size": size}, train=True)
    return _TRANSFORMS[dims]


def _shipped(source: str, name: str) -> Path:
    folder, version = SOURCES[source]
    path = folder / name
    if not path.exists():
        pytest.skip(f"{name} is not shipped with {source} {version} (looked in {folder})")
    return path


def _decodes(path: Path) -> bool:
    """Whether pydicom itself, with the installed plugins, decodes the file (the ground truth)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _ = pydicom.dcmread(path).pixel_array
        except Exception:
            return False
    return True


def _expected(verdict: str, path: Path) -> str:
    if verdict == CODEC_2D:
        return "2D" if _decodes(path) else "cannot decode the pixel data"
    return verdict


def _load_error(path: Path, dims: int) -> BaseException | None:
    """What loading the file through the training transforms raises (``None``: it loads)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            _transforms(dims)({"id": path.name, "image": str(path), "label": 0})
        except Exception as e:
            # MONAI's Compose wraps a transform's error; the first one names the file
            while e.__cause__ is not None and isinstance(e, RuntimeError):
                e = e.__cause__
            return e
    return None


def _preflight(path: Path, dims: int) -> list[str]:
    dl = Datalist(training=[{"id": path.name, "image": str(path), "label": 0}], validation=[], test=[])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return [p.reason for p in check_datalist(dl, expected_dims=dims, cache_dir=None)]


def _predict_accepts(path: Path, dims: int) -> bool:
    # predict's rule: read_header must accept the file and its ndim match the model's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return read_header(path).ndim == dims
        except ValueError:
            return False


@pytest.mark.parametrize(("source", "name"), list(VERDICTS), ids=[n for _, n in VERDICTS])
def test_preflight_verdict_is_what_loading_does(source: str, name: str) -> None:
    path = _shipped(source, name)
    expected = _expected(VERDICTS[(source, name)], path)
    for dims in (2, 3):
        reasons = _preflight(path, dims)
        accepted = not reasons
        assert _predict_accepts(path, dims) == accepted, (dims, reasons)
        if expected in ("2D", "3D"):
            assert accepted == (expected == f"{dims}D"), (dims, reasons)
        else:
            assert len(reasons) == 1 and expected in reasons[0], (dims, reasons)
        for reason in reasons:
            assert "\n" not in reason and len(reason) < 600, reason
        error = _load_error(path, dims)
        if accepted:
            assert error is None, f"accepted for {dims}D but loading fails: {error!r}"
        elif any(rule in reasons[0] for rule in LOADABLE_REFUSALS):
            img = LoadMedicalImaged("image")({"image": str(path)})["image"]
            assert not np.isfinite(np.asarray(img)).all()
        else:
            assert error is not None, f"refused for {dims}D ({reasons[0]}) but it loads"
            message = str(error)
            assert "\n" not in message and path.name in message, message


def _installed(dist: str) -> bool:
    try:
        importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@pytest.mark.parametrize(
    "name", ["JPEG-lossy.dcm", "GDCMJ2K_TextGBR.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"]
)
def test_undecodable_stream_names_each_decoders_reason_and_only_packages_not_installed(name: str) -> None:
    path = _shipped("pydicom", name)
    if _decodes(path):
        pytest.skip(f"an installed decoder reads {name} here")
    for check in (read_header, lambda p: LoadMedicalImaged("image")({"image": str(p)})):
        with pytest.raises(ValueError) as err:
            check(path)
        message = str(err.value)
        assert message.startswith(str(path)) and "\n" not in message
        assert "no installed decoder can read this file" in message
        # the reason of every plugin pydicom tried, not only its first line
        tried = re.findall(r"(pylibjpeg|pillow|gdcm|pyjpegls): ", message)
        assert tried, message
        for dist in re.findall(r"pip install ([\w\-]+)", message):
            assert not _installed(dist), f"suggests {dist}, which is installed: {message}"
    if not _installed("python-gdcm"):
        assert "pip install python-gdcm" in message  # pydicom's gdcm plugin reads these files


def _with_syntax(tmp_path: Path, uid: str) -> Path:
    ds = pydicom.dcmread(_shipped("pydicom", "MR_small_jp2klossless.dcm"))
    ds.file_meta.TransferSyntaxUID = uid
    out = tmp_path / f"{uid}.dcm"
    ds.save_as(out, enforce_file_format=True)
    return out


def test_a_syntax_with_no_installed_plugin_names_the_package_to_install(tmp_path: Path) -> None:
    from pydicom.pixels import get_decoder
    from pydicom.uid import HTJ2KLossless

    if get_decoder(HTJ2KLossless).is_available:
        pytest.skip("a High-Throughput JPEG 2000 decoder is installed")
    path = _with_syntax(tmp_path, HTJ2KLossless)
    for check in (read_header, lambda p: LoadMedicalImaged("image")({"image": str(p)})):
        with pytest.raises(ValueError, match="no installed decoder can read this transfer syntax") as err:
            check(path)
        assert "pip install pylibjpeg-openjpeg" in str(err.value)
        for dist in re.findall(r"pip install ([\w\-]+)", str(err.value)):
            assert not _installed(dist), f"suggests {dist}, which is installed: {err.value}"


def test_a_syntax_pydicom_cannot_decode_says_so(tmp_path: Path) -> None:
    from pydicom.uid import MPEG4HP41

    path = _with_syntax(tmp_path, MPEG4HP41)
    for check in (read_header, lambda p: LoadMedicalImaged("image")({"image": str(p)})):
        with pytest.raises(ValueError, match="pydicom has no decoder for this transfer syntax") as err:
            check(path)
        assert "MPEG-4" in str(err.value) and "no installed decoder can read this file" in str(err.value)


def _load(path: Path) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(LoadMedicalImaged("image")({"image": str(path)})["image"])


def test_palette_colour_is_read_through_its_lookup_tables() -> None:
    from pydicom.pixels import apply_color_lut

    path = _shipped("pydicom", "examples_palette.dcm")
    ds = pydicom.dcmread(path)
    rgb = apply_color_lut(ds.pixel_array, ds)  # (rows, cols, 3)
    img = _load(path)
    assert img.shape == (3, ds.Columns, ds.Rows)
    np.testing.assert_array_equal(img, np.transpose(rgb, (2, 1, 0)).astype(np.float32))
    assert read_header(path).channels == 3


def test_palette_png_is_read_as_rgb(tmp_path: Path) -> None:
    pic = Image.new("P", (6, 4))
    pic.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9))
    pic.putdata([1, 2] * 12)
    pic.save(tmp_path / "p.png")
    img = _load(tmp_path / "p.png")
    assert img.shape == (3, 6, 4) and read_header(tmp_path / "p.png").channels == 3
    np.testing.assert_array_equal(img[:, 0, 0], [255, 0, 0])
    np.testing.assert_array_equal(img[:, 1, 0], [0, 255, 0])


@pytest.mark.parametrize("name", ["image_dfl.dcm", "SC_ybr_full_422_uncompressed.dcm"])
def test_deflated_and_ybr_full_422_files_load_their_pixels(name: str) -> None:
    path = _shipped("pydicom", name)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array.astype(np.float32)  # pydicom converts YBR to RGB
    img = _load(path)
    if expected.ndim == 3:
        np.testing.assert_array_equal(img, np.transpose(expected, (2, 1, 0)))
    else:
        np.testing.assert_array_equal(img[0], expected.T)
    assert read_header(path).shape == (ds.Columns, ds.Rows)


@pytest.mark.parametrize(
    ("name", "cut", "reason"),
    [
        ("SC_ybr_full_422_uncompressed.dcm", 100, "truncated pixel data: expected 20000 bytes"),
        ("MR_small_bigendian.dcm", 100, "truncated pixel data"),
        ("image_dfl.dcm", 400, "truncated stream"),
        ("SC_rgb_jpeg.dcm", 6, "cut short"),
        ("MR_small_RLE.dcm", 500, "cut short"),
    ],
)
def test_cut_short_files_are_refused_by_both_for_the_same_reason(
    name: str, cut: int, reason: str, tmp_path: Path
) -> None:
    data = _shipped("pydicom", name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[:-cut])
    for check in (read_header, _load):
        with pytest.raises(ValueError, match=re.escape(reason)) as err:
            check(path)
        assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def _series(tmp_path: Path, edit: Any = None) -> Path:
    folder = tmp_path / "series"
    shutil.copytree(_shipped("pydicom", "dicomdirtests/77654033/CT2"), folder)
    if edit is not None:
        first = sorted(folder.iterdir())[0]
        ds = pydicom.dcmread(first)
        edit(ds, folder)
        ds.save_as(first)
    return folder


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda ds, folder: setattr(
                ds, "InstanceNumber", pydicom.dcmread(sorted(folder.iterdir())[1]).InstanceNumber
            ),
            "share InstanceNumber",
        ),
        (lambda ds, folder: delattr(ds, "InstanceNumber"), "has no InstanceNumber"),
        (lambda ds, folder: setattr(ds, "SeriesInstanceUID", "1.2.3.4"), "mixes 2 series"),
    ],
    ids=["duplicate_number", "no_number", "two_series"],
)
def test_series_that_would_stack_wrong_are_refused_by_both(tmp_path: Path, edit: Any, reason: str) -> None:
    folder = _series(tmp_path, edit)
    with pytest.raises(ValueError, match=reason):
        read_header(folder)
    with pytest.raises(ValueError, match=reason):
        _load(folder)


def test_series_of_colour_slices_is_refused_by_both(tmp_path: Path) -> None:
    folder = tmp_path / "colour"
    folder.mkdir()
    for i in (1, 2):
        ds = pydicom.dcmread(_shipped("pydicom", "SC_rgb_small_odd.dcm"))
        ds.InstanceNumber = i
        ds.save_as(folder / f"{i}.dcm")
    for check in (read_header, _load):
        with pytest.raises(ValueError, match="a series of colour images"):
            check(folder)


def test_skip_bad_and_validate_data_record_the_same_refusals_over_the_corpus(tmp_path: Path) -> None:
    from lilaw_med.cli import main

    items, expected = [], {}
    for (source, name), verdict in VERDICTS.items():
        path = SOURCES[source][0] / name
        if not path.exists():
            continue
        item_id = f"{source}/{name}"
        items.append({"id": item_id, "image": str(path), "label": 0})
        expected[item_id] = _expected(verdict, path)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "val.png")
    datalist_file = tmp_path / "corpus.json"
    validation = [{"id": "val", "image": str(tmp_path / "val.png"), "label": 0}]
    datalist_file.write_text(json.dumps({"training": items, "validation": validation}))
    dl = load_datalist(datalist_file, strict=False)
    run = tmp_path / "run"
    run.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kept = preflight_or_raise(
            dl, skip_bad=True, rejected_csv=RunDir(run).rejected, expected_dims=2, cache_dir=None
        )
    with (run / "rejected_items.csv").open(newline="") as f:
        rejected = {r["id"]: r["reason"] for r in csv.DictReader(f) if r["split"] == "training"}
    assert {it["id"] for it in kept.training} == {i for i, v in expected.items() if v == "2D"}
    for item_id, verdict in expected.items():
        if verdict == "2D":
            continue
        assert item_id in rejected, item_id
        if verdict != "3D":
            assert verdict in rejected[item_id], (item_id, rejected[item_id])
        assert "\n" not in rejected[item_id]
    report = tmp_path / "report.csv"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(["validate-data", str(datalist_file), "--dims", "2", "--no-cache", "--report", str(report)])
    assert rc == 1
    with report.open(newline="") as f:
        reported = {r["id"]: r["reason"] for r in csv.DictReader(f) if r["split"] == "training"}
    assert reported == rejected


def test_predict_checks_its_inputs_with_the_same_verdict() -> None:
    # a rename fails here rather than skipping: predict's input check must keep this verdict
    from lilaw_med.workflows.predict.inputs import check_input

    for name, ok2d in (
        ("MR_small.dcm", True),
        ("JPEG-lossy.dcm", _decodes(PYDICOM_DIR / "JPEG-lossy.dcm")),
        ("liver_1frame.dcm", False),
        ("examples_ybr_color.dcm", False),
        ("rtdose.dcm", False),
    ):
        path = _shipped("pydicom", name)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ok2d:
                assert check_input(path, 2) == path.absolute()
            else:
                with pytest.raises(ValueError, match=re.escape(name)):
                    check_input(path, 2)


def test_manifest_verdicts_are_dropped_when_the_decoders_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _shipped("pydicom", "MR_small.dcm")
    dl = Datalist(training=[{"id": "a", "image": str(path), "label": 0}], validation=[], test=[])
    check_datalist(dl, 2, cache_dir=tmp_path)
    calls: list[str] = []
    real = preflight.read_header
    monkeypatch.setattr(
        preflight, "read_header", lambda p, decode=False: calls.append(str(p)) or real(p, decode)
    )
    check_datalist(dl, 2, cache_dir=tmp_path)
    assert calls == []  # cached
    environment = preflight.decoder_environment() + ";pylibjpeg-openjpeg=9.9"
    monkeypatch.setattr(preflight, "decoder_environment", lambda: environment)
    check_datalist(dl, 2, cache_dir=tmp_path)
    assert calls == [str(path)]  # a codec was installed: checked again
    manifest = json.loads(preflight.manifest_path(tmp_path, dl.source).read_text().splitlines()[0])
    assert manifest["environment"] == environment


@pytest.mark.parametrize(
    ("ext", "cut", "loads"),
    [("png", 12, True), ("png", 100, False), ("jpg", 1, None), ("jpg", 12, False), ("bmp", 1, False)],
    ids=["png_without_IEND", "png_cut", "jpg_without_last_byte", "jpg_cut", "bmp_cut"],
)
def test_cut_short_pictures_get_the_verdict_loading_gives(
    ext: str, cut: int, loads: bool | None, tmp_path: Path
) -> None:
    # Pillow reads a PNG without its last chunk, not a JPEG cut 12 bytes short: only decoding tells
    rng = np.random.default_rng(0)
    full = tmp_path / f"full.{ext}"
    Image.fromarray(rng.integers(0, 255, (32, 24, 3), dtype=np.uint8)).save(full)
    path = tmp_path / f"cut.{ext}"
    path.write_bytes(full.read_bytes()[:-cut])
    error = _load_error(path, 2)
    if loads is not None:
        assert (error is None) == loads, error
    assert _predict_accepts(path, 2) == (error is None)
    assert (not _preflight(path, 2)) == (error is None)
    if error is not None:
        assert str(error).startswith(str(path)) and "\n" not in str(error)


def test_cmyk_jpeg_is_read_as_rgb(tmp_path: Path) -> None:
    Image.new("CMYK", (5, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg", quality=100)
    img = _load(tmp_path / "c.jpg")
    assert img.shape == (3, 5, 4) and read_header(tmp_path / "c.jpg").channels == 3
    assert img[0].mean() > 200 and img[1].mean() < 60  # red, not a fourth band taken as alpha
