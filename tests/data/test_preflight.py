"""Pre-flight check: every bad case named per item; manifest cache; refuse or skip-and-record."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from lilaw_med.cli import main
from lilaw_med.data import preflight
from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.preflight import check_datalist, preflight_or_raise
from lilaw_med.run.run_dir import RunDir


@pytest.fixture
def bad_datalist(tmp_path: Path) -> Path:
    img = tmp_path / "img"
    img.mkdir()
    for i in range(6):
        Image.fromarray(np.full((8, 8), i * 10, np.uint8)).save(img / f"ok{i}.png")
    arr = np.zeros((8, 8, 1), np.float32)
    arr[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(arr, np.eye(4)), img / "nan.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4)), img / "vol.nii.gz")
    (img / "mixed").mkdir()
    shutil.copy(get_testdata_file("MR_small.dcm"), img / "mixed" / "a.dcm")
    shutil.copy(get_testdata_file("CT_small.dcm"), img / "mixed" / "b.dcm")
    for name in ("MR_truncated.dcm", "badVR.dcm", "no_meta.dcm", "rtplan.dcm"):
        shutil.copy(get_testdata_file(name), img / name)
    training = [{"image": f"img/ok{i}.png", "label": i % 2, "group": f"p{i}"} for i in range(4)]
    training += [
        {"id": "truncated", "image": "img/MR_truncated.dcm", "label": 0},
        {"id": "badvr", "image": "img/badVR.dcm", "label": 0},
        {"id": "nometa", "image": "img/no_meta.dcm", "label": 0},
        {"id": "nopixels", "image": "img/rtplan.dcm", "label": 0},
        {"id": "nan", "image": "img/nan.nii.gz", "label": 1},
        {"id": "volume", "image": "img/vol.nii.gz", "label": 1},
        {"id": "mixed", "image": "img/mixed", "label": 1},
        {"id": "missing", "image": "img/missing.png", "label": 1},
        {"id": "range", "image": "img/ok4.png", "label": 7},
        {"id": "nolabel", "image": "img/ok5.png"},
    ]
    validation = [
        {"id": "dup", "image": "img/ok0.png", "label": 0},
        {"id": "dup", "image": "img/ok1.png", "label": 1},
    ]
    path = tmp_path / "dl.json"
    path.write_text(json.dumps({"class_names": ["a", "b"], "training": training, "validation": validation}))
    return path


EXPECTED = {
    "truncated": "truncated pixel data",
    "badvr": "invalid image header value",
    "nometa": "not a readable DICOM file",
    "nopixels": "no image",
    "nan": "NaN or inf",
    "volume": "wrong dimensionality",
    "mixed": "mixes slice sizes",
    "missing": "missing file",
    "range": "out of range",
    "nolabel": "label missing",
    "dup": "duplicate id",
}


def test_every_bad_case_is_reported_once_per_item_with_its_reason(bad_datalist: Path, tmp_path: Path) -> None:
    dl = load_datalist(bad_datalist, strict=False)
    problems = check_datalist(dl, expected_dims=2, cache_dir=tmp_path / "cache")
    by_id: dict[str, list[str]] = {}
    for p in problems:
        by_id.setdefault(p.id, []).append(p.reason)
    for item_id, reason in EXPECTED.items():
        assert item_id in by_id, item_id
        assert any(reason in r for r in by_id[item_id]), (item_id, by_id[item_id])
    assert not any(i.startswith("img/ok") for i in by_id)  # the good items are not reported


def test_manifest_cache_skips_unchanged_files_and_rereads_changed_ones(
    bad_datalist: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dl = load_datalist(bad_datalist, strict=False)
    cache = tmp_path / "cache"
    first = check_datalist(dl, 2, cache_dir=cache)
    calls: list[str] = []
    real = preflight.read_header
    monkeypatch.setattr(
        preflight, "read_header", lambda p, decode=False: calls.append(str(p)) or real(p, decode)
    )
    second = check_datalist(dl, 2, cache_dir=cache)
    assert calls == [] and [p.reason for p in second] == [p.reason for p in first]
    # a file changed on disk (size/mtime) is read again
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(bad_datalist.parent / "img" / "ok2.png")
    check_datalist(dl, 2, cache_dir=cache)
    assert calls == [str(bad_datalist.parent / "img" / "ok2.png")]


def test_training_refuses_to_start_and_names_every_bad_item(bad_datalist: Path, tmp_path: Path) -> None:
    dl = load_datalist(bad_datalist, strict=False)
    with pytest.raises(ValueError) as err:
        preflight_or_raise(dl, skip_bad=False, rejected_csv=RunDir(tmp_path / "run").rejected, expected_dims=2, cache_dir=None)
    for item_id in EXPECTED:
        assert item_id in str(err.value)
    assert not (tmp_path / "run" / "rejected_items.csv").exists()


def test_skip_bad_trains_on_the_rest_and_writes_the_rejected_items(
    bad_datalist: Path, tmp_path: Path
) -> None:
    dl = load_datalist(bad_datalist, strict=False)
    kept = preflight_or_raise(dl, skip_bad=True, rejected_csv=RunDir(tmp_path / "run").rejected, expected_dims=2, cache_dir=None)
    ids = {it["id"] for _, it in kept.iter_items()}
    assert ids == {"img/ok0.png", "img/ok1.png", "img/ok2.png", "img/ok3.png"}
    with (tmp_path / "run" / "rejected_items.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert {r["id"] for r in rows} == set(EXPECTED)
    assert all(r["reason"] and r["split"] for r in rows)
    assert check_datalist(kept, 2) == []


def test_validate_data_cli_lists_problems_and_exits_1(
    bad_datalist: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "report.csv"
    rc = main(["validate-data", str(bad_datalist), "--dims", "2", "--no-cache", "--report", str(report)])
    out = capsys.readouterr().out
    assert rc == 1
    assert "truncated" in out and "mixes slice sizes" in out and report.is_file()
