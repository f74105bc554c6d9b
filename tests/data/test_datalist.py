"""Datalists: JSON/CSV reading, ids, labels, grouped stratified splits, errors that name the item."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lilaw_med.data.datalist import group_kfold, load_datalist, save_datalist, split_validation


def _write(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def _items(n: int, per_group: int = 3, names: bool = False) -> list[dict]:
    labels = ["benign", "malignant"] if names else [0, 1]
    return [
        {"image": f"img/{i}.png", "label": labels[(i * 7) % 3 == 0], "group": f"p{i // per_group}"}
        for i in range(n)
    ]


def test_relative_paths_resolve_against_the_datalist_folder_and_ids_are_stable(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    p = _write(
        tmp_path / "sub" / "dl.json", {"training": _items(20), "validation": [{"image": "v.png", "label": 1}]}
    )
    dl = load_datalist(p)
    assert dl.training[0]["image"] == str(tmp_path / "sub" / "img" / "0.png")
    assert dl.training[0]["id"] == "img/0.png"
    assert dl.validation[0]["id"] == "v.png"
    # the same file read again (or from elsewhere) gives the same ids
    assert [it["id"] for it in load_datalist(p).training] == [it["id"] for it in dl.training]
    base = load_datalist(p, base_dir=tmp_path)
    assert base.training[0]["image"] == str(tmp_path / "img" / "0.png")


def test_class_names_map_to_indices_and_default_to_sorted_unique_names(tmp_path: Path) -> None:
    p = _write(tmp_path / "dl.json", {"training": _items(30, names=True)})
    dl = load_datalist(p)
    assert dl.class_names == ["benign", "malignant"]
    dl2 = load_datalist(p, class_names=["malignant", "benign"])
    by_id = {it["id"]: it["label"] for it in dl.training + dl.validation}
    by_id2 = {it["id"]: it["label"] for it in dl2.training + dl2.validation}
    assert all(by_id2[k] == 1 - v for k, v in by_id.items())


def test_missing_validation_is_split_off_grouped_and_stratified(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    items = [
        {"image": f"i{i}.png", "label": int(rng.random() < 0.3), "group": f"p{i // 2}"} for i in range(400)
    ]
    dl = load_datalist(_write(tmp_path / "dl.json", {"training": items}), seed=3)
    n = len(dl.training) + len(dl.validation)
    assert n == 400
    assert abs(len(dl.validation) - 60) <= 2  # 15 %
    assert not {it["group"] for it in dl.training} & {it["group"] for it in dl.validation}
    frac_all = np.mean([it["label"] for it in items])
    frac_val = np.mean([it["label"] for it in dl.validation])
    assert abs(frac_val - frac_all) < 0.03
    again = load_datalist(tmp_path / "dl.json", seed=3)
    assert [it["id"] for it in again.validation] == [it["id"] for it in dl.validation]
    other = load_datalist(tmp_path / "dl.json", seed=4)
    assert [it["id"] for it in other.validation] != [it["id"] for it in dl.validation]


def test_split_validation_refuses_a_single_group() -> None:
    items = [{"id": str(i), "label": i % 2, "group": "one"} for i in range(10)]
    with pytest.raises(ValueError, match="1 group"):
        split_validation(items, 0.15, 0)


def test_group_kfold_keeps_each_group_in_one_fold_and_partitions_items() -> None:
    rng = np.random.default_rng(1)
    items = [
        {"id": str(i), "label": int(rng.integers(0, 3)), "group": f"g{rng.integers(0, 40)}"}
        for i in range(300)
    ]
    folds = group_kfold(items, 3, seed=0)
    assert len(folds) == 3
    held = np.concatenate([te for _, te in folds])
    assert sorted(held.tolist()) == list(range(300))
    for tr, te in folds:
        assert not {items[i]["group"] for i in tr} & {items[i]["group"] for i in te}
    assert [te.tolist() for _, te in group_kfold(items, 3, seed=0)] == [te.tolist() for _, te in folds]


def test_csv_with_split_group_id_and_extra_columns(tmp_path: Path) -> None:
    p = tmp_path / "dl.csv"
    p.write_text(
        "image,label,split,group,id,site\n"
        "a.png,cat,train,p1,A,x\nb.png,dog,train,p2,,y\nc.png,dog,val,p3,,z\nd.png,,test,,,w\n"
    )
    dl = load_datalist(p)
    assert dl.class_names == ["cat", "dog"]
    assert [it["id"] for it in dl.training] == ["A", "b.png"]
    assert dl.training[0]["site"] == "x" and dl.training[0]["group"] == "p1"
    assert dl.validation[0]["label"] == 1
    assert dl.test[0]["label"] is None and dl.test[0]["group"] is None


def test_multi_label_lists_of_flags_or_names(tmp_path: Path) -> None:
    names = ["effusion", "nodule", "mass"]
    p = _write(
        tmp_path / "dl.json",
        {
            "class_names": names,
            "training": [{"image": "a.png", "label": [1, 0, 1]}, {"image": "b.png", "label": ["nodule"]}],
            "validation": [{"image": "c.png", "label": [0, 0, 0]}],
        },
    )
    dl = load_datalist(p)
    assert dl.multi_label
    assert dl.training[0]["label"] == [1, 0, 1]
    assert dl.training[1]["label"] == [0, 1, 0]


def test_every_bad_item_is_named_in_one_error(tmp_path: Path) -> None:
    p = _write(
        tmp_path / "dl.json",
        {
            "class_names": ["a", "b"],
            "training": [
                {"image": "x.png", "label": 2},
                {"image": "y.png", "label": "zebra"},
                {"image": "z.png"},
                {"label": 0},
                {"image": "dup.png", "label": 0},
            ],
            "test": [{"image": "dup.png", "label": 1}],
        },
    )
    with pytest.raises(ValueError) as err:
        load_datalist(p)
    msg = str(err.value)
    assert "x.png" in msg and "out of range" in msg
    assert "y.png" in msg and "unknown class name 'zebra'" in msg
    assert "z.png" in msg and "label missing" in msg
    assert "'image' missing" in msg
    assert "dup.png" in msg and "duplicate id" in msg
    lenient = load_datalist(p, strict=False, val_fraction=0.5)
    assert len(lenient.problems) == 5


@pytest.mark.parametrize(
    "content, match",
    [
        ("{not json", "not valid JSON"),
        ('{"training": []}', "'training' split is missing or empty"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_unreadable_or_empty_datalists_give_clear_errors(tmp_path: Path, content: str, match: str) -> None:
    p = tmp_path / "dl.json"
    p.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_datalist(p)


def test_missing_datalist_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_datalist(tmp_path / "nope.json")


def test_save_datalist_round_trips_items_classes_and_splits(tmp_path: Path) -> None:
    dl = load_datalist(
        _write(
            tmp_path / "dl.json",
            {"training": _items(40, names=True), "test": [{"image": "t/0.png", "label": 0}]},
        )
    )
    out = save_datalist(dl, tmp_path / "run" / "datalist.json")
    back = load_datalist(out)
    assert back.training == dl.training and back.validation == dl.validation and back.test == dl.test
    assert back.class_names == dl.class_names
