"""Exclusions and relabels of a datalist (what `train --exclude` / `--relabel` apply)."""

from __future__ import annotations

import json

import pytest

from lilaw_med.data.curation import apply_exclusions, apply_relabels
from lilaw_med.data.datalist import load_datalist


@pytest.fixture
def datalist(tmp_path):
    items = [{"id": f"c{i}", "image": str(tmp_path / f"c{i}.png"), "label": ["normal", "pneumonia"][i % 2]} for i in range(6)]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"class_names": ["normal", "pneumonia"], "training": items[:4], "validation": items[4:]}))
    return load_datalist(path)


def _csv(tmp_path, text, name="x.csv"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_exclusions_remove_the_listed_ids_from_every_split(datalist, tmp_path):
    out = apply_exclusions(datalist, _csv(tmp_path, "id,reason\nc1,label issue\nc4,label issue\n"))
    assert [it["id"] for it in out.training] == ["c0", "c2", "c3"]
    assert [it["id"] for it in out.validation] == ["c5"]
    assert len(datalist.training) == 4  # the input is left as it was


def test_unknown_ids_and_bad_files_are_clear_errors(datalist, tmp_path):
    with pytest.raises(ValueError, match=r"1 id\(s\) not in the datalist: 'nope'"):
        apply_exclusions(datalist, _csv(tmp_path, "id\nc1\nnope\n"))
    with pytest.raises(ValueError, match="column named 'id'"):
        apply_exclusions(datalist, _csv(tmp_path, "name\nc1\n"))
    with pytest.raises(FileNotFoundError):
        apply_exclusions(datalist, tmp_path / "missing.csv")


def test_relabels_take_class_names_or_indices_and_keep_the_old_label(datalist, tmp_path):
    out = apply_relabels(datalist, _csv(tmp_path, "id,label\nc0,pneumonia\nc1,0\n"))
    by_id = {it["id"]: it for it in out.training}
    assert by_id["c0"]["label"] == 1 and by_id["c0"]["label_before_relabel"] == 0
    assert by_id["c1"]["label"] == 0 and by_id["c2"]["label"] == 0
    assert datalist.training[0]["label"] == 0


def test_relabel_errors(datalist, tmp_path):
    with pytest.raises(ValueError, match="unknown label 'cat'"):
        apply_relabels(datalist, _csv(tmp_path, "id,label\nc0,cat\n"))
    with pytest.raises(ValueError, match="out of range"):
        apply_relabels(datalist, _csv(tmp_path, "id,new_label\nc0,7\n"))
    with pytest.raises(ValueError, match="label column"):
        apply_relabels(datalist, _csv(tmp_path, "id,comment\nc0,x\n"))
    with pytest.raises(ValueError, match="twice"):
        apply_relabels(datalist, _csv(tmp_path, "id,label\nc0,0\nc0,1\n"))
    with pytest.raises(ValueError, match="not in the datalist"):
        apply_relabels(datalist, _csv(tmp_path, "id,label\nzz,0\n"))


def test_the_audit_exclude_csv_is_accepted(run_folder):
    from lilaw_med.workflows.audit import run_audit
    from tests.audit.conftest import wrong_ids

    result = run_audit(run_folder, thumbnails=False, final_model_baseline=False)
    dl = load_datalist(run_folder / "datalist.json")
    out = apply_exclusions(dl, result.files["exclude.csv"])
    assert {it["id"] for it in dl.training} - {it["id"] for it in out.training} == wrong_ids()
    assert len(out.validation) == len(dl.validation)  # nothing flagged there


def test_an_exclude_csv_with_ids_that_look_like_formulas_round_trips(tmp_path):
    """The audit writes such ids with a leading ' (so a spreadsheet shows them as text); reading
    the file back for --exclude must give the datalist's ids again."""
    from lilaw_med.workflows.audit import run_audit
    from tests.audit.conftest import make_run_folder

    ids = {1: '=HYPERLINK("x")', 6: "-6", 11: "@eleven"}  # the three wrong items
    run = make_run_folder(tmp_path, ids=ids)
    result = run_audit(run, thumbnails=False, final_model_baseline=False)
    assert {r["id"] for r in result.rows if r["is_label_issue"]} == set(ids.values())
    dl = load_datalist(run / "datalist.json")
    out = apply_exclusions(dl, result.files["exclude.csv"])
    assert {it["id"] for it in dl.training} - {it["id"] for it in out.training} == set(ids.values())
    relabel = _csv(tmp_path, "id,label\n'=HYPERLINK(\"x\"),1\n", "relabel.csv")
    assert next(it for it in apply_relabels(dl, relabel).training if it["id"] == ids[1])["label"] == 1


def test_a_quote_that_does_not_guard_a_formula_is_part_of_the_id(tmp_path):
    items = [{"id": "'quoted", "image": str(tmp_path / "a.png"), "label": 0},
             {"id": "plain", "image": str(tmp_path / "b.png"), "label": 1},
             {"id": "val", "image": str(tmp_path / "c.png"), "label": 1}]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"class_names": ["a", "b"], "training": items[:2], "validation": items[2:]}))
    out = apply_exclusions(load_datalist(path), _csv(tmp_path, "id\n'quoted\n"))
    assert [it["id"] for it in out.training] == ["plain"]
