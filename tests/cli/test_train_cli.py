"""The `lilaw-med train | evaluate | predict | init-config` commands, end to end on tiny runs."""

from __future__ import annotations

import csv
import importlib.resources
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lilaw_med.cli import main
from lilaw_med.data.datalist import load_datalist
from lilaw_med.run.config import validate_config
from tests.pipelines.helpers import small_sample_data, tiny_overrides


def _config_path(name: str) -> str:
    return str(importlib.resources.files("lilaw_med.configs").joinpath(name))


def _train(preset: str, config: str, sample: dict, out: Path, *extra: str) -> int:
    args = ["train", "--config", _config_path(config), "-o", str(out)]
    for s in tiny_overrides(preset, sample, *extra):
        args += ["--set", s]
    return main(args)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> dict:
    return small_sample_data(tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def run_2d(sample: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r2d"
    assert _train("radiology_2d", "radiology_2d.yaml", sample, out, "eval.calibration=threshold") == 0
    return out


@pytest.fixture(scope="module")
def run_3d(sample: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "r3d"
    assert _train("radiology_3d", "radiology_3d.yaml", sample, out) == 0
    return out


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_dicom_series(folder: Path, n: int = 6, size: int = 20) -> Path:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True)
    study, series = generate_uid(), generate_uid()
    rng = np.random.default_rng(0)
    for i in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.Modality, ds.PatientID = study, series, "CT", "TEST"
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.ImagePositionPatient, ds.ImageOrientationPatient = [0, 0, float(i)], [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness, ds.InstanceNumber = [1, 1], 1, i + 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(-100, 300, (size, size)).astype(np.int16).tobytes()
        ds.save_as(folder / f"slice_{i:03d}.dcm", enforce_file_format=True)
    return folder


def test_train_prints_the_summary_and_the_run_folder(sample: dict, tmp_path: Path, capsys) -> None:
    out = tmp_path / "run"
    assert _train("radiology_2d", "radiology_2d.yaml", sample, out) == 0
    printed = capsys.readouterr().out
    assert f"run folder: {out.absolute()}" in printed
    assert "LiLAW on" in printed and "best model, test" in printed
    assert json.loads((out / "summary.json").read_text())["epochs"] == 1


def _label_index(label, names: list[str]) -> int:
    return names.index(label) if isinstance(label, str) else int(label)


def _assert_scored_by_hand(metrics: dict, run: Path, items: list[dict], out: Path, *flags: str) -> None:
    """``metrics`` (one split of an evaluation report) are those of ``predict``'s rows for ``items``,
    counted here by hand: the two commands must agree on every prediction and every figure."""
    assert main(["predict", str(run), *[it["image"] for it in items], "-o", str(out), *flags]) == 0
    rows = _read_csv(out)
    names = [k[len("prob_"):] for k in rows[0] if k.startswith("prob_")]
    probs = np.array([[float(r[f"prob_{n}"]) for n in names] for r in rows])
    pred = np.array([names.index(r["predicted_class"]) for r in rows])
    y = np.array([_label_index(it["label"], names) for it in items])
    k = len(names)
    cm = [[int(((y == i) & (pred == j)).sum()) for j in range(k)] for i in range(k)]
    assert metrics["n"] == len(items) and metrics["confusion_matrix"] == cm
    assert metrics["accuracy"] == pytest.approx(np.trace(cm) / len(items))
    recalls = [cm[i][i] / sum(cm[i]) for i in range(k) if sum(cm[i])]
    assert metrics["balanced_accuracy"] == pytest.approx(np.mean(recalls))
    for c, name in enumerate(names):
        predicted = sum(cm[i][c] for i in range(k))
        assert metrics["per_class"][name] == pytest.approx({
            "precision": cm[c][c] / predicted if predicted else 0.0,
            "recall": cm[c][c] / sum(cm[c]) if sum(cm[c]) else 0.0,
            "support": sum(cm[c]),
        })
    assert k == 2  # binary: AUROC = P(score of a positive > score of a negative), ties count half
    pos, neg = probs[y == 1, 1], probs[y == 0, 1]
    diff = pos[:, None] - neg[None, :]
    auroc = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
    # the CSV rounds to 6 decimals: a pair tied there may be ordered in the report
    assert metrics["auroc"] == pytest.approx(auroc, abs=0.5 * (diff == 0).sum() / diff.size + 1e-9)


def test_evaluate_reports_the_metrics_of_the_calibrated_predictions_on_each_split(run_2d: Path, tmp_path: Path) -> None:
    assert main(["evaluate", str(run_2d)]) == 0
    report = json.loads((run_2d / "evaluation.json").read_text())
    summary = json.loads((run_2d / "summary.json").read_text())
    assert report["calibration"] == summary["calibration"]["best"] and report["calibration"]["method"] == "threshold"
    datalist = json.loads((run_2d / "datalist.json").read_text())
    assert list(report["splits"]) == ["validation", "test"]
    for split, metrics in report["splits"].items():
        _assert_scored_by_hand(metrics, run_2d, datalist[split], tmp_path / f"{split}.csv")


def test_evaluate_split_reports_that_split_alone(run_2d: Path, tmp_path: Path) -> None:
    both, test_only = tmp_path / "both.json", tmp_path / "test.json"
    assert main(["evaluate", str(run_2d), "-o", str(both)]) == 0
    assert main(["evaluate", str(run_2d), "--split", "test", "-o", str(test_only)]) == 0
    report = json.loads(test_only.read_text())
    assert list(report["splits"]) == ["test"]
    assert report["splits"]["test"] == json.loads(both.read_text())["splits"]["test"]
    assert main(["evaluate", str(run_2d), "--split", "validation", "-o", str(test_only)]) == 0
    assert list(json.loads(test_only.read_text())["splits"]) == ["validation"]


def test_predict_on_a_dicom_file(run_2d: Path, sample: dict, tmp_path: Path) -> None:
    items = json.loads((run_2d / "datalist.json").read_text())["test"][:2]
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_2d), *[it["image"] for it in items], "-o", str(out)]) == 0
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == [it["image"] for it in items]
    for r in rows:
        probs = [float(v) for k, v in r.items() if k.startswith("prob_")]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5
        assert r["predicted_class"] in ("normal", "opacity")


def test_predict_on_a_nifti_volume_and_a_dicom_series_folder(run_3d: Path, tmp_path: Path) -> None:
    nifti = json.loads((run_3d / "datalist.json").read_text())["test"][0]["image"]
    assert nifti.endswith((".nii", ".nii.gz"))
    series = _write_dicom_series(tmp_path / "series")
    out = tmp_path / "preds3d.csv"
    assert main(["predict", str(run_3d), nifti, str(series), "-o", str(out), "--checkpoint", "final"]) == 0
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == [nifti, str(series)]
    for r in rows:
        probs = [float(v) for k, v in r.items() if k.startswith("prob_")]
        assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-5


def test_predict_probabilities_match_the_network(run_2d: Path, tmp_path: Path) -> None:
    from lilaw_med.training.model import load_model
    from lilaw_med.workflows.trained_run import TrainedRun

    item = json.loads((run_2d / "datalist.json").read_text())["test"][0]
    out = tmp_path / "p.csv"
    assert main(["predict", str(run_2d), item["image"], "-o", str(out), "--uncalibrated"]) == 0
    network, _ = load_model(run_2d)
    batch = next(iter(TrainedRun.load(run_2d).loader([{"image": item["image"], "id": "x"}], 1)))
    with torch.no_grad():
        expected = torch.softmax(network(batch["image"]), dim=1)[0].tolist()
    got = [float(v) for k, v in _read_csv(out)[0].items() if k.startswith("prob_")]
    assert np.allclose(got, expected, atol=1e-5)


def test_init_config_writes_the_packaged_preset(tmp_path: Path) -> None:
    for preset in ("radiology_2d", "radiology_3d", "pathology_patch"):
        out = tmp_path / f"{preset}.yaml"
        assert main(["init-config", preset, "-o", str(out)]) == 0
        cfg = validate_config(yaml.safe_load(out.read_text()))
        assert cfg["data"]["preset"] == ("pathology" if preset == "pathology_patch" else preset)
    assert main(["init-config", "radiology_2d", "-o", str(tmp_path / "radiology_2d.yaml")]) == 1  # no --force


def test_unknown_config_key_is_a_one_line_error_with_a_suggestion(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("data:\n  sample_data: true\ntrain:\n  epocs: 3\n")
    assert main(["train", "--config", str(bad), "-o", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err.strip()
    assert "'train.epocs' is unknown" in err and "did you mean 'epochs'" in err
    assert len(err.splitlines()) == 1 and not (tmp_path / "r").exists()


def test_a_bad_override_type_names_the_field(tmp_path: Path, capsys) -> None:
    args = ["train", "--config", _config_path("radiology_2d.yaml"), "--set", "train.batch_size=big"]
    assert main(args + ["-o", str(tmp_path / "r")]) == 1
    assert "'train.batch_size' must be integer" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_a_gpu_is_a_clear_error(sample: dict, tmp_path: Path, capsys) -> None:
    assert _train("radiology_2d", "radiology_2d.yaml", sample, tmp_path / "r", "train.device=cuda") == 1
    assert "CUDA is not available" in capsys.readouterr().err


def test_evaluate_on_another_datalist(run_2d: Path, sample: dict, tmp_path: Path) -> None:
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run_2d), "--datalist", str(sample["radiology_2d"]), "-o", str(out), "--uncalibrated"]) == 0
    report = json.loads(out.read_text())
    assert list(report["splits"]) == ["datalist"] and report["calibration"]["method"] == "none"
    given = load_datalist(sample["radiology_2d"], require_training=False)  # image paths resolved
    items = [it for _, it in given.iter_items() if it.get("label") is not None]
    _assert_scored_by_hand(report["splits"]["datalist"], run_2d, items, tmp_path / "p.csv", "--uncalibrated")


def test_train_exclude_and_relabel_shape_the_runs_datalist(run_2d: Path, sample: dict, tmp_path: Path) -> None:
    training = json.loads((run_2d / "datalist.json").read_text())["training"]
    names = json.loads((run_2d / "summary.json").read_text()).get("class_names") or ["normal", "opacity"]
    excluded = [training[0]["id"], training[1]["id"]]
    moved = training[2]
    new_label = names[1 - _label_index(moved["label"], names)]
    exclude_csv, relabel_csv = tmp_path / "exclude.csv", tmp_path / "relabel.csv"
    exclude_csv.write_text("id,reason\n" + "".join(f"{i},audit\n" for i in excluded))
    relabel_csv.write_text(f"id,label\n{moved['id']},{new_label}\n")
    out = tmp_path / "curated"
    args = ["train", "--config", _config_path("radiology_2d.yaml"), "-o", str(out), "--exclude", str(exclude_csv),
            "--relabel", str(relabel_csv)]
    for s in tiny_overrides("radiology_2d", sample):
        args += ["--set", s]
    assert main(args) == 0
    curated = json.loads((out / "datalist.json").read_text())
    ids = {it["id"] for split in ("training", "validation", "test") for it in curated.get(split, [])}
    assert not ids & set(excluded)
    assert len(ids) == len({it["id"] for s in ("training", "validation", "test")
                            for it in json.loads((run_2d / "datalist.json").read_text()).get(s, [])}) - 2
    item = next(it for it in curated["training"] if it["id"] == moved["id"])
    assert _label_index(item["label"], names) == names.index(new_label)
    assert item["label_before_relabel"] == moved["label"]


def test_predict_refuses_an_input_of_the_wrong_dimensionality(run_2d: Path, tmp_path: Path, capsys) -> None:
    series = _write_dicom_series(tmp_path / "series")
    assert main(["predict", str(run_2d), str(series), "-o", str(tmp_path / "p.csv")]) == 1
    assert "wrong dimensionality: expected a 2D image but got a 3D one (shape (20, 20, 6))" in capsys.readouterr().err
    assert main(["predict", str(run_2d), str(tmp_path / "absent.dcm"), "-o", str(tmp_path / "p.csv")]) == 1


def _bad_and_hostile_inputs(run_2d: Path, folder: Path) -> tuple[list[str], dict[str, str]]:
    """Good DICOM files (two of them under spreadsheet-formula names) among inputs that cannot be
    predicted; returns the inputs and, for each bad one, a word its error must contain."""
    import shutil

    good = json.loads((run_2d / "datalist.json").read_text())["test"][0]["image"]
    folder.mkdir()
    formula = shutil.copy(good, folder / '=HYPERLINK("evil","x").dcm')
    at = shutil.copy(good, folder / "@SUM(1+1).dcm")
    nan = np.full((32, 32), 100.0, np.float32)
    nan[5, 5] = np.nan
    np.save(folder / "nan.npy", nan)
    inf = np.full((32, 32), 100.0, np.float32)
    inf[7, 7] = np.inf  # a percentile scaling would clip it into a valid-looking image
    np.save(folder / "inf.npy", inf)
    (folder / "empty.dcm").write_bytes(b"")
    (folder / "notes.txt").write_text("not an image")
    bad = {
        str(folder / "nan.npy"): "NaN",
        str(folder / "absent.dcm"): "not found",
        str(folder / "inf.npy"): "inf",
        str(folder / "empty.dcm"): "empty.dcm",
        str(folder / "notes.txt"): "notes.txt",
    }
    inputs = [good, str(folder / "nan.npy"), str(formula), str(folder / "absent.dcm"), str(folder / "inf.npy"),
              str(at), str(folder / "empty.dcm"), str(folder / "notes.txt")]
    return inputs, bad


def test_predict_keeps_going_past_bad_inputs_and_guards_formula_cells(run_2d: Path, tmp_path: Path, capsys) -> None:
    from lilaw_med.utils import FORMULA_START

    inputs, bad = _bad_and_hostile_inputs(run_2d, tmp_path / "in")
    out = tmp_path / "preds.csv"
    assert main(["predict", str(run_2d), *inputs, "-o", str(out), "--batch-size", "2"]) == 1
    rows = _read_csv(out)
    assert [r["path"] for r in rows] == [str(Path(p).absolute()) for p in inputs]  # every input, in order
    probs_of = {}
    for r, path in zip(rows, inputs, strict=True):
        probs = [v for k, v in r.items() if k.startswith("prob_")]
        if path in bad:
            assert bad[path].lower() in r["error"].lower(), r
            assert (r["predicted_label"], r["predicted_class"], set(probs)) == ("", "", {""})  # no class, ever
        else:
            assert r["error"] == "" and r["predicted_class"] in ("normal", "opacity")
            assert abs(sum(map(float, probs)) - 1) < 1e-5
            probs_of[path] = probs
    assert len(set(map(tuple, probs_of.values()))) == 1  # the same image under three names: the same output
    assert rows[2]["id"] == '\'=HYPERLINK("evil","x").dcm' and rows[5]["id"] == "'@SUM(1+1).dcm"
    with open(out, newline="") as f:
        cells = [cell for row in csv.reader(f) for cell in row]
    assert not [c for c in cells if c.startswith(FORMULA_START)]  # nothing a spreadsheet would run
    err = capsys.readouterr()
    assert "3 prediction(s) and 5 error(s) written to" in err.out
    assert err.err.strip().splitlines()[-1] == (
        f"lilaw-med predict: error: 5 of 8 input(s) could not be predicted; their rows in {out} give the reason "
        "in the 'error' column."
    )
    assert "Traceback" not in err.err


def test_non_finite_pixels_or_outputs_never_get_a_class(run_2d: Path, tmp_path: Path) -> None:
    from torch import nn

    from lilaw_med.workflows.predict.images import ImagePreparer, predict_images
    from lilaw_med.workflows.trained_run import TrainedRun

    run = TrainedRun.load(run_2d, device="cpu")
    for value in (np.nan, np.inf, -np.inf):
        image = np.full((32, 32), 100.0, np.float32)
        image[3, 3] = value
        np.save(tmp_path / "x.npy", image)
        with pytest.raises(ValueError, match="x.npy: NaN or inf"):  # the pre-flight's verdict
            ImagePreparer(run)(tmp_path / "x.npy")

    class Overflowing(nn.Module):  # a finite image the network cannot score (as an overflow would)
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(x.shape[0], 2)
            out[0] = float("nan")
            return out

    good = Path(json.loads((run_2d / "datalist.json").read_text())["test"][0]["image"])
    run.network = Overflowing()
    rows = [row for batch in predict_images([good, good], run, {}, 8) for row in batch]
    assert rows[0] == ["", "", "", "", "", f"{good}: the model's output is not finite; no prediction is made for it."]
    assert rows[1][:2] == [0, run.output_names[0]] and rows[1][-1] == ""


def test_unloadable_model_is_one_line_for_evaluate_predict_and_export(run_2d: Path, tmp_path: Path, capsys) -> None:
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_2d, broken)
    image = json.loads((run_2d / "datalist.json").read_text())["test"][0]["image"]
    commands = (
        ["evaluate", str(broken)],
        ["predict", str(broken), image, "-o", str(tmp_path / "p.csv")],
        ["bundle", "export", "--run", str(broken), str(tmp_path / "bundle")],
    )
    for content, expected in (
        (b"\x00garbage" * 100, "cannot load the model file (UnpicklingError: not a torch file"),
        (b"PK\x03\x04" + b"\x00" * 100, "cannot load the model file (RuntimeError: "),  # a torn zip
        (None, "not a lilaw-med model file (it lacks ['network', 'network_name'"),
    ):
        for name in ("best_model.pt", "final_model.pt"):
            if content is None:
                torch.save({"weights": torch.zeros(2)}, broken / "checkpoints" / name)
            else:
                (broken / "checkpoints" / name).write_bytes(content)
        for argv in commands:
            assert main(argv) == 1, argv
            err = capsys.readouterr().err.strip()
            assert "Traceback" not in err and len(err.splitlines()) == 1, err
            assert str(broken / "checkpoints" / "best_model.pt") in err and expected in err, err
