"""`lilaw-med audit` / run_audit on the hand-made run folder of conftest.py: what is flagged, the
estimates, the window, every file, the CSV's formula neutralisation and the self-contained HTML.

The expected numbers (see conftest.py): the scoring window is epochs 1-2 (best validation loss at
epoch 2); the count window epoch 1, where the wrong labels are confidently contradicted: the
calibrated confident joint is [[7, 2], [1, 6]] (class 0: 9 items, 2 wrong; class 1: 7 items, 1 wrong),
so the estimated shares are 2/9 and 1/7 and the per-class counts 2 and 1. The wrong items'
window score is (sigmoid(-3) + sigmoid(0)) / 2 = 0.2737, every right one's at least sigmoid(2) = 0.881.
"""

from __future__ import annotations

import csv
import json
import re

import numpy as np
import pytest
import yaml

from lilaw_med.audit import report
from lilaw_med.audit.report import COLUMNS
from lilaw_med.cli import main
from lilaw_med.data.curation import read_id_csv
from lilaw_med.workflows.audit import run_audit
from tests.audit.conftest import (
    HOSTILE_ID,
    N_TRAIN,
    N_VAL,
    WRONG,
    given_logit,
    item_id,
    make_run_folder,
    wrong_ids,
)

WRONG_SCORE = (1 / (1 + np.exp(3)) + 0.5) / 2  # 0.2737


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _quiet(run, out=None, **kw):
    return run_audit(run, out, thumbnails=False, final_model_baseline=False, **kw)


def test_audit_cli_writes_every_file_with_the_documented_columns(run_folder, capsys):
    assert main(["audit", str(run_folder), "--no-final-model-baseline"]) == 0
    out = run_folder / "audit"
    for name in ("audit.csv", "audit.json", "exclude.csv", "detection.json", "report.html"):
        assert (out / name).is_file(), name
    with open(out / "audit.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == [*COLUMNS, "true_label", "true_class"]  # no patient_id without --include-identifying
    rows = _rows(out / "audit.csv")
    assert [r["split"] for r in rows] == ["training"] * N_TRAIN + ["validation"] * N_VAL
    assert {r["id"] for r in rows if r["is_label_issue"] == "True"} == wrong_ids()
    printed = capsys.readouterr().out
    assert "training: 16 items, 3 suspected mislabels" in printed
    assert "scoring window: epochs 1-2 (best_val_loss)" in printed
    assert "label_score" in printed and "AUROC 1.0000" in printed and "report.html" in printed


def test_default_audit_flags_exactly_the_wrong_labels(run_folder):
    result = _quiet(run_folder)
    assert {r["id"] for r in result.rows if r["is_label_issue"]} == wrong_ids()
    train = [r for r in result.rows if r["split"] == "training"]
    assert {r["id"] for r in train if r["rank"] <= 3} == wrong_ids()  # the three lowest scores
    for r in train:
        i = next(k for k in range(N_TRAIN) if item_id(k) == r["id"])
        if i in WRONG:
            assert r["label_score"] == pytest.approx(WRONG_SCORE, abs=1e-3)
            assert r["predicted_label"] != r["given_label"] and r["true_label"] != r["given_label"]
        else:
            assert r["label_score"] >= 0.88 and r["predicted_label"] == r["given_label"]
        # the normalized margin, (p[given] - p[other] + 1) / 2, is p[given] for two classes (up to the rounding of the
        # recorded probabilities, whose sum is 1 within float16)
        assert r["epochs_seen"] == 3 and r["p_given"] == pytest.approx(r["label_score"], abs=1e-4)
    assert not any(r["is_label_issue"] for r in result.rows if r["split"] == "validation")


def test_audit_json_reports_the_estimated_counts_and_the_scoring_window(run_folder):
    _quiet(run_folder)
    summary = json.loads((run_folder / "audit" / "audit.json").read_text())["summary"]
    train = summary["splits"]["training"]
    reason = train["window"].pop("reason")
    assert train["window"] == {"first_epoch": 1, "last_epoch": 2, "rule": "best_val_loss", "n_epochs_recorded": 3}
    # the meta step's validation forwards (conftest: mean CE 0.313, 0.127, 0.474) are best at epoch 2
    assert reason.startswith("epochs 1-2 of 3: the noisy validation loss was best at epoch 2, "), reason
    per_class = train["per_class"]
    assert [c["class"] for c in per_class] == ["normal", "pneumonia"]
    assert [c["n_items"] for c in per_class] == [9, 7]
    assert [c["estimated_n_wrong"] for c in per_class] == [2, 1]
    assert [c["estimated_noise_rate"] for c in per_class] == pytest.approx([2 / 9, 1 / 7])
    assert train["estimated_noise_rate"] == pytest.approx(3 / 16)  # (2/9 * 9 + 1/7 * 7) / 16
    lo, hi = train["estimated_noise_rate_interval"]
    assert lo <= 3 / 16 <= hi and train["interval_confidence"] == 0.95
    for c in per_class:
        assert c["estimated_noise_rate_interval"][0] <= c["estimated_noise_rate"] <= c["estimated_noise_rate_interval"][1]
    assert [c["n_label_issues"] for c in per_class] == [2, 1]
    assert [c["threshold"] for c in per_class] == pytest.approx([WRONG_SCORE] * 2, abs=1e-3)
    val = summary["splits"]["validation"]
    assert val["n_items"] == N_VAL and val["n_label_issues"] == 0 and val["estimated_noise_rate"] == 0
    assert summary["options"]["window"] == "best_val_loss" and summary["options"]["count_window"] == "val_loss_at_least_fraction"


def test_detection_json_scores_the_audit_against_the_noise_sidecar(run_folder):
    _quiet(run_folder)
    d = json.loads((run_folder / "audit" / "detection.json").read_text())
    assert d["n_items"] == N_TRAIN and d["n_mislabeled"] == 3 and d["true_noise_rate"] == pytest.approx(3 / 16)
    assert d["scores"]["label_score"]["auroc"] == 1.0 and d["scores"]["label_score"]["average_precision"] == 1.0
    # the last epoch has memorised the wrong labels (p[given] = sigmoid(4) = 0.982 above every right one)
    assert d["scores"]["final_epoch_self_confidence"]["auroc"] == 0.0
    assert d["is_label_issue"]["n_flagged"] == 3
    assert d["is_label_issue"]["precision"] == 1.0 and d["is_label_issue"]["recall"] == 1.0
    assert d["is_label_issue"]["count_error"] == 0.0
    assert [r["true"] for r in d["noise_rate"]] == pytest.approx([2 / 9, 1 / 7])
    assert [r["estimated"] for r in d["noise_rate"]] == pytest.approx([2 / 9, 1 / 7])
    assert "curves" not in d


def test_the_meta_steps_validation_loss_chooses_the_window_before_metrics_csv(tmp_path):
    # metrics.csv best at epoch 3, the recorded validation forwards best at epoch 2: epochs 1-2
    run = make_run_folder(tmp_path / "a", metrics_val_loss=(0.6, 0.5, 0.4))
    assert _quiet(run).splits["training"].window.stop == 2
    # without validation dynamics metrics.csv decides: epochs 1-3
    run = make_run_folder(tmp_path / "b", record_validation=False, metrics_val_loss=(0.6, 0.5, 0.4))
    result = _quiet(run)
    assert result.splits["training"].window.stop == 3 and set(result.splits) == {"training"}
    # neither: every epoch, and the report says why
    run = make_run_folder(tmp_path / "c", record_validation=False, metrics_val_loss=None)
    w = _quiet(run).splits["training"].window
    assert (w.start, w.stop, w.rule) == (0, 3, "all") and "no validation loss" in w.reason


def test_the_count_window_follows_the_end_of_epoch_validation_loss(tmp_path):
    # the fixture: meta step's validation loss best at epoch 2 (scoring window 1-2), metrics.csv's best at
    # epoch 1 (count window 1): counted on epoch 1 every wrong label is contradicted (p[other] 0.953)
    result = _quiet(make_run_folder(tmp_path / "a"))
    train = result.splits["training"]
    assert (train.window.stop, train.count_window.stop) == (2, 1)
    assert train.noise.n_wrong.tolist() == [2, 1]
    cw = result.summary["splits"]["training"]["count_window"]
    assert (cw["first_epoch"], cw["last_epoch"]) == (1, 1) and "best at epoch 1" in cw["reason"]
    # metrics.csv best at epoch 3: the count window is epochs 1-3, where the wrong labels' mean p[other]
    # (0.953 + 0.5 + 0.018) / 3 = 0.490 stays below the thresholds: the late window counts nothing
    late = _quiet(make_run_folder(tmp_path / "b", metrics_val_loss=(0.6, 0.5, 0.4)))
    assert late.splits["training"].count_window.stop == 3
    assert late.splits["training"].noise.n_wrong.tolist() == [0, 0]
    # without metrics.csv the meta step's curve decides (epochs 1-2)
    meta = _quiet(make_run_folder(tmp_path / "c", metrics_val_loss=None))
    assert meta.splits["training"].count_window.stop == 2
    assert meta.splits["training"].count_window.reason.endswith("(read on the validation loss of the meta step)")
    # a run that validated every 2nd epoch repeats stale values in metrics.csv: the meta step's curve decides
    sparse = make_run_folder(tmp_path / "d")
    cfg = yaml.safe_load((sparse / "config.yaml").read_text())
    cfg.setdefault("eval", {})["interval"] = 2
    (sparse / "config.yaml").write_text(yaml.safe_dump(cfg))
    assert _quiet(sparse).splits["training"].count_window.stop == 2
    # no validation loss at all: the first 0.2 of the epochs (epoch 1), not every epoch
    bare = _quiet(make_run_folder(tmp_path / "e", record_validation=False, metrics_val_loss=None))
    w = bare.splits["training"].count_window
    assert (w.stop, w.rule) == (1, "fraction") and w.reason.endswith("the run has no validation loss")


def test_a_warm_up_without_meta_steps_keeps_the_validation_items_class_probabilities(tmp_path):
    # no meta step in epoch 1 (a LiLAW warm-up): that epoch's validation record has no probs field, the
    # later ones have; the validation items keep their class probabilities (epoch 1 NaN) and are audited
    from lilaw_med.run.dynamics_format import load_dynamics

    run = make_run_folder(tmp_path / "run", val_from_epoch=2)
    val = load_dynamics(run / "dynamics", split="validation")
    assert val.epochs == [1, 2, 3] and val.has_probs
    probs = val["probs"]
    assert probs.shape == (3, N_VAL, 2) and np.isnan(probs[0]).all()
    assert probs[1:, :, 0] + probs[1:, :, 1] == pytest.approx(np.ones((2, N_VAL)), abs=2e-3)
    result = _quiet(run)
    v = result.splits["validation"]
    assert np.isfinite(v.window_probs).all() and v.window.stop == 2
    # epoch 2 alone was seen: p[given] = sigmoid(2) = 0.881 for every validation item
    assert v.window_probs[np.arange(N_VAL), v.labels] == pytest.approx(np.full(N_VAL, 0.881), abs=2e-3)


def test_the_early_count_window_counts_labels_the_network_memorised_later(run_folder, tmp_path):
    # counted on the last epoch, where every wrong label is memorised (p[given] 0.982), the confident
    # joint is diagonal: nothing estimated wrong, nothing flagged
    late = _quiet(run_folder, tmp_path / "late", count_window="last")
    assert late.splits["training"].noise.per_class.tolist() == [0.0, 0.0]
    assert not late.splits["training"].is_label_issue.any()
    # scored on the last epoch alone, the wrong labels rank last
    last = _quiet(run_folder, tmp_path / "last", window="last")
    assert {r["id"] for r in last.rows if r["split"] == "training" and r["rank"] >= N_TRAIN - 2} == wrong_ids()


def test_noise_rate_overrides_the_estimated_count_per_class(run_folder):
    result = _quiet(run_folder, noise_rate=1 / 3)
    flagged = [r for r in result.rows if r["is_label_issue"]]
    # per class rint(1/3 * n): training 9 -> 3, 7 -> 2 (2.33); validation 2 -> 1 (0.67) per class
    by = {(s, k): sum(r["split"] == s and r["given_label"] == k for r in flagged)
          for s in ("training", "validation") for k in (0, 1)}
    assert by == {("training", 0): 3, ("training", 1): 2, ("validation", 0): 1, ("validation", 1): 1}
    assert wrong_ids() <= {r["id"] for r in flagged}
    excluded = read_id_csv(result.files["exclude.csv"])
    assert [r["id"] for r in excluded] == [r["id"] for r in sorted(flagged, key=lambda r: (r["split"] != "training", r["rank"]))]
    assert "label issue (normalized_margin, best_val_loss window" in excluded[0]["reason"]


def test_a_version_1_run_without_recorded_probs_is_audited_the_same(tmp_path):
    result = _quiet(make_run_folder(tmp_path, with_probs=False))
    assert {r["id"] for r in result.rows if r["is_label_issue"]} == wrong_ids()
    assert [c["estimated_n_wrong"] for c in result.summary["splits"]["training"]["per_class"]] == [2, 1]


def test_text_cells_a_spreadsheet_would_run_are_neutralised_and_numbers_are_not(tmp_path):
    ids = {3: '=HYPERLINK("x")', 4: "+1+2", 7: "-2+3", 8: "@SUM(A1)", 1: "=wrong"}
    run = make_run_folder(tmp_path, ids=ids, class_names=("=normal", "pneumonia"))
    result = _quiet(run)
    rows = {r["id"]: r for r in _rows(result.files["audit.csv"])}
    for raw in ids.values():
        assert "'" + raw in rows, raw  # written with a leading '
        assert raw not in rows
    assert rows["img-00"]["given_class"] == "'=normal" and rows["img-00"]["predicted_class"] == "'=normal"
    assert rows["img-09"]["given_class"] == "pneumonia"
    cell = rows["'=wrong"]
    assert float(cell["label_score"]) == pytest.approx(WRONG_SCORE, abs=1e-3) and cell["rank"] in {"1", "2", "3"}
    assert cell["given_label"] == "0" and cell["is_label_issue"] == "True"
    excluded = {r["id"] for r in _rows(result.files["exclude.csv"])}
    assert "'=wrong" in excluded
    # the rows in memory keep the ids as they are; audit.json holds the summary only (no per-item rows)
    assert {r["id"] for r in result.rows} >= set(ids.values())
    assert set(json.loads(result.files["audit.json"].read_text())) == {"summary"}


def test_the_csv_writer_leaves_numbers_alone_even_negative_ones():
    text = report.csv_text([{"id": "-a", "rank": -1, "label_score": -0.5, "given_class": "@x", "path": "\tp",
                         "is_label_issue": True, "split": "plain"}],
                       ["id", "rank", "label_score", "given_class", "path", "is_label_issue", "split"])
    row = next(csv.reader(text.splitlines()[1:]))
    assert row == ["'-a", "-1", "-0.5", "'@x", "'\tp", "True", "plain"]


def test_an_item_never_seen_ranks_last_without_a_score_and_its_minus_one_stays_a_number(run_folder):
    for e in (1, 2, 3):  # item 0 (a right label) was in no training batch, e.g. a dropped last batch
        path = run_folder / "dynamics" / "training" / f"epoch_{e:04d}.npy"
        rec = np.load(path)
        for name in rec.dtype.names:
            rec[name][0] = 0 if name == "count" else -1 if name == "pred_label" else np.nan
        np.save(path, rec)
    result = _quiet(run_folder)
    row = result.rows[0]
    assert row["id"] == "img-00" and row["label_score"] is None and row["rank"] == N_TRAIN
    assert row["predicted_label"] == -1 and row["predicted_class"] == "" and row["difficulty"] == ""
    assert row["epochs_seen"] == 0 and not row["is_label_issue"]
    assert {r["id"] for r in result.rows if r["is_label_issue"]} == wrong_ids()  # the others as before
    cells = _rows(result.files["audit.csv"])[0]
    assert cells["predicted_label"] == "-1" and cells["label_score"] == "" and cells["rank"] == str(N_TRAIN)


def test_report_is_self_contained_and_escapes_the_hostile_id(run_folder):
    result = run_audit(run_folder, final_model_baseline=False)  # thumbnails on
    text = (result.out_dir / "report.html").read_text()
    assert 'http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src data:' in text
    assert not re.search(r"https?://", text)
    assert not re.search(r"""(src|href)\s*=\s*["']?(?!data:)[a-z]+:""", text)
    assert not re.search(r"<(script|link|iframe|object)\b", text)
    srcs = re.findall(r'<img [^>]*src="([^"]*)"', text)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert len(srcs) >= 3 + 2  # the three suspects' thumbnails, the window curve, the LiLAW plots
    assert HOSTILE_ID not in text
    assert re.search(r"img-&lt;b&gt;&amp;(&#34;|&quot;)x", text)
    assert "Detection quality" in text


def test_report_shows_the_estimated_counts_with_their_interval_the_window_and_the_difficulty_definitions(run_folder):
    run_audit(run_folder, final_model_baseline=False, thumbnails=False)
    text = (run_folder / "audit" / "report.html").read_text()
    summary = json.loads((run_folder / "audit" / "audit.json").read_text())["summary"]
    for c, n_wrong, rate in zip(summary["splits"]["training"]["per_class"], (2, 1), ("0.222", "0.143"), strict=True):
        lo, hi = c["estimated_noise_rate_interval"]
        assert f"<td>{n_wrong} ({rate})</td><td>[{lo:.3f}, {hi:.3f}]</td>" in text
    lo, hi = summary["splits"]["training"]["estimated_noise_rate_interval"]
    assert f"<b>0.188</b> (95% interval [{lo:.3f}, {hi:.3f}], which carries" in text
    assert "Training items: 16 items audited, 3 suspected mislabels" in text
    assert "<b>Scoring window:</b> epochs 1-2 of 3" in text and "<code>best_val_loss</code>" in text
    assert ("<b>Count window</b> (the epochs whose probabilities the estimated numbers of wrong labels read): epochs 1-1 "
            "of 3: the noisy validation loss was best at epoch 1") in text
    assert "(read on the end-of-epoch validation loss of metrics.csv)" in text
    assert 'alt="validation curve and scoring window"' in text
    for level in ("easy", "moderate", "hard"):
        assert f"<dt>{level}</dt><dd>" in text
    assert "reaches its typical probability" in text and "confident in another class" in text


def test_no_tile_caption_splits_a_word(run_folder):
    run_audit(run_folder, final_model_baseline=False)
    text = (run_folder / "audit" / "report.html").read_text()
    style = re.search(r"<style>(.*?)</style>", text, re.S).group(1)
    assert "break-all" not in style and "word-break:break-word" not in style
    caption_rule = re.search(r"figcaption\{([^}]*)\}", style).group(1)
    assert "word-break:normal" in caption_rule and "hyphens:none" in caption_rule
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text, re.S)
    assert len(captions) >= 3
    for cap in captions:  # one field a line, each whole
        assert re.search(r"<span>given: [a-z]+</span><span>predicted: [a-z]+</span>", cap)


def test_audit_without_truth_has_no_detection(tmp_path):
    run = make_run_folder(tmp_path, with_truth=False)
    result = _quiet(run)
    assert result.detection is None and not (run / "audit" / "detection.json").exists()
    assert "true_label" not in result.rows[0]
    assert {r["id"] for r in result.rows if r["is_label_issue"]} == wrong_ids()


def test_audit_errors_are_one_line_user_errors(tmp_path, capsys):
    assert main(["audit", str(tmp_path)]) == 1
    assert "datalist.json is missing" in capsys.readouterr().err


def test_invalid_options_are_value_errors(run_folder):
    with pytest.raises(ValueError, match="window must be one of"):
        _quiet(run_folder, window="middle")
    with pytest.raises(ValueError, match="folds must be 0"):
        _quiet(run_folder, folds=1)
    with pytest.raises(TypeError):
        _quiet(run_folder, rule="noise_rate")  # not an AuditOptions field


def test_audit_to_another_folder(run_folder, tmp_path):
    result = _quiet(run_folder, tmp_path / "elsewhere")
    assert (tmp_path / "elsewhere" / "audit.csv").is_file() and result.out_dir == tmp_path / "elsewhere"
    assert not (run_folder / "audit").exists()


def test_dicom_items_get_their_uids_and_no_identifying_tag(tmp_path):
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
    with_id = _quiet(run, tmp_path / "ident", include_identifying=True)
    assert next(r for r in with_id.rows if r["path"] == str(path))["patient_id"] == "PID-SECRET"
    with open(tmp_path / "ident" / "audit.csv", newline="") as f:
        assert next(csv.reader(f))[len(COLUMNS)] == "patient_id"


def test_thumbnails_take_the_middle_slice_of_a_volume():
    from lilaw_med.audit.plots import thumbnail_png, to_display

    vol = np.zeros((1, 8, 6, 5), dtype=np.float32)  # (C, W, H, D)
    vol[0, :, :, 2] = np.arange(8)[:, None]
    img = to_display(vol)
    assert img.shape == (6, 8) and img.dtype == np.uint8 and img[0, -1] == 255 and img[0, 0] == 0
    assert to_display(np.random.rand(3, 8, 6)).shape == (6, 8, 3)
    assert thumbnail_png(img).startswith(b"\x89PNG")


def test_an_unlearnt_scoring_window_is_reported(tmp_path, capsys):
    run = make_run_folder(tmp_path, learned=False)  # every logit 0: p = 0.5, argmax class 0 everywhere
    assert main(["audit", str(run), "--no-thumbnails", "--no-final-model-baseline"]) == 0
    printed = capsys.readouterr().out
    # agreement 9/16 (the class-0 items) = the largest class's share 9/16
    assert "no better than always predicting the largest class (0.562 vs 0.562)" in printed
    summary = json.loads((run / "audit" / "audit.json").read_text())["summary"]["splits"]["training"]
    # the learning warning, then the count's: p = 0.5 everywhere pins no share of wrong labels
    assert len(summary["warnings"]) == 2 and "Train longer, or cross-fit" in summary["warnings"][0]
    assert "not identifiable from this run" in summary["warnings"][1]
    assert any(r.startswith("the network had not learnt: in the scored epochs it agrees with the given labels no "
                            "better than always predicting the largest class (0.562 vs 0.562)")
               for r in summary["not_identifiable_because"])
    assert "Warning:" in (run / "audit" / "report.html").read_text()


def _window_p_given() -> tuple[np.ndarray, np.ndarray]:
    """Each training item's given label and its window probability of it (epochs 1-2, see conftest)."""
    given = np.array([(i % 2) if i not in WRONG else 1 - i % 2 for i in range(N_TRAIN)])
    p = np.array([np.mean([1 / (1 + np.exp(-given_logit(i, e))) for e in (1, 2)]) for i in range(N_TRAIN)])
    return given, p


def test_audit_cli_adjust_subtracts_each_classs_confident_threshold_before_scoring(run_folder, tmp_path):
    out = tmp_path / "adjusted"
    args = ["audit", str(run_folder), "-o", str(out), "--no-final-model-baseline", "--no-thumbnails"]
    assert main([*args, "--adjust", "--method", "normalized_margin"]) == 0
    options = json.loads((out / "audit.json").read_text())["summary"]["options"]
    assert options["adjust_pred_probs"] is True and options["method"] == "normalized_margin"
    given, p = _window_p_given()
    probs = np.stack([np.where(given == 0, p, 1 - p), np.where(given == 1, p, 1 - p)], axis=1)
    t = np.array([probs[given == k, k].mean() for k in (0, 1)])  # the classes' confident thresholds
    adjusted = probs - t + t.max()
    adjusted /= adjusted.sum(axis=1, keepdims=True)
    # binary: the normalised margin (p[y] - p[other] + 1) / 2 equals p[y]
    expected = {item_id(i): adjusted[i, given[i]] for i in range(N_TRAIN)}
    rows = {r["id"]: float(r["label_score"]) for r in _rows(out / "audit.csv") if r["split"] == "training"}
    assert rows == pytest.approx(expected, abs=1e-4)
    assert main([*args, "--method", "normalized_margin"]) == 0  # unadjusted: the window probability itself
    rows = {r["id"]: float(r["label_score"]) for r in _rows(out / "audit.csv") if r["split"] == "training"}
    assert rows == pytest.approx({item_id(i): p[i] for i in range(N_TRAIN)}, abs=1e-4)


def test_the_chunked_audit_csv_gets_the_permissions_atomic_write_gives(run_folder, tmp_path):
    import stat

    from lilaw_med import utils
    from lilaw_med.utils import atomic_write

    _quiet(run_folder, tmp_path / "out")
    reference = atomic_write(tmp_path / "reference.csv", "x")
    mode = stat.S_IMODE((tmp_path / "out" / "audit.csv").stat().st_mode)
    assert mode == stat.S_IMODE(reference.stat().st_mode) == 0o666 & ~utils._UMASK  # not mkstemp's 0600
    assert not [p.name for p in (tmp_path / "out").iterdir() if p.name.endswith(".tmp")]
