"""Pathology: tissue mask, patch aggregation, and `predict` on a whole slide."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from lilaw_med.cli import main
from lilaw_med.data.tissue import tissue_mask
from lilaw_med.pipelines import pathology_patch
from lilaw_med.workflows.predict import aggregate_patches
from tests.pipelines.helpers import small_sample_data, tiny_overrides


def test_tissue_mask_separates_stained_tissue_from_background() -> None:
    img = np.full((40, 40, 3), 245, dtype=np.uint8)  # bright, unsaturated glass
    img[10:30, 5:25] = (200, 120, 180)  # pink H&E-like tissue
    mask = tissue_mask(img)
    expected = np.zeros((40, 40), dtype=bool)
    expected[10:30, 5:25] = True
    assert np.array_equal(mask, expected)
    assert not tissue_mask(np.full((8, 8, 3), 250, dtype=np.uint8)).any()
    assert tissue_mask(np.full((8, 8, 3), (200, 120, 180), dtype=np.uint8)).all()  # all tissue stays tissue


def test_slide_aggregations_by_hand() -> None:
    probs = np.array([[0.9, 0.1]] * 18 + [[0.2, 0.8], [0.1, 0.9]])
    assert aggregate_patches(probs, "mean") == pytest.approx([(0.9 * 18 + 0.3) / 20, (0.1 * 18 + 1.7) / 20])
    assert aggregate_patches(probs, "max") == pytest.approx([0.9, 0.9])
    assert aggregate_patches(probs, "top10") == pytest.approx([0.9, 0.85])  # top 2 of 20 per class
    with pytest.raises(ValueError, match="slide aggregation"):
        aggregate_patches(probs, "median")


def test_predict_on_a_whole_slide_writes_a_probability_map_and_a_slide_score(tmp_path_factory) -> None:
    sample = small_sample_data(tmp_path_factory.mktemp("sample"))
    run = pathology_patch.run(output_dir=tmp_path_factory.mktemp("runs") / "path", overrides=tiny_overrides("pathology_patch", sample))
    import json

    slide = json.loads(sample["slide"].read_text())["training"][0]["image"]
    slide = str((sample["slide"].parent / slide).resolve())
    out = tmp_path_factory.mktemp("pred") / "preds.csv"
    assert main(["predict", str(run.run_dir), slide, "-o", str(out), "--slide-aggregation", "mean", "--uncalibrated"]) == 0
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["kind"] == "slide" and int(row["num_patches"]) > 0
    stem = out.with_name(f"preds_{row['id'].split('.')[0]}")
    pmap = np.load(f"{stem}_probmap.npy")
    with open(f"{stem}_patches.csv", newline="") as f:
        patches = list(csv.DictReader(f))
    assert len(patches) == int(row["num_patches"]) == np.isfinite(pmap[..., 0]).sum()
    scores = [float(row[k]) for k in row if k.startswith("prob_")]
    per_patch = np.array([[float(p[k]) for k in p if k.startswith("prob_")] for p in patches])
    assert np.allclose(scores, per_patch.mean(axis=0), atol=1e-5)  # "mean" aggregation
    assert np.allclose(np.nansum(pmap, axis=2)[np.isfinite(pmap[..., 0])], 1.0, atol=1e-5)
    assert open(f"{stem}_probmap.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    names = [k[len("prob_"):] for k in row if k.startswith("prob_")]
    for name in names:  # one map per class probability, and the tissue mask on the thumbnail
        assert open(f"{stem}_probmap_{name}.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert open(f"{stem}_tissue.png", "rb").read(8) == b"\x89PNG\r\n\x1a\n"


def test_predict_on_a_slide_as_a_program_imports_no_pandas_matplotlib_sklearn_scipy_ignite_sympy(tmp_path_factory) -> None:
    """The slide predict path stays lean (lilaw_med.lean): the command, run as a program, in a child."""
    import json
    import subprocess
    import sys

    sample = small_sample_data(tmp_path_factory.mktemp("sample"))
    run = pathology_patch.run(output_dir=tmp_path_factory.mktemp("runs") / "path", overrides=tiny_overrides("pathology_patch", sample))
    slide = json.loads(sample["slide"].read_text())["training"][0]["image"]
    slide = str((sample["slide"].parent / slide).resolve())
    out = tmp_path_factory.mktemp("pred") / "preds.csv"
    child = (
        "import sys\n"
        "from lilaw_med.cli import main\n"
        "sys.argv = ['lilaw-med', *sys.argv[1:]]\n"
        "rc = main()\n"  # argv None: the program's own arguments, as the console script runs it
        "heavy = {'pandas', 'matplotlib', 'sklearn', 'scipy', 'ignite', 'sympy'}\n"
        "print('IMPORTED', sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
        "sys.exit(rc)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", child, "predict", str(run.run_dir), slide, "-o", str(out), "--uncalibrated"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "IMPORTED []" in proc.stdout, proc.stdout[-500:]
    with open(out, newline="") as f:
        (row,) = list(csv.DictReader(f))
    assert row["kind"] == "slide" and int(row["num_patches"]) > 0


def test_two_slides_with_one_file_name_in_two_folders_keep_their_own_maps(tmp_path_factory) -> None:
    import json
    import shutil

    from lilaw_med.workflows.predict import predict_inputs
    from lilaw_med.workflows.predict.core import _slide_prefixes

    sample = small_sample_data(tmp_path_factory.mktemp("sample"))
    run = pathology_patch.run(output_dir=tmp_path_factory.mktemp("runs") / "path", overrides=tiny_overrides("pathology_patch", sample))
    slide = sample["slide"].parent / json.loads(sample["slide"].read_text())["training"][0]["image"]
    here = tmp_path_factory.mktemp("slides")
    copies = []
    for folder in ("a", "b"):
        (here / folder).mkdir()
        copies.append(Path(shutil.copy(slide, here / folder / slide.name)))
    out = tmp_path_factory.mktemp("pred") / "preds.csv"
    result = predict_inputs(run.run_dir, [str(p) for p in copies], out, slide_aggregation="mean", calibrated=False)
    assert not result["failed"]
    prefixes = _slide_prefixes(out, copies)
    assert len(set(prefixes.values())) == 2
    for p in copies:
        assert prefixes[p].name.startswith(f"preds_{slide.name.split('.')[0]}_")
        assert Path(f"{prefixes[p]}_probmap.npy").is_file() and Path(f"{prefixes[p]}_patches.csv").is_file()
    maps = result["slide_maps"]
    assert len(maps) == len(set(maps)) and {Path(m).name[: len(prefixes[copies[0]].name)] for m in maps} == {
        prefixes[p].name for p in copies
    }
    # a slide whose name no other shares keeps the documented name
    assert _slide_prefixes(out, [copies[0]])[copies[0]] == out.with_name(f"preds_{slide.name.split('.')[0]}")
