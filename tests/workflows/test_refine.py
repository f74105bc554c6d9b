"""run_refine for real: train, audit, exclude the flagged training items, retrain, on a few tiny
PNGs with injected label flips (conftest.make_image_datalist). The item ids begin with "-" (as
some accession numbers do), which a spreadsheet would compute: the exclusion file writes them with a
leading ' and the retraining must still find them."""

from __future__ import annotations

import csv
import json
from dataclasses import asdict

import pytest

from lilaw_med.audit.core import AuditOptions
from lilaw_med.audit.report import read_audit_rows
from lilaw_med.data.curation import read_id_csv
from lilaw_med.workflows.refine import REFINE_RULE, run_refine
from tests.audit.conftest import FLIPS, make_image_datalist, tiny_config

AUDIT = AuditOptions(count_window="fraction")
"""The loop, not the count, is under test: the 3-epoch tiny run's validation loss is lowest at its last
epoch, where the shipped count window would count the memorised flips as clean; its first epoch counts them."""


def _ids(datalist_path, split):
    return [str(it["id"]) for it in json.loads(datalist_path.read_text())[split]]


@pytest.fixture(scope="module")
def refined(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    cfg = tiny_config(make_image_datalist(root / "data", id_prefix="-"))
    result = run_refine(cfg, root / "refine", audit_options=AUDIT, progress=False)
    return root / "refine", result


def test_refine_writes_both_runs_the_audit_and_the_exclusions(refined):
    root, result = refined
    for run in ("initial", "refined"):
        for name in ("config.yaml", "datalist.json", "summary.json", "metrics.csv", "dynamics/manifest.json",
                     "checkpoints/final_model.pt"):
            assert (root / run / name).is_file(), f"{run}/{name}"
    for name in ("audit.csv", "audit.json", "exclude.csv", "report.html", "detection.json"):
        assert (root / "audit" / name).is_file(), name
    assert result.run_dir == root and (root / "refine_exclude.csv").is_file() and (root / "refine.json").is_file()


def test_refine_excludes_exactly_the_audits_flagged_training_items(refined):
    root, result = refined
    items = read_id_csv(root / "audit" / "audit.csv")
    flagged = [it for it in items if it["split"] == "training" and it["is_label_issue"] == "True"]
    assert flagged, "the audit flagged nothing: the loop would not be tested"
    excluded = read_id_csv(root / "refine_exclude.csv")
    assert [r["id"] for r in excluded] == [it["id"] for it in flagged]
    with open(root / "refine_exclude.csv", newline="") as f:
        raw = [r["id"] for r in csv.DictReader(f)]
    assert raw == ["'" + it["id"] for it in flagged] and all(i.startswith("'-tr-") for i in raw)
    assert {r["split"] for r in excluded} == {"training"}  # the validation split is kept by default
    assert [int(r["rank"]) for r in excluded] == [int(it["rank"]) for it in flagged]
    # the flagged items are the lowest-scored of their class
    for it in flagged:
        same = [o for o in items if o["split"] == "training" and o["given_label"] == it["given_label"]]
        kept = [o["label_score"] for o in same if not o["is_label_issue"]]
        assert all(it["label_score"] <= s for s in kept)


def test_the_refined_run_trains_on_the_initial_items_minus_exactly_the_excluded_ones(refined):
    root, _ = refined
    excluded = {r["id"] for r in read_id_csv(root / "refine_exclude.csv")}
    initial, second = root / "initial" / "datalist.json", root / "refined" / "datalist.json"
    assert set(_ids(initial, "training")) - set(_ids(second, "training")) == excluded
    assert set(_ids(second, "training")) <= set(_ids(initial, "training"))
    assert len(_ids(second, "training")) == len(_ids(initial, "training")) - len(excluded)
    assert _ids(second, "validation") == _ids(initial, "validation")
    assert _ids(second, "test") == _ids(initial, "test")
    # and its dynamics recorded exactly those items
    ids = json.loads((root / "refined" / "dynamics" / "ids_training.json").read_text())
    assert sorted(ids) == sorted(_ids(second, "training"))


def test_refine_json_counts_match_the_audit_and_the_runs(refined):
    root, result = refined
    summary = json.loads((root / "refine.json").read_text())
    audit = json.loads((root / "audit" / "audit.json").read_text())["summary"]["splits"]["training"]
    with open(root / "refine_exclude.csv", newline="") as f:
        n_rows = sum(1 for _ in csv.DictReader(f))
    assert summary["n_excluded"] == result.n_excluded == n_rows == audit["n_label_issues"]
    # the shipped rule: per class, as many as the confident joint estimates wrong (at most the class size)
    assert audit["n_label_issues"] == sum(min(c["estimated_n_wrong"], c["n_items"]) for c in audit["per_class"])
    assert summary["estimated_noise_rate"] == audit["estimated_noise_rate"]
    assert summary["estimated_noise_rate_interval"] == audit["estimated_noise_rate_interval"]
    assert summary["rule"]["exclude"] == REFINE_RULE["exclude"] and summary["rule"]["exclude_validation"] is False
    assert summary["rule"]["audit"] == "the given audit_options"  # not the shipped defaults
    assert summary["rule"]["audit_options"] == json.loads(json.dumps(asdict(AUDIT)))
    assert summary["initial"]["run_dir"] == str(root / "initial") and summary["refined"]["run_dir"] == str(root / "refined")
    assert summary["audit"] == str(root / "audit" / "report.html")
    assert summary["detection"]["n_mislabeled"] == len(FLIPS)  # the sidecar's flips, all in the training split
    assert json.loads(json.dumps(result.refine, default=str)) == summary
    assert result.summary == json.loads((root / "refined" / "summary.json").read_text())


def test_refine_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "refine").mkdir()
    (tmp_path / "refine" / "something").write_text("x")
    cfg = tiny_config(tmp_path / "unused.json")
    with pytest.raises(FileExistsError, match="exists and is not empty"):
        run_refine(cfg, tmp_path / "refine")


def test_refine_with_the_shipped_audit_excludes_what_its_count_window_flags(tmp_path):
    root = tmp_path / "refine"
    # a faster learner than the module's run: its validation loss bottoms out before the last epoch,
    # so the shipped count window ends early enough to count wrong labels
    cfg = tiny_config(make_image_datalist(tmp_path / "data"), "train.epochs=4", "train.batch_size=4", "optim.lr=0.03")
    result = run_refine(cfg, root, progress=False)  # the shipped audit: count window and all
    summary = json.loads((root / "refine.json").read_text())
    assert summary["rule"] == {**REFINE_RULE, "exclude_validation": False, "flagged": "exclude",
                               "audit_options": json.loads(json.dumps(asdict(AuditOptions())))}
    audit = json.loads((root / "audit" / "audit.json").read_text())["summary"]
    train = audit["splits"]["training"]
    assert audit["options"]["count_window"] == AuditOptions().count_window == "val_loss_at_least_fraction"
    assert train["count_window"]["rule"] in ("best_val_loss", "val_loss_at_least_fraction")
    flagged = [it["id"] for it in read_audit_rows(root / "audit")
               if it["split"] == "training" and it["is_label_issue"]]
    assert flagged, "the shipped audit flagged nothing: the loop would not be tested"
    assert [r["id"] for r in read_id_csv(root / "refine_exclude.csv")] == flagged
    assert result.n_excluded == len(flagged) == train["n_label_issues"]
    assert train["n_label_issues"] == sum(min(c["estimated_n_wrong"], c["n_items"]) for c in train["per_class"])
    initial, second = root / "initial" / "datalist.json", root / "refined" / "datalist.json"
    assert set(_ids(initial, "training")) - set(_ids(second, "training")) == set(flagged)
    assert len(_ids(second, "training")) == len(_ids(initial, "training")) - len(flagged)


def test_refine_can_leave_the_flagged_validation_items_out_too(tmp_path):
    root = tmp_path / "refine"
    cfg = tiny_config(make_image_datalist(tmp_path / "data"), "train.epochs=2")
    # a review budget of 2 flags exactly two items of each split, so the validation exclusions are never empty
    run_refine(cfg, root, audit_options=AuditOptions(review=2), exclude_validation=True, progress=False)
    flagged = {(it["split"], it["id"]) for it in read_audit_rows(root / "audit") if it["is_label_issue"]}
    val_flagged = {i for split, i in flagged if split == "validation"}
    assert len(val_flagged) == 2 and len(flagged) == 4
    assert {(r["split"], r["id"]) for r in read_id_csv(root / "refine_exclude.csv")} == flagged
    initial, second = root / "initial" / "datalist.json", root / "refined" / "datalist.json"
    assert set(_ids(initial, "validation")) - set(_ids(second, "validation")) == val_flagged
    assert len(_ids(second, "validation")) == len(_ids(initial, "validation")) - 2
    assert json.loads((root / "refine.json").read_text())["rule"]["exclude_validation"] is True


@pytest.mark.parametrize(("flag", "expected"), [([], {}), (["--refine-validation", "exclude"], {"exclude_validation": True}),
                                                (["--refine-validation", "keep"], {"exclude_validation": False}),
                                                (["--refine-flagged", "relabel"], {"flagged": "relabel"})])
def test_the_cli_passes_refine_validation(tmp_path, monkeypatch, flag, expected):
    import yaml

    import lilaw_med.workflows.refine as refine_module
    from lilaw_med.cli import main

    seen = {}

    def fake_refine(config, output, **kwargs):
        seen.update(kwargs)
        raise SystemExit(0)

    monkeypatch.setattr(refine_module, "run_refine", fake_refine)
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config(make_image_datalist(tmp_path / "data"))))
    with pytest.raises(SystemExit):
        main(["train", "--config", str(config), "-o", str(tmp_path / "out"), "--refine", *flag])
    assert seen == expected
    assert main(["train", "--config", str(config), "--refine-validation", "keep"]) != 0
    assert main(["train", "--config", str(config), "--refine-flagged", "relabel"]) != 0


def test_refine_says_when_validation_items_cannot_be_left_out(tmp_path, caplog):
    # without LiLAW no meta step records the validation items, so the audit has none to flag
    cfg = tiny_config(make_image_datalist(tmp_path / "data"), "train.epochs=1", "lilaw.enabled=false")
    with caplog.at_level("WARNING", logger="lilaw_med.workflows.refine"):
        run_refine(cfg, tmp_path / "refine", audit_options=AuditOptions(review=2), exclude_validation=True,
                   progress=False)
    assert any("validation items cannot be left out" in r.getMessage() for r in caplog.records)
    initial, second = tmp_path / "refine" / "initial" / "datalist.json", tmp_path / "refine" / "refined" / "datalist.json"
    assert _ids(second, "validation") == _ids(initial, "validation")


def test_refine_can_relabel_the_flagged_training_items_with_the_predicted_class(tmp_path):
    root = tmp_path / "refine"
    cfg = tiny_config(make_image_datalist(tmp_path / "data"), "train.epochs=2")
    # a review budget of 4 flags exactly four items of each split
    result = run_refine(cfg, root, audit_options=AuditOptions(review=4), flagged="relabel", progress=False)
    rows = {it["id"]: it for it in read_audit_rows(root / "audit") if it["split"] == "training" and it["is_label_issue"]}
    assert len(rows) == 4
    changed = {i: r["predicted_label"] for i, r in rows.items() if r["predicted_label"] != r["given_label"]}
    assert changed, "no flagged item is predicted as another class: the relabelling would not be tested"
    assert result.n_relabelled == len(changed) and result.n_excluded == 0
    assert {r["id"]: int(r["label"]) for r in read_id_csv(root / "refine_relabel.csv")} == changed
    second = json.loads((root / "refined" / "datalist.json").read_text())
    first = json.loads((root / "initial" / "datalist.json").read_text())
    labels = {it["id"]: it["label"] for it in second["training"]}
    before = {it["id"]: it["label"] for it in first["training"]}
    assert set(labels) == set(before)  # every training item is kept
    assert {i for i in labels if labels[i] != before[i]} == set(changed)
    assert all(labels[i] == changed[i] for i in changed)
    summary = json.loads((root / "refine.json").read_text())
    assert summary["rule"]["flagged"] == "relabel" and summary["n_relabelled"] == len(changed)
    assert summary["n_excluded"] == 0 and len(second["validation"]) == len(first["validation"])


def test_refine_refuses_an_unknown_flagged_action(tmp_path):
    with pytest.raises(ValueError, match="flagged must be one of"):
        run_refine(tiny_config(tmp_path / "unused.json"), tmp_path / "refine", flagged="drop")
