"""Every datalist and pre-flight problem carries a kind; the pre-flight groups by kind, not by wording."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from lilaw_med.data.datalist import PROBLEM_KINDS, Datalist, Problem, load_datalist
from lilaw_med.data.preflight import check_datalist


def test_each_problem_names_its_kind(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    training = [
        {"id": "dup", "image": "ok.png", "label": 0},
        {"id": "dup", "image": "ok.png", "label": 1},
        {"id": "nolabel", "image": "ok.png"},
        {"id": "badlabel", "image": "ok.png", "label": "zebra"},
        {"id": "range", "image": "ok.png", "label": 5},
        {"id": "gone", "image": "gone.png", "label": 0},
        {"id": "broken", "image": "broken.png", "label": 0},
        {"id": "noimage", "label": 0},
    ]
    path = tmp_path / "dl.json"
    path.write_text(
        json.dumps({"class_names": ["a", "b"], "training": training, "validation": [training[0]]})
    )
    problems = check_datalist(load_datalist(path, strict=False), expected_dims=2, cache_dir=None)
    kinds = {(p.id, p.kind) for p in problems}
    assert {
        ("dup", "duplicate"),
        ("nolabel", "missing_label"),
        ("badlabel", "bad_label"),
        ("gone", "missing_file"),
        ("broken", "unreadable"),
        ("noimage", "no_image"),
    } <= kinds
    assert all(p.kind in PROBLEM_KINDS for p in problems)
    # one duplicate problem per id, however many items and splits share it
    assert sum(1 for p in problems if p.id == "dup" and p.kind == "duplicate") == 1
    assert [p.kind for p in problems if p.id == "range"] == ["bad_label"]


def test_a_reason_that_mentions_duplicate_does_not_hide_a_duplicate_id(tmp_path: Path) -> None:
    # a label problem whose text holds the word "duplicate" is not a duplicate-id problem
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "ok.png")
    items = [
        {"id": "x", "image": str(tmp_path / "ok.png"), "label": None},
        {"id": "x", "image": str(tmp_path / "ok.png"), "label": 0},
    ]
    label = Problem("x", items[0]["image"], "training", "field 'label': unknown class name 'duplicate'", "bad_label")
    dl = Datalist(training=items, validation=[], test=[], class_names=["a"], problems=[label])
    problems = check_datalist(dl, cache_dir=None)
    assert sorted(p.kind for p in problems) == ["bad_label", "duplicate"]
