"""`lilaw-med audit` on a tiny run folder: every file, the columns, the self-contained HTML."""

from __future__ import annotations

import csv
import json
import re

import pytest

from lilaw_med.audit.report import run_audit
from lilaw_med.cli import main
from lilaw_med.data.curation import read_id_csv
from tests.audit.conftest import HOSTILE_ID, N_TRAIN, WRONG, make_run_folder


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_audit_writes_every_file_with_cleanlab_columns(run_folder, capsys):
    assert main(["audit", str(run_folder), "--no-final-model-baseline"]) == 0
    out = run_folder / "audit"
    for name in ("audit.csv", "audit.json", "exclude.csv", "detection.json", "report.html"):
        assert (out / name).is_file(), name
    rows = _rows(out / "audit.csv")
    assert len(rows) == N_TRAIN
    for col in ("id", "path", "given_label", "predicted_label", "label_score", "rank", "is_label_issue",
                "mean_prob_label", "mean_margin", "mean_weight", "difficulty", "study_instance_uid",
                "series_instance_uid", "sop_instance_uid", "true_label"):
        assert col in rows[0], col
    assert "patient_id" not in rows[0] and "patient_name" not in rows[0]
    ranked = sorted(rows, key=lambda r: int(r["rank"]))
    assert {r["id"] for r in ranked[:3]} == {f"img-{i:02d}" for i in WRONG}
    assert {r["difficulty"] for r in rows} <= {"easy", "moderate", "hard"}
    detection = json.loads((out / "detection.json").read_text())
    assert detection["scores"]["label_score"]["auroc"] == pytest.approx(1.0)
    assert "final_epoch_self_confidence" in detection["scores"]
    printed = capsys.readouterr().out
    assert "AUROC" in printed and "report.html" in printed


def test_exclude_csv_lists_the_flagged_items_and_is_read_back(run_folder):
    result = run_audit(run_folder, noise_rate=3 / N_TRAIN, rule="noise_rate", final_model_baseline=False)
    excluded = read_id_csv(result.files["exclude.csv"])
    assert {r["id"] for r in excluded} == {r["id"] for r in result.rows if r["is_label_issue"]}
    counts = [sum(r["given_label"] == k for r in result.rows) for k in (0, 1)]
    assert len(excluded) == sum(round(3 / N_TRAIN * n) for n in counts)  # per class: round(rate * n_k)


def test_report_is_self_contained_with_thumbnails_and_escapes_data(run_folder):
    run_audit(run_folder, final_model_baseline=False)
    text = (run_folder / "audit" / "report.html").read_text()
    assert text.count("data:image/png;base64,") >= 5  # thumbnails and plots
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", text)
    assert HOSTILE_ID not in text and "img-&lt;b&gt;&amp;&quot;x" in text
    assert "alpha, beta, delta" in text or "alt=\"alpha beta delta\"" in text
    assert "Detection quality" in text


def test_audit_without_truth_has_no_detection(tmp_path):
    run = make_run_folder(tmp_path, with_truth=False)
    result = run_audit(run, thumbnails=False)
    assert result.detection is None and not (run / "audit" / "detection.json").exists()
    assert "true_label" not in result.rows[0]


def test_audit_errors_are_one_line_user_errors(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 1
    assert "datalist.json is missing" in capsys.readouterr().err


def test_audit_to_another_folder(run_folder, tmp_path):
    result = run_audit(run_folder, tmp_path / "elsewhere", thumbnails=False, final_model_baseline=False)
    assert (tmp_path / "elsewhere" / "audit.csv").is_file() and result.out_dir == tmp_path / "elsewhere"


def test_dicom_items_get_their_uids_and_no_identifying_tag(tmp_path):
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    run = make_run_folder(tmp_path)
    dl = json.loads((run / "datalist.json").read_text())
    path = tmp_path / "images" / "case00.dcm"
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = SecondaryCaptureImageStorage, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.3.4", "1.2.3.4.5"
    ds.PatientName, ds.PatientID, ds.Modality = "Doe^Jane", "PID-SECRET", "OT"
    ds.Rows = ds.Columns = 16
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = (np.arange(256, dtype=np.uint16) * 100).tobytes()
    ds.save_as(str(path), enforce_file_format=True)
    dl["training"][0]["image"] = str(path)
    (run / "datalist.json").write_text(json.dumps(dl))
    result = run_audit(run, final_model_baseline=False, include_identifying=False, top_k=16)
    row = next(r for r in result.rows if r["path"] == str(path))
    assert row["study_instance_uid"] == "1.2.3.4" and row["series_instance_uid"] == "1.2.3.4.5"
    assert row["sop_instance_uid"] == str(ds.SOPInstanceUID)
    for name in ("audit.csv", "audit.json", "report.html"):
        text = (run / "audit" / name).read_text()
        assert "PID-SECRET" not in text and "Doe^Jane" not in text, name
    with_id = run_audit(run, tmp_path / "ident", thumbnails=False, final_model_baseline=False, include_identifying=True)
    assert next(r for r in with_id.rows if r["path"] == str(path))["patient_id"] == "PID-SECRET"


def test_thumbnails_take_the_middle_slice_of_a_volume():
    import numpy as np

    from lilaw_med.audit.plots import thumbnail_png, to_display

    vol = np.zeros((1, 8, 6, 5), dtype=np.float32)  # (C, W, H, D)
    vol[0, :, :, 2] = np.arange(8)[:, None]
    img = to_display(vol)
    assert img.shape == (6, 8) and img.dtype == np.uint8 and img[0, -1] == 255 and img[0, 0] == 0
    assert to_display(np.random.rand(3, 8, 6)).shape == (6, 8, 3)
    assert thumbnail_png(img).startswith(b"\x89PNG")


def test_an_unlearnt_scoring_window_is_reported(tmp_path, capsys):
    run = make_run_folder(tmp_path, learned=False)  # every prediction is class 0 in every epoch
    assert main(["audit", str(run), "--no-thumbnails", "--no-final-model-baseline"]) == 0
    assert "no better than always predicting the largest class" in capsys.readouterr().out
    summary = json.loads((run / "audit" / "audit.json").read_text())["summary"]["splits"]["training"]
    assert summary["warnings"] and summary["agreement_in_scored_epochs"] <= summary["largest_class_share"]
    assert "Warning:" in (run / "audit" / "report.html").read_text()
