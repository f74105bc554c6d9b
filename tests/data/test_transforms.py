"""Modality presets: output contract, options, scaling, augmentation off by default."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import DataLoader, Dataset
from PIL import Image

from lilaw_med.data.presets import PRESETS
from lilaw_med.data.transforms import build_transforms, preset_defaults


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(tmp_path / "g.png")
    Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(tmp_path / "c.png")
    vol = rng.normal(0, 100, (20, 22, 24)).astype(np.float32)
    nib.save(nib.Nifti1Image(vol, np.diag([2.0, 2.0, 3.0, 1.0])), tmp_path / "v.nii.gz")
    # the same volume stored LPS-oriented (x and y flipped in the affine)
    flip = np.diag([-2.0, -2.0, 3.0, 1.0])
    nib.save(nib.Nifti1Image(vol[::-1, ::-1].copy(), flip), tmp_path / "v_lps.nii.gz")
    return {
        k: str(tmp_path / f)
        for k, f in [("g", "g.png"), ("c", "c.png"), ("v", "v.nii.gz"), ("lps", "v_lps.nii.gz")]
    }


def test_every_preset_lists_its_options_and_rejects_unknown_ones() -> None:
    for preset in PRESETS:
        opts = preset_defaults(preset)
        assert {"spatial_size", "intensity", "flip", "rotate90", "affine"} <= set(opts)
        assert not (opts["flip"] or opts["rotate90"] or opts["affine"])  # augmentation off by default
        with pytest.raises(ValueError, match="unknown option"):
            build_transforms(preset, {"spatail_size": 3})
    with pytest.raises(ValueError, match="preset must be one of"):
        preset_defaults("ultrasound_4d")


def test_radiology_2d_outputs_float_image_long_label_and_keeps_id_and_extras(files: dict[str, str]) -> None:
    t = build_transforms("radiology_2d", {"spatial_size": [32, 32]})
    out = t({"id": "a", "image": files["c"], "label": 1, "group": None, "site": "x"})
    assert out["image"].shape == (1, 32, 32) and out["image"].dtype == torch.float32
    assert out["label"].dtype == torch.long and out["label"].ndim == 0 and int(out["label"]) == 1
    assert out["id"] == "a" and out["site"] == "x" and out["group"] == ""
    assert 0.0 <= float(out["image"].min()) and float(out["image"].max()) <= 1.0
    three = build_transforms("radiology_2d", {"spatial_size": [32, 32], "channels": 3})(
        dict(out, image=files["g"])
    )
    assert three["image"].shape == (3, 32, 32)
    assert torch.equal(three["image"][0], three["image"][2])


def test_window_scaling_maps_the_window_to_zero_one(files: dict[str, str]) -> None:
    t = build_transforms("radiology_2d", {"spatial_size": None, "intensity": "window", "window": [100, 100]})
    out = t({"id": "a", "image": files["g"], "label": 0})
    raw = np.asarray(Image.open(files["g"]), dtype=np.float32).T
    expected = np.clip((raw - 50.0) / 100.0, 0, 1)
    np.testing.assert_allclose(out["image"][0].numpy(), expected, atol=1e-6)


def test_radiology_3d_reorients_to_ras_so_differently_stored_volumes_agree(files: dict[str, str]) -> None:
    t = build_transforms("radiology_3d", {"spatial_size": None, "intensity": "none"})
    a = t({"id": "a", "image": files["v"], "label": 0})["image"]
    b = t({"id": "b", "image": files["lps"], "label": 0})["image"]
    assert a.shape == (1, 20, 22, 24)
    torch.testing.assert_close(a, b)


def test_radiology_3d_spacing_resize_crop_and_ct_window(files: dict[str, str]) -> None:
    spaced = build_transforms(
        "radiology_3d", {"spatial_size": None, "pixdim": [4.0, 4.0, 3.0], "intensity": "none"}
    )
    assert spaced({"id": "a", "image": files["v"], "label": 0})["image"].shape == (
        1,
        10,
        12,
        24,
    )  # MONAI: ceil((n - 1) * old / new) + 1
    crop = build_transforms(
        "radiology_3d", {"spatial_size": [16, 30, 8], "resize": "crop_or_pad", "intensity": "ct_window"}
    )
    out = crop({"id": "a", "image": files["v"], "label": 1, "group": "p"})
    assert out["image"].shape == (1, 16, 30, 8)
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0


def test_multi_label_gives_float_vectors_and_batches_collate(files: dict[str, str]) -> None:
    t = build_transforms("pathology", {"spatial_size": [16, 16], "multi_label": True})
    items = [{"id": str(i), "image": files["c"], "label": [i % 2, 1, 0], "group": None} for i in range(4)]
    batch = next(iter(DataLoader(Dataset(items, t), batch_size=4)))
    assert batch["image"].shape == (4, 3, 16, 16)
    assert batch["label"].dtype == torch.float32 and batch["label"].shape == (4, 3)
    assert batch["id"] == ["0", "1", "2", "3"]


def test_augmentations_only_in_training_and_only_when_switched_on(files: dict[str, str]) -> None:
    item = {"id": "a", "image": files["c"], "label": 2}
    off = build_transforms("pathology", {}, train=True)
    assert torch.equal(off(dict(item))["image"], off(dict(item))["image"])
    on = build_transforms("pathology", {"flip": True, "rotate90": True}, train=True)
    on.set_random_state(0)
    outs = [on(dict(item))["image"] for _ in range(8)]
    assert any(not torch.equal(outs[0], o) for o in outs[1:])
    # the same pixels, only moved
    assert all(torch.allclose(o.sum(), outs[0].sum(), rtol=1e-5) for o in outs)
    evaluation = build_transforms("pathology", {"flip": True, "rotate90": True}, train=False)
    assert torch.equal(evaluation(dict(item))["image"], evaluation(dict(item))["image"])


def test_a_3d_file_in_a_2d_preset_names_the_item(files: dict[str, str]) -> None:
    with pytest.raises(Exception) as err:
        build_transforms("radiology_2d")({"id": "vol-7", "image": files["v"], "label": 0})
    text = str(err.value) + str(err.value.__cause__)
    assert "vol-7" in text and "expected a 2D image" in text


@pytest.mark.parametrize(
    "shape, dtype, lower, upper, clip",  # dtype: of the values drawn
    [((1, 40, 50), np.float32, 0.5, 99.5, True), ((1, 20, 22, 24), np.float32, 2.0, 98.0, False),
     ((3, 30, 30), np.int64, 0.0, 100.0, True), ((1, 16, 16, 16), np.int64, 5.0, 95.0, True)],
)
def test_numpy_percentile_scaling_equals_monais_transform(shape, dtype, lower, upper, clip) -> None:
    from monai.data import MetaTensor
    from monai.transforms import ScaleIntensityRangePercentiles

    from lilaw_med.data.transforms import ScaleIntensityPercentilesd

    rng = np.random.default_rng(7)
    # integer-valued images (ties between order statistics) as float32: torch.quantile takes floats only
    raw = rng.normal(0, 100, shape) if dtype == np.float32 else rng.integers(0, 200, shape)
    img = MetaTensor(torch.as_tensor(raw.astype(np.float32)), meta={"filename_or_obj": "x.nii.gz"})
    expected = ScaleIntensityRangePercentiles(lower, upper, 0.0, 1.0, clip=clip)(img)
    ours = ScaleIntensityPercentilesd("image", lower, upper, 0.0, 1.0, clip=clip)({"image": img})["image"]
    assert isinstance(ours, MetaTensor) and ours.meta["filename_or_obj"] == "x.nii.gz"
    assert ours.dtype == torch.float32 and ours.shape == img.shape
    np.testing.assert_allclose(ours.numpy(), np.asarray(expected), atol=1e-6)
    # a numpy image stays numpy; a constant image is shifted like MONAI's (no division by zero)
    flat = np.full((1, 8, 8), 5.0, np.float32)
    shifted = ScaleIntensityPercentilesd("image", lower, upper, 0.0, 1.0, clip=clip)({"image": flat})["image"]
    assert isinstance(shifted, np.ndarray) and np.array_equal(shifted, np.zeros_like(flat))


def test_percentile_scaling_refuses_percentiles_outside_0_to_100() -> None:
    from lilaw_med.data.transforms import ScaleIntensityPercentilesd

    with pytest.raises(ValueError, match="upper must lie in"):
        ScaleIntensityPercentilesd("image", 1.0, 101.0)


@pytest.mark.parametrize("n", [96**3, 40**3, 9000])  # 16k-value sample; 4k-value sample (40^3, 9000)
@pytest.mark.parametrize("kind", ["normal", "integers", "ct_air", "constant_tail"])
def test_tail_selected_percentiles_equal_numpys_on_large_arrays_with_ties(
    kind: str, n: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lilaw_med.data.transforms import percentiles

    rng = np.random.default_rng(3)
    arr = {
        "normal": rng.normal(0, 100, n),
        "integers": rng.integers(-1000, 3000, n),
        "ct_air": np.where(rng.random(n) < 0.6, -1000.0, rng.normal(40, 30, n)),  # 60% ties at the bottom
        "constant_tail": np.where(rng.random(n) < 0.99, 5.0, rng.normal(0, 1, n)),
    }[kind].astype(np.float32)
    qs = [0.0, 0.5, 2.0, 50.0, 98.0, 99.5, 100.0]
    np.testing.assert_allclose(percentiles(arr, qs), np.percentile(arr, qs), rtol=1e-12, atol=1e-9)
    if kind in ("normal", "integers"):  # no mass of ties at a tail: the tails are partitioned from candidates only
        full = []
        real_partition = np.partition
        monkeypatch.setattr(np, "partition", lambda a, kth, *args, **kw: (full.append(a.size == n),
                                                                          real_partition(a, kth, *args, **kw))[1])
        percentiles(arr, [0.5, 99.5])
        assert full == [False, False]
        monkeypatch.undo()
    with_nan = arr.copy()
    with_nan[7] = np.nan
    assert np.isnan(percentiles(with_nan, [0.5, 99.5])).all()  # numpy's answer: NaN propagates


@pytest.mark.parametrize("mode", ["area", "trilinear", "nearest"])
def test_percentile_scaling_before_an_enlarging_resize_equals_scaling_after_it_with_the_same_percentiles(mode) -> None:
    from monai.data import MetaTensor
    from monai.transforms import Resized

    from lilaw_med.data.transforms import ResizeScalePercentilesd, ScaleIntensityPercentilesd, percentiles

    rng = np.random.default_rng(0)
    img = MetaTensor(torch.as_tensor(rng.gamma(2.0, 50.0, (1, 20, 24, 16)).astype(np.float32)))
    scale = ScaleIntensityPercentilesd("image", lower=0.5, upper=99.5, b_min=0.0, b_max=1.0, clip=True)
    resize = Resized("image", spatial_size=[48, 48, 48], mode=mode)
    new = ResizeScalePercentilesd("image", resize, scale)({"image": img})["image"]
    # the rule: percentiles of the stored voxels, the linear map, the resize, then the clip
    lo, hi = percentiles(img.numpy(), (0.5, 99.5))
    resized = resize({"image": img})["image"]
    expected = torch.clamp((resized - lo) / (hi - lo), 0.0, 1.0)
    assert new.shape == (1, 48, 48, 48)
    assert torch.allclose(torch.as_tensor(new), torch.as_tensor(expected), atol=2e-6)
    # against the percentiles of the resized image (the order before): a bounded difference, largest
    # for white noise like this, whose tails interpolation smooths (0.7% on the sample volumes)
    # (trilinear smooths white noise's tails away, so its resized percentiles are far narrower: the
    # documented difference of the rule, not bounded here)
    old = scale({"image": resized})["image"]
    if mode != "trilinear":
        assert float((torch.as_tensor(new) - torch.as_tensor(old)).abs().max()) < 0.05
    # a shrinking resize keeps the order resize -> scale exactly
    small = ResizeScalePercentilesd("image", Resized("image", spatial_size=[8, 8, 8], mode=mode), scale)({"image": img})
    ref = scale(Resized("image", spatial_size=[8, 8, 8], mode=mode)({"image": img}))
    assert torch.equal(torch.as_tensor(small["image"]), torch.as_tensor(ref["image"]))


@pytest.mark.parametrize("affine_diag", [(2.0, 2.0, 2.5), (-2.0, -2.0, 2.5)])
def test_orientation_is_skipped_only_when_the_image_is_already_ras(affine_diag) -> None:
    from monai.data import MetaTensor
    from monai.transforms import Orientationd

    from lilaw_med.data.transforms import OrientIfNeededd

    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    img = MetaTensor(torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6), affine=torch.diag(
        torch.tensor([*affine_diag, 1.0], dtype=torch.float64)))
    ours = OrientIfNeededd("image", axcodes="RAS", labels=labels)({"image": img})["image"]
    monai = Orientationd("image", axcodes="RAS", labels=labels)({"image": img})["image"]
    assert torch.equal(torch.as_tensor(ours), torch.as_tensor(monai))
    assert (ours is img) == (min(affine_diag) > 0)  # RAS already: the same object, nothing done


def test_one_orientation_transform_keeps_each_affines_verdict_apart() -> None:
    from monai.data import MetaTensor
    from monai.transforms import Orientationd

    from lilaw_med.data.transforms import OrientIfNeededd

    labels = (("L", "R"), ("P", "A"), ("I", "S"))
    orient = OrientIfNeededd("image", axcodes="RAS", labels=labels)
    data = torch.arange(4 * 5 * 6, dtype=torch.float32).reshape(1, 4, 5, 6)
    for diag in [(2.0, 2.0, 2.5), (-2.0, -2.0, 2.5)] * 2:  # the second pass reads the cached axis codes
        img = MetaTensor(data.clone(), affine=torch.diag(torch.tensor([*diag, 1.0], dtype=torch.float64)))
        ours = orient({"image": img})["image"]
        monai = Orientationd("image", axcodes="RAS", labels=labels)({"image": img})["image"]
        assert torch.equal(torch.as_tensor(ours), torch.as_tensor(monai)) and (ours is img) == (diag[0] > 0)
    assert len(orient._axcodes_cache) == 2  # one entry per distinct affine
