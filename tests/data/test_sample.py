"""Sample data: real files, proper DICOM tags, deterministic, passes the pre-flight check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.noise import load_noise_truth
from lilaw_med.data.preflight import check_datalist
from lilaw_med.data.sample import render_chest, write_sample_data
from lilaw_med.data.transforms import build_transforms

_DIMS = {"radiology_2d": 2, "radiology_3d": 3, "pathology": 2, "slide": 2}


def test_sample_data_passes_the_preflight_check_with_zero_problems(
    small_sample: dict[str, Path], tmp_path: Path
) -> None:
    for name, path in small_sample.items():
        dl = load_datalist(path)
        assert dl.training and dl.validation and dl.test, name
        assert check_datalist(dl, expected_dims=_DIMS[name], cache_dir=tmp_path) == [], name


def test_sample_dicom_has_proper_tags_and_unique_deterministic_uids(small_sample: dict[str, Path]) -> None:
    dl = load_datalist(small_sample["radiology_2d"])
    files = [it["image"] for it in dl.training + dl.validation + dl.test]
    sops = set()
    for f in files:
        ds = pydicom.dcmread(f)
        assert ds.Modality in ("CR", "DX")
        assert ds.PatientID.startswith("SYN")
        assert [float(v) for v in ds.PixelSpacing] == [0.4, 0.4]
        assert float(ds.WindowWidth) > 0
        assert ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
        assert pydicom.uid.UID(ds.StudyInstanceUID).is_valid
        sops.add(ds.SOPInstanceUID)
        assert ds.pixel_array.shape == (128, 128)
    assert len(sops) == len(files)
    assert any(pydicom.dcmread(f).PhotometricInterpretation == "MONOCHROME1" for f in files)


def test_same_seed_gives_same_pixels_uids_and_noisy_labels(
    small_sample: dict[str, Path], tmp_path: Path
) -> None:
    again = write_sample_data(tmp_path, seed=0, n_2d=24, n_3d=12, n_tiles=40, n_slides=3, noise_rate=0.25)
    for name in ("radiology_2d", "pathology"):
        a, b = load_datalist(small_sample[name]), load_datalist(again[name])
        assert [(i["id"], i["label"]) for i in a.training] == [(i["id"], i["label"]) for i in b.training]
    f1 = load_datalist(small_sample["radiology_2d"]).training[0]["image"]
    f2 = load_datalist(again["radiology_2d"]).training[0]["image"]
    assert Path(f1).read_bytes() == Path(f2).read_bytes()


def test_sample_noise_is_recorded_and_test_split_stays_clean(small_sample: dict[str, Path]) -> None:
    path = small_sample["pathology"]
    dl = load_datalist(path)
    truth = load_noise_truth(path)
    noisy = [it for it in dl.training + dl.validation]
    assert set(truth) == {it["id"] for it in noisy}
    flipped = sum(truth[it["id"]] != it["label"] for it in noisy)
    assert 0 < flipped < len(noisy)
    clean = json.loads((path.parent / "datalist_clean.json").read_text())
    clean_test = {c["image"]: c["label"] for c in clean["test"]}
    assert all(
        clean_test[Path(it["image"]).relative_to(path.parent).as_posix()] == it["label"] for it in dl.test
    )


def test_sample_volumes_have_ras_affines_and_hounsfield_units(small_sample: dict[str, Path]) -> None:
    import nibabel as nib

    dl = load_datalist(small_sample["radiology_3d"])
    img = nib.load(dl.training[0]["image"])
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
    assert np.allclose(img.header.get_zooms(), (2.0, 2.0, 2.5))
    data = np.asarray(img.dataobj)
    assert data.dtype == np.int16 and data.min() < -900 and data.max() > 300


def test_opacity_class_is_brighter_in_the_lung_fields_on_average() -> None:
    # the learnable signal: lesion images carry extra density in a lung field
    anatomy = {"lung_scale": 1.0, "brightness": 1.0, "shift": 0.0, "rib_phase": 0.0}
    rng = np.random.default_rng(0)
    lesion = np.mean([render_chest(rng, anatomy, True).mean() for _ in range(20)])
    normal = np.mean([render_chest(rng, anatomy, False).mean() for _ in range(20)])
    assert lesion > normal + 0.003


@pytest.mark.parametrize(
    "name, preset, size", [("radiology_2d", "radiology_2d", [64, 64]), ("slide", "pathology", None)]
)
def test_sample_items_go_through_their_preset(
    small_sample: dict[str, Path], name: str, preset: str, size: list | None
) -> None:
    dl = load_datalist(small_sample[name])
    out = build_transforms(preset, {"spatial_size": size})(dl.training[0])
    assert (
        out["image"].dtype.is_floating_point
        and 0.0 <= float(out["image"].min()) <= float(out["image"].max()) <= 1.0
    )
    assert out["id"] == dl.training[0]["id"]
