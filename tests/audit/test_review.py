"""The review page's library side: queue, embedded data, images, decision files, merge, CLI.

The page's behaviour in a browser is tested in test_review_browser.py.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from lilaw_med.audit.report import COLUMNS, AuditFiles, read_audit_rows
from lilaw_med.audit.review import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_MAX_ITEMS,
    QueueEntry,
    display_images,
    embed_json,
    merge_decisions,
    review_queue,
    write_review_page,
)
from lilaw_med.cli import main
from lilaw_med.data.curation import apply_exclusions, apply_relabels
from lilaw_med.data.datalist import load_datalist
from lilaw_med.workflows.audit import run_audit
from tests.audit.conftest import HOSTILE_ID, WRONG_LOGITS, make_run_folder, train_with_decisions


def _sigmoid(z: float) -> float:
    return 1 / (1 + math.exp(-z))


def _page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="review-data">(.*?)</script>', html, re.S)
    assert m is not None
    return json.loads(m.group(1))


@pytest.fixture
def audited(run_folder: Path) -> Path:
    run_audit(run_folder, thumbnails=False, final_model_baseline=False)
    return run_folder


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the queue
def test_queue_puts_flagged_by_rank_then_hard_then_asked_for_each_once():
    rows = [
        {"id": "v1", "split": "validation", "rank": 1, "is_label_issue": True, "difficulty": "hard"},
        {"id": "t3", "split": "training", "rank": 3, "is_label_issue": True, "difficulty": "hard"},
        {"id": "t1", "split": "training", "rank": 1, "is_label_issue": True, "difficulty": "moderate"},
        {"id": "t5", "split": "training", "rank": 5, "is_label_issue": False, "difficulty": "hard"},
        {"id": "t4", "split": "training", "rank": 4, "is_label_issue": False, "difficulty": "hard"},
        {"id": "t9", "split": "training", "rank": 9, "is_label_issue": False, "difficulty": "easy"},
    ]
    items = {i: (s, {"id": i, "label": k}) for i, s, k in [
        ("t1", "training", 0), ("t3", "training", 1), ("t4", "training", 0), ("t5", "training", 1),
        ("t9", "training", 1), ("v1", "validation", 0), ("x1", "test", 1), ("x2", "test", 0)]}
    q = review_queue(rows, items, include=["x2", "t1"], include_classes=[1], include_splits=["test"])
    assert q == [QueueEntry("t1", "flagged"), QueueEntry("t3", "flagged"), QueueEntry("v1", "flagged"),
                 QueueEntry("t4", "hard"), QueueEntry("t5", "hard"), QueueEntry("x2", "asked for"),
                 QueueEntry("t9", "asked for"), QueueEntry("x1", "asked for")]
    assert [e.id for e in review_queue(rows, items, hard=False)] == ["t1", "t3", "v1"]
    with pytest.raises(ValueError, match="'nope'"):
        review_queue(rows, items, include=["nope"])
    with pytest.raises(ValueError, match="unknown split"):
        review_queue(rows, items, include_splits=["train"])


# ----------------------------------------------------------------------------- embedding
def test_embedded_json_cannot_close_its_script_element_and_parses_back():
    value = {"id": "</script><script>alert(1)</script>", "note": "<!-- & \u2028 \u2029 -->", "x": [1.5, None]}
    text = embed_json(value)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == value
    with pytest.raises(ValueError):
        embed_json({"p": float("nan")})


def test_the_page_embeds_the_queue_probabilities_and_an_exact_script_hash(audited):
    path = write_review_page(audited, include_splits=["training"], images=False)
    assert path == audited / "audit" / AuditFiles.REVIEW
    html = path.read_text()
    data = _page_data(html)
    items = {it["id"]: it for it in data["items"]}
    # the three wrong items first, by rank (p[given] over the window: epochs 1-2), then the other training items
    assert [it["id"] for it in data["items"][:3]] == ["img-01", "img-06", "img-11"]
    assert {it["reason"] for it in data["items"][3:]} == {"asked for"} and len(data["items"]) == 16
    assert data["splits"]["training"] == {"epochs": [1, 2, 3], "window": [1, 2]}
    assert data["class_names"] == ["normal", "pneumonia"]
    wrong = items["img-01"]  # given 0 (normal); logits of the given class -3, 0, 4
    assert wrong["given"] == 0 and wrong["predicted"] == 1 and wrong["flagged"]
    for epoch, z in enumerate(WRONG_LOGITS):
        assert wrong["probs"][epoch] == pytest.approx([_sigmoid(z), 1 - _sigmoid(z)], abs=1e-3)
    # the hostile id is data, never markup; only the page's own script may run
    assert HOSTILE_ID in items and HOSTILE_ID not in html
    script = re.search(r"<script>(.*)</script>\s*</body>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in html
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "") and "https://" not in html


def test_page_images_are_embedded_pngs_no_larger_than_asked(audited):
    html = write_review_page(audited, image_size=64).read_text()
    data = _page_data(html)
    assert len(data["items"]) == 3  # the flagged items; none other is hard
    uris = re.findall(r'<script type="text/plain" id="img-(\d+)">data:image/png;base64,([^<]*)</script>', html)
    assert [int(i) for i, _ in uris] == [v["image"] for it in data["items"] for v in it["views"]] == [0, 1, 2]
    img = Image.open(io.BytesIO(base64.b64decode(uris[0][1])))
    assert img.size == (16, 16)  # a 16-pixel image stays 16 pixels (never enlarged in the file)
    with pytest.raises(ValueError, match="at least 32"):
        write_review_page(audited, image_size=8)



# ----------------------------------------------------------------------------- the audit's files
def test_audit_rows_come_back_typed_and_unguarded_and_formula_like_ids_reach_the_page(tmp_path):
    run = make_run_folder(tmp_path, ids={1: "=cmd()", 6: "-six", 3: "@three"})  # 1 and 6 are wrong labels
    result = run_audit(run, thumbnails=False, final_model_baseline=False)
    text = (run / "audit" / AuditFiles.CSV).read_text()
    assert "'=cmd()," in text and "'-six," in text and "'@three," in text  # written guarded
    rows, expected = read_audit_rows(run / "audit"), result.rows
    assert [r["id"] for r in rows] == [r["id"] for r in expected] and len(rows) == 20
    assert list(rows[0]) == list(expected[0]) and list(rows[0])[:len(COLUMNS)] == list(COLUMNS)
    for got, want in zip(rows, expected, strict=True):
        for key, value in want.items():
            if isinstance(value, float):  # written with 6 significant digits
                assert got[key] == pytest.approx(value, rel=1e-5), key
            else:  # ints, bools, None and text exactly, of the same type
                assert got[key] == value and type(got[key]) is type(value), key
    assert read_audit_rows(run / "audit", ["rank", "id"])[0] == {"rank": expected[0]["rank"], "id": expected[0]["id"]}
    items = _page_data(write_review_page(run, images=False).read_text())["items"]
    assert [(it["id"], it["flagged"], it["rank"]) for it in items] == [("=cmd()", True, 1), ("-six", True, 2),
                                                                     ("img-11", True, 3)]
    assert items[0]["predicted"] == 1 and items[0]["p_given"] == pytest.approx(_sigmoid(-3) / 2 + 0.5 / 2, abs=1e-3)


def _audit_csv(path: Path, header: list[str], row: dict[str, str]) -> Path:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerow([row.get(c, "") for c in header])
    return path


@pytest.mark.parametrize(("column", "cell", "message"), [
    ("rank", "first", r"item row 1: column 'rank' is 'first', not an integer"),
    ("is_label_issue", "yes", r"item row 1: column 'is_label_issue' is 'yes', not True or False"),
    ("p_given", "high", r"item row 1: column 'p_given' is 'high', not a number"),
])
def test_a_malformed_audit_csv_is_an_error_naming_the_file_row_and_column(tmp_path, column, cell, message):
    good = {"id": "a", "split": "training", "given_label": "0", "rank": "1", "is_label_issue": "False",
            "p_given": "0.5", "epochs_seen": "3", "predicted_label": "1"}
    _audit_csv(tmp_path / AuditFiles.CSV, list(COLUMNS), good)
    row = read_audit_rows(tmp_path)[0]
    assert (row["rank"], row["is_label_issue"], row["p_given"], row["label_score"], row["path"]) == (1, False, 0.5, None, "")
    _audit_csv(tmp_path / AuditFiles.CSV, list(COLUMNS), {**good, column: cell})
    with pytest.raises(ValueError, match=re.escape(str(tmp_path / AuditFiles.CSV)) + ", " + message):
        read_audit_rows(tmp_path)
    _audit_csv(tmp_path / AuditFiles.CSV, [c for c in COLUMNS if c != column], good)
    with pytest.raises(ValueError, match=rf"audit.csv: not an audit.csv .*no column\(s\) \['{column}'\]"):
        read_audit_rows(tmp_path)
    (tmp_path / AuditFiles.CSV).write_text("")
    with pytest.raises(ValueError, match="audit.csv: empty"):
        read_audit_rows(tmp_path)
    (tmp_path / AuditFiles.CSV).write_text(",".join(COLUMNS) + "\na,b\n")
    with pytest.raises(ValueError, match=f"audit.csv, line 2: 2 cells but the header has {len(COLUMNS)}"):
        read_audit_rows(tmp_path)


def test_a_missing_or_malformed_audit_file_is_an_error_naming_it(audited, capsys):
    folder = audited / "audit"
    summary = (folder / AuditFiles.JSON).read_text()
    (folder / AuditFiles.JSON).write_text('{"summary": ')
    with pytest.raises(ValueError, match="audit.json: not valid JSON"):
        write_review_page(audited, images=False)
    (folder / AuditFiles.JSON).write_text('{"items": []}')  # an audit.json of another layout
    with pytest.raises(ValueError, match="audit.json: not an audit.json written by `lilaw-med audit`"):
        write_review_page(audited, images=False)
    (folder / AuditFiles.JSON).unlink()
    with pytest.raises(FileNotFoundError, match="audit.json is missing"):
        write_review_page(audited, images=False)
    (folder / AuditFiles.JSON).write_text(summary)
    (folder / AuditFiles.CSV).unlink()
    with pytest.raises(FileNotFoundError, match="audit.csv is missing"):
        write_review_page(audited, images=False)
    # the CLI reports it and leaves the partial audit alone (no audit with defaults over the user's)
    assert main(["review", str(audited), "--no-open"]) == 1
    assert "audit.csv is missing" in capsys.readouterr().err and not (folder / AuditFiles.CSV).exists()
    assert main(["review", str(audited), "--no-open", "--audit-dir", str(audited / "none")]) == 1
    assert "no audit there (audit.json and audit.csv are missing)" in capsys.readouterr().err

def test_3d_images_show_three_orthogonal_slices_through_the_centre():
    vol = np.zeros((1, 4, 6, 8), dtype=np.float32)  # (C, W, H, D)
    vol[0, 2, :, :] = 1.0  # the sagittal plane x = W // 2
    views = dict(display_images(vol, 3))
    assert list(views) == ["axial", "coronal", "sagittal"]
    assert views["axial"].shape == (6, 4) and views["coronal"].shape == (8, 4) and views["sagittal"].shape == (8, 6)
    assert (views["sagittal"] == 255).all()  # the slice through x = 2 is all ones
    assert (views["axial"][:, 2] == 255).all() and (views["axial"][:, [0, 1, 3]] == 0).all()
    windowed = dict(display_images(np.full((1, 3, 3), 0.5, dtype=np.float32), 2))[""]
    assert (windowed == 128).all()  # values a window scaled to [0, 1] keep their scale (no re-stretch)
    with pytest.raises(ValueError, match="3D image"):
        display_images(np.zeros((4, 4)), 3)


# ----------------------------------------------------------------------------- decision files
def test_decision_files_drive_exclude_and_relabel_and_ignore_keep_and_skip(run_folder, tmp_path):
    dl = load_datalist(run_folder / "datalist.json")
    d = _write(tmp_path / "d.csv", "id,decision,new_label,note,reviewer,time\n"
               "img-01,relabel,pneumonia,\"obvious, see apex\",ann,2026-01-01T10:00:00Z\n"
               "img-06,relabel,0,,ann,2026-01-01T10:01:00Z\n"
               "img-11,exclude,,motion,ann,2026-01-01T10:02:00Z\n"
               "img-00,keep,,,ann,2026-01-01T10:03:00Z\nimg-02,skip,,,ann,\n")
    excluded = apply_exclusions(dl, d)
    assert {it["id"] for it in dl.training} - {it["id"] for it in excluded.training} == {"img-11"}
    relabelled = {it["id"]: it for it in apply_relabels(dl, d).training}
    assert relabelled["img-01"]["label"] == 1 and relabelled["img-01"]["label_before_relabel"] == 0
    assert relabelled["img-06"]["label"] == 0 and relabelled["img-06"]["label_before_relabel"] == 1
    assert {i for i, it in relabelled.items() if "label_before_relabel" in it} == {"img-01", "img-06"}
    only_keeps = _write(tmp_path / "k.csv", "id,decision,new_label\nimg-00,keep,\n")
    assert apply_relabels(dl, only_keeps).training == dl.training
    with pytest.raises(ValueError, match=r"line 2 \(id 'img-00'\): decision 'maybe'"):
        apply_exclusions(dl, _write(tmp_path / "b.csv", "id,decision\nimg-00,maybe\n"))
    with pytest.raises(ValueError, match="not in the datalist"):
        apply_exclusions(dl, _write(tmp_path / "u.csv", "id,decision,new_label\nzz,keep,\n"))
    with pytest.raises(ValueError, match="not in the datalist"):
        apply_relabels(dl, _write(tmp_path / "v.csv", "id,decision,new_label\nzz,relabel,0\n"))


def test_merge_keeps_agreements_and_lists_every_disagreement(tmp_path):
    head = "id,decision,new_label,note,reviewer,time\n"
    a = _write(tmp_path / "a.csv", head + "c1,relabel,pneumonia,clear,ann,2026-01-01T10:00:00Z\n"
               "c2,exclude,,,ann,2026-01-01T10:00:00Z\nc3,keep,,,ann,2026-01-01T10:00:00Z\n"
               "c4,skip,,unsure,ann,2026-01-01T10:00:00Z\nc5,relabel,normal,,ann,2026-01-01T10:00:00Z\n")
    b = _write(tmp_path / "b.csv", head + "c1,relabel,pneumonia,,bob,2026-01-02T09:00:00Z\n"
               "c2,keep,,looks fine,bob,2026-01-02T09:00:00Z\nc4,keep,,,bob,2026-01-02T09:00:00Z\n"
               "c5,relabel,effusion,,,2026-01-02T09:00:00Z\n")
    result = merge_decisions([a, b])
    rows = {r["id"]: r for r in result.rows}
    assert set(rows) == {"c1", "c3", "c4"} and result.n_disagreed == 2
    assert rows["c1"] == {"id": "c1", "decision": "relabel", "new_label": "pneumonia", "note": "ann: clear",
                          "reviewer": "ann;bob", "time": "2026-01-02T09:00:00Z"}
    assert rows["c4"]["decision"] == "keep" and rows["c4"]["reviewer"] == "bob" and rows["c4"]["note"] == "ann: unsure"
    assert rows["c3"]["reviewer"] == "ann"
    assert sorted((r["id"], r["reviewer"], r["decision"], r["new_label"]) for r in result.disagreements) == [
        ("c2", "ann", "exclude", ""), ("c2", "bob", "keep", ""),
        ("c5", "ann", "relabel", "normal"), ("c5", "b", "relabel", "effusion")]  # no reviewer: the file's name
    with pytest.raises(ValueError, match="two or more"):
        merge_decisions([a])
    with pytest.raises(ValueError, match="not a decision file"):
        merge_decisions([a, _write(tmp_path / "x.csv", "id,label\nc1,0\n")])


def test_cli_merge_writes_the_agreements_and_a_disagreements_file(tmp_path, capsys):
    head = "id,decision,new_label,note,reviewer,time\n"
    a = _write(tmp_path / "a.csv", head + "c1,exclude,,,ann,t1\nc2,keep,,,ann,t1\n")
    b = _write(tmp_path / "b.csv", head + "c1,exclude,,,bob,t2\nc2,exclude,,=cmd(),bob,t2\n")
    out = tmp_path / "merged.csv"
    assert main(["review", "--merge", str(a), str(b), "-o", str(out)]) == 0
    with out.open(newline="") as f:
        assert [(r["id"], r["decision"], r["reviewer"]) for r in csv.DictReader(f)] == [("c1", "exclude", "ann;bob")]
    listed = (tmp_path / "merged_disagreements.csv").read_text()
    assert "c2,bob,exclude,,'=cmd(),t2," in listed  # a formula-like note is written as text
    assert "disagreements: 1 items" in capsys.readouterr().out
    assert main(["review", "--merge", str(a), str(b)]) == 1  # -o is required


# ----------------------------------------------------------------------------- CLI, report, training
def test_cli_review_audits_first_when_needed_and_the_report_links_the_page(run_folder, capsys):
    assert main(["review", str(run_folder), "--no-open", "--include", "img-00"]) == 0
    out = capsys.readouterr().out
    page = run_folder / "audit" / AuditFiles.REVIEW
    assert f"review page: {page}" in out and (run_folder / "audit" / AuditFiles.JSON).is_file()
    assert [it["id"] for it in _page_data(page.read_text())["items"]] == ["img-01", "img-06", "img-11", "img-00"]
    assert '<a href="review.html">' in (run_folder / "audit" / AuditFiles.HTML).read_text()
    assert main(["review", str(run_folder), "--no-open", "--include-class", "cat"]) == 1
    assert main(["audit", str(run_folder), "--no-final-model-baseline", "--no-thumbnails"]) == 0
    assert f"next: lilaw-med review {run_folder}   (writes {page}" in capsys.readouterr().out
    assert main(["review", str(run_folder.parent / "nothing"), "--no-open"]) == 1


def test_cli_default_image_size_is_the_library_default():
    from lilaw_med.cli import build_parser

    assert build_parser().parse_args(["review", "r"]).image_size == DEFAULT_IMAGE_SIZE
    assert build_parser().parse_args(["review", "r"]).max_items == DEFAULT_MAX_ITEMS


def test_training_with_a_decision_file_applies_it_and_records_it_in_the_summary(tmp_path):
    from tests.audit.conftest import make_image_datalist

    datalist = make_image_datalist(tmp_path / "data")
    d = _write(tmp_path / "decisions.csv", "id,decision,new_label,note,reviewer,time\n"
               "tr-01,relabel,bright,,ann,t\ntr-06,exclude,,,ann,t\ntr-02,keep,,,ann,t\nva-03,exclude,,,ann,t\n")
    used = train_with_decisions(datalist, tmp_path / "run", d)
    ids = {s: [it["id"] for it in used[s]] for s in ("training", "validation")}
    assert "tr-06" not in ids["training"] and "va-03" not in ids["validation"]
    assert len(ids["training"]) == 23 and len(ids["validation"]) == 7
    relabelled = {it["id"]: (it["label"], it["label_before_relabel"]) for it in used["training"] if "label_before_relabel" in it}
    assert relabelled == {"tr-01": (1, 0)}  # tr-01 is a flipped bright item: given dark (0), relabelled bright
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    digest = hashlib.sha256(d.read_bytes()).hexdigest()
    assert summary["curation"] == {"exclude": {"path": str(d), "sha256": digest}, "relabel": {"path": str(d), "sha256": digest}}


def test_a_3d_run_shows_three_slices_per_item_through_its_ct_window(run_folder, tmp_path):
    import nibabel as nib
    import yaml

    datalist = json.loads((run_folder / "datalist.json").read_text())
    for split in ("training", "validation"):
        for n, item in enumerate(datalist[split]):
            vol = np.full((6, 8, 10), -1000.0, dtype=np.float32)  # air; a bright block in the centre
            vol[2:4, 3:5, 4:6] = 40.0 + n  # soft tissue: the middle of the window [40, 400]
            path = tmp_path / f"{split}{n}.nii.gz"
            nib.save(nib.Nifti1Image(vol, np.eye(4)), path)
            item["image"] = str(path)
    (run_folder / "datalist.json").write_text(json.dumps(datalist))
    (run_folder / "config.yaml").write_text(yaml.safe_dump({"data": {
        "preset": "radiology_3d", "datalist": str(run_folder / "datalist.json"),
        "options": {"spatial_size": [4, 4, 4], "intensity": "ct_window", "window": [40.0, 400.0]}}}))
    run_audit(run_folder, thumbnails=False, final_model_baseline=False)
    html = write_review_page(run_folder).read_text()
    item = _page_data(html)["items"][0]
    assert [v["title"] for v in item["views"]] == ["axial", "coronal", "sagittal"] and item["image_error"] is None
    uri = re.search(rf'id="img-{item["views"][0]["image"]}">data:image/png;base64,([^<]*)<', html).group(1)
    axial = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))))
    assert axial.shape == (8, 6)  # (H, W) of the 6 x 8 x 10 volume at its own size, not the network's 4^3
    # the window maps -160..240 HU to 0..1: air is black, 40 HU mid-grey (0.5 -> 128)
    assert axial.min() == 0 and abs(int(axial.max()) - 128) <= 1


def test_the_queue_stops_at_max_items_keeping_the_flagged_ones_first(audited, caplog):
    page = write_review_page(audited, include_splits=["training"], images=False, max_items=4)
    ids = [it["id"] for it in _page_data(page.read_text())["items"]]
    assert ids[:3] == ["img-01", "img-06", "img-11"] and len(ids) == 4  # of 16 queued
    assert "holds 16 items; the page shows the first 4" in caplog.text
    with pytest.raises(ValueError, match="max_items"):
        write_review_page(audited, images=False, max_items=0)
