"""import-npz on the real MedMNIST files, and the sample-data / validate-data commands."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from lilaw_med.cli import main
from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.npz_import import import_npz
from lilaw_med.data.preflight import check_datalist
from lilaw_med.data.transforms import build_transforms


@pytest.mark.realdata
@pytest.mark.parametrize("fmt", ["png", "dicom", "nifti"])
def test_breastmnist_npz_becomes_real_files_whose_pixels_match_the_arrays(
    shared_data: Path, tmp_path: Path, fmt: str
) -> None:
    path = import_npz(
        shared_data / "breastmnist.npz", tmp_path, fmt=fmt, class_names=["malignant", "benign"], limit=5
    )
    arrays = np.load(shared_data / "breastmnist.npz")
    dl = load_datalist(path)
    assert [len(dl.training), len(dl.validation), len(dl.test)] == [5, 5, 5]
    assert dl.class_names == ["malignant", "benign"]
    assert check_datalist(dl, expected_dims=2) == []
    t = build_transforms("radiology_2d", {"spatial_size": None, "intensity": "none"})
    for i, item in enumerate(dl.training):
        out = t(item)
        np.testing.assert_array_equal(out["image"][0].numpy(), arrays["train_images"][i].T.astype(np.float32))
        assert int(out["label"]) == int(arrays["train_labels"].reshape(-1)[i])


@pytest.mark.realdata
def test_adrenal_3d_npz_is_written_as_nifti_volumes(shared_data: Path, tmp_path: Path) -> None:
    path = import_npz(shared_data / "adrenalmnist3d.npz", tmp_path, fmt="png", limit=3)
    dl = load_datalist(path)
    img = nib.load(dl.training[0]["image"])
    assert dl.training[0]["image"].endswith(".nii.gz") and img.shape == (28, 28, 28)
    assert check_datalist(dl, expected_dims=3) == []


@pytest.mark.realdata
def test_import_npz_cli_writes_rgb_dicom(shared_data: Path, tmp_path: Path) -> None:
    assert (
        main(
            [
                "import-npz",
                str(shared_data / "pathmnist_1000.npz"),
                "--format",
                "dicom",
                "-o",
                str(tmp_path),
                "--limit",
                "2",
            ]
        )
        == 0
    )
    dl = load_datalist(tmp_path / "datalist.json")
    out = build_transforms("pathology", {})(dl.training[0])
    assert out["image"].shape == (3, 28, 28)


def test_import_npz_names_missing_arrays(tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", images=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="train_images"):
        import_npz(tmp_path / "x.npz", tmp_path / "out")
    assert main(["import-npz", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out")]) == 1


def test_sample_data_and_validate_data_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "generated"
    assert main(["sample-data", str(out), "--n-2d", "16", "--n-3d", "8", "--n-tiles", "40"]) == 0
    printed = capsys.readouterr().out
    assert "radiology_2d" in printed and (out / "radiology_2d" / "datalist.json").is_file()
    assert (
        json.loads((out / "radiology_3d" / "datalist.json").read_text())["noise_sidecar"]
        == "datalist_noise.csv"
    )
    rc = main(
        [
            "validate-data",
            str(out / "radiology_2d" / "datalist.json"),
            "--preset",
            "radiology_2d",
            "--cache-dir",
            str(tmp_path / "c"),
        ]
    )
    assert rc == 0 and "no problems" in capsys.readouterr().out


def test_validate_data_decode_reads_the_pixels_the_header_check_leaves_on_disk(tmp_path: Path, capsys) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    # an uncompressed CT slice whose rescale slope turns every non-zero stored value into inf: the
    # header and its size rule are sound, only the decoded (rescaled) pixels show it
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    ds.RescaleSlope = "1e308"
    bad = tmp_path / "inf.dcm"
    ds.save_as(bad)
    datalist = tmp_path / "datalist.json"
    good = tmp_path / "good.dcm"
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(good)
    items = {"training": [{"id": "inf", "image": str(bad), "label": 0}],
             "validation": [{"id": "good", "image": str(good), "label": 0}]}
    datalist.write_text(json.dumps(items))
    args = ["validate-data", str(datalist), "--dims", "2", "--no-cache"]
    assert main(args) == 0 and "no problems" in capsys.readouterr().out
    report = tmp_path / "report.csv"
    assert main([*args, "--decode", "--report", str(report)]) == 1
    printed = capsys.readouterr().out
    assert "1 problem(s) in 2 items" in printed and str(bad) in printed
    assert report.read_text().splitlines()[1:] == [f"inf,{bad},training,NaN or inf pixel values."]


def _one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("lilaw-med ")]  # not the progress bar's
    assert "Traceback" not in err and len(errors) == 1, err
    return errors[0]


def test_add_noise_transition_file_errors_are_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = tmp_path / "t.json"
    matrix.write_bytes(b"\xff\xfe[[0.8, 0.2], [0.3, 0.7]]")
    args = ["add-noise", str(tmp_path / "dl.json"), "--kind", "asymmetric", "--transition", str(matrix),
            "-o", str(tmp_path / "noisy.json")]
    assert main(args) == 1
    assert f"--transition file {matrix} is not UTF-8 text" in _one_error_line(capsys)

    def denied(self: Path, *a: object, **k: object) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    assert main(args) == 1
    assert f"Permission denied: '{matrix}'" in _one_error_line(capsys)


def test_validate_data_unwritable_report_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import pydicom
    from pydicom.data import get_testdata_file

    image = tmp_path / "a.dcm"
    pydicom.dcmread(get_testdata_file("CT_small.dcm")).save_as(image)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"id": "a", "image": str(image), "label": 0}],
                                    "validation": [{"id": "b", "image": str(image), "label": 0}]}))
    report = datalist / "report.csv"  # its folder is a file
    assert main(["validate-data", str(datalist), "--dims", "2", "--no-cache", "--report", str(report)]) == 1
    assert f"cannot write {report}" in _one_error_line(capsys)


def test_import_npz_missing_labels_is_one_line_naming_the_arrays(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    np.savez(tmp_path / "x.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    assert main(["import-npz", str(tmp_path / "x.npz"), "-o", str(tmp_path / "out")]) == 1
    err = _one_error_line(capsys)
    assert "train_images/train_labels" in err and "['train_images']" in err
