"""`predict` at scale: inputs from a list file, a folder or a glob; rows on disk batch by batch; workers."""

from __future__ import annotations

import csv
import importlib.resources
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lilaw_med.cli import main
from lilaw_med.workflows.predict import collect_inputs, predict_inputs
from tests.pipelines.helpers import small_sample_data, tiny_overrides

NUM_IMAGES = 50


@pytest.fixture(scope="module")
def run_2d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sample = small_sample_data(tmp_path_factory.mktemp("sample"))
    out = tmp_path_factory.mktemp("runs") / "r2d"
    args = ["train", "--config", str(importlib.resources.files("lilaw_med.configs").joinpath("radiology_2d.yaml")),
            "-o", str(out)]
    for s in tiny_overrides("radiology_2d", sample):
        args += ["--set", s]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def pngs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    folder = tmp_path_factory.mktemp("pngs")
    rng = np.random.default_rng(0)
    paths = []
    for i in range(NUM_IMAGES):
        path = folder / f"img_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (40, 36), dtype=np.uint8)).save(path)
        paths.append(path)
    (folder / "notes.txt").write_text("not an image")
    (folder / ".hidden.png").write_bytes(b"")
    return paths


def _rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as f:
        return list(csv.reader(f))


def test_list_file_folder_and_glob_give_the_rows_of_the_argument_form(
    run_2d: Path, pngs: list[Path], tmp_path: Path
) -> None:
    by_args = tmp_path / "args.csv"
    result = predict_inputs(run_2d, [str(p) for p in pngs], by_args, batch_size=8, num_workers=0)
    expected = _rows(by_args)
    assert result["n"] == NUM_IMAGES and not result["failed"]
    assert len(expected) == NUM_IMAGES + 1 and [r[1] for r in expected[1:]] == [str(p) for p in pngs]
    assert all(r[-1] == "" and r[3] != "" for r in expected[1:])
    listing = pngs[0].parent / "inputs.txt"  # relative to the list file's folder, with a comment and a blank line
    listing.write_text("# the test images\n\n" + "\n".join(p.name for p in pngs) + "\n")
    for form in (["--list", str(listing)], ["--folder", str(pngs[0].parent)], [str(pngs[0].parent / "img_*.png")]):
        out = tmp_path / "form.csv"
        assert main(["predict", str(run_2d), *form, "-o", str(out), "--batch-size", "8", "--num-workers", "2"]) == 0
        assert _rows(out) == expected, form
        assert not Path(f"{out}.partial").exists()


def test_predict_without_any_input_is_one_line(run_2d: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["predict", str(run_2d), "-o", str(tmp_path / "p.csv")]) == 1
    assert capsys.readouterr().err.strip() == (
        "lilaw-med predict: error: no input: give image paths or patterns, --list FILE or --folder DIR."
    )
    assert main(["predict", str(run_2d), "--list", str(tmp_path / "absent.txt"), "-o", str(tmp_path / "p.csv")]) == 1
    assert "--list " in capsys.readouterr().err


def test_collect_inputs_keeps_the_order_and_refuses_what_matches_nothing(pngs: list[Path], tmp_path: Path) -> None:
    folder = pngs[0].parent
    assert collect_inputs(folder=folder) == [str(p) for p in pngs]  # notes.txt and hidden names left out
    assert collect_inputs(["missing.png", str(folder / "img_00[12].png")]) == ["missing.png", *map(str, pngs[1:3])]
    with pytest.raises(ValueError, match="matches no file"):
        collect_inputs([str(tmp_path / "*.dcm")])
    with pytest.raises(ValueError, match="not a folder"):
        collect_inputs(folder=tmp_path / "absent")


def test_a_crash_mid_way_leaves_the_rows_done_in_the_partial_file(
    run_2d: Path, pngs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import lilaw_med.workflows.predict.images as images

    full = tmp_path / "full.csv"
    predict_inputs(run_2d, pngs, full, batch_size=8, num_workers=0)
    calls = {"n": 0}
    real = images.run_inference

    def crash_on_the_third_batch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash")
        return real(*args, **kwargs)

    monkeypatch.setattr(images, "run_inference", crash_on_the_third_batch)
    out = tmp_path / "preds.csv"
    with caplog.at_level(logging.ERROR), pytest.raises(RuntimeError, match="simulated crash"):
        predict_inputs(run_2d, pngs, out, batch_size=8, num_workers=0)
    assert not out.exists()
    assert _rows(Path(f"{out}.partial")) == _rows(full)[: 1 + 16]  # the header and two batches of 8
    assert f"after 16 row(s): they are in {out}.partial" in caplog.text


def test_pictures_are_decoded_once_and_judged_as_the_pre_flight_judges_them(
    run_2d: Path, pngs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lilaw_med.workflows.predict.inputs as inputs

    real = inputs.read_header

    def no_header_decode(path, *args, **kwargs):
        if Path(path).is_file():
            raise AssertionError(f"read_header decoded {path} before the loader did")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(inputs, "read_header", no_header_decode)
    thin = tmp_path / "thin.png"
    Image.fromarray(np.zeros((30, 1), dtype=np.uint8)).save(thin)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(pngs[0].read_bytes()[:60])
    out = tmp_path / "p.csv"
    result = predict_inputs(run_2d, [pngs[0], thin, truncated, tmp_path / "absent.png"], out, num_workers=0)
    rows = _rows(out)[1:]
    assert rows[0][-1] == "" and rows[0][3] != ""
    assert rows[1][-1] == f"{thin}: degenerate image shape (1, 30): every axis needs 2 pixels or more."
    assert rows[2][-1].startswith(f"{truncated}: ") and rows[2][3] == ""
    assert rows[3][-1] == f"image not found: {tmp_path / 'absent.png'}"
    assert len(result["failed"]) == 3


def test_a_writer_error_closes_the_image_generator_and_its_loader(
    run_2d: Path, pngs: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lilaw_med.workflows.predict.core as core
    from lilaw_med.workflows.predict.output import PredictionWriter

    real_images, real_write = core.predict_images, PredictionWriter.write_rows
    state = {"closed": False, "rows": 0}

    def watched_images(*args, **kwargs):
        try:
            yield from real_images(*args, **kwargs)
        finally:
            state["closed"] = True

    def failing_write(self, rows):
        state["rows"] += 1
        if state["rows"] == 3:
            raise OSError(28, "No space left on device")
        real_write(self, rows)

    monkeypatch.setattr(core, "predict_images", watched_images)
    monkeypatch.setattr(PredictionWriter, "write_rows", failing_write)
    try:
        predict_inputs(run_2d, pngs[:16], tmp_path / "p.csv", batch_size=8, num_workers=0)
    except OSError as e:
        # checked while the traceback still holds predict_inputs' frame: only an explicit close ends
        # the generator this early (else it waits for the garbage collector, its workers with it)
        assert state["closed"] and "No space left" in str(e)
    else:
        pytest.fail("the writer's error did not propagate")
