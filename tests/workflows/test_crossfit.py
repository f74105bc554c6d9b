"""cross_fit for real: two fold trainings on tiny PNGs, each predicting the fold it never saw."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

import lilaw_med.workflows.crossfit as crossfit_module
from lilaw_med.errors import InputError
from lilaw_med.run.dynamics_format import load_dynamics
from lilaw_med.training.run import run_training
from lilaw_med.workflows.crossfit import cross_fit, item_probabilities, load_cross_fit
from tests.audit.conftest import make_image_datalist, tiny_config

OVERRIDES = ["lilaw.enabled=false"]


class Retrained(Exception):
    pass


def _no_training(*args, **kwargs):
    raise Retrained("run_training was called")


@pytest.fixture(scope="module")
def crossfit(tmp_path_factory):
    root = tmp_path_factory.mktemp("crossfit")
    run = run_training(tiny_config(make_image_datalist(root / "data"), "train.epochs=2"), root / "run").run_dir
    result = cross_fit(run, folds=2, overrides=OVERRIDES)
    return run, result


def _ids(path, split):
    return [str(it["id"]) for it in json.loads(path.read_text())[split]]


def test_every_training_item_gets_exactly_one_out_of_fold_row_summing_to_one(crossfit):
    run, result = crossfit
    ids = load_dynamics(run).ids
    assert result.ids == ids and len(set(ids)) == len(ids) == 24
    assert result.probs.shape == (24, 2) and np.isfinite(result.probs).all()
    np.testing.assert_allclose(result.probs.sum(axis=1), 1.0, atol=1e-5)
    assert result.folds == 2 and result.out_dir == run / "crossfit_2"
    info = json.loads((run / "crossfit_2" / "crossfit.json").read_text())
    assert info["folds"] == 2 and info["overrides"] == OVERRIDES and sum(info["fold_sizes"]) == 24
    held = [_ids(run / "crossfit_2" / f"fold_{k}" / "run" / "datalist.json", "test") for k in (1, 2)]
    assert sorted(held[0] + held[1]) == sorted(ids)  # the held-out folds partition the training items


def test_no_fold_run_trained_on_the_items_it_predicted(crossfit):
    run, result = crossfit
    all_train = set(_ids(run / "datalist.json", "training"))
    for k in (1, 2):
        fold = run / "crossfit_2" / f"fold_{k}"
        trained = set(_ids(fold / "run" / "datalist.json", "training"))
        held = _ids(fold / "run" / "datalist.json", "test")
        assert held and trained and not trained & set(held)
        assert trained | set(held) == all_train
        assert set(json.loads((fold / "run" / "dynamics" / "ids_training.json").read_text())) == trained
        assert _ids(fold / "run" / "datalist.json", "validation") == _ids(run / "datalist.json", "validation")
        assert "noise_sidecar" not in json.loads((fold / "datalist_in.json").read_text())
        # the rows of the held-out items are that fold model's predictions, from its best checkpoint by default
        items = {it["id"]: it for it in json.loads((run / "datalist.json").read_text())["training"]}
        own = item_probabilities(fold / "run", [items[i] for i in held], which="best")
        np.testing.assert_allclose(result.aligned(held), own, atol=1e-6)
    assert json.loads((run / "crossfit_2" / "crossfit.json").read_text())["which"] == "best"


def test_the_final_checkpoint_is_reachable_and_reuses_the_trained_folds(crossfit, monkeypatch):
    run, _ = crossfit
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    final = cross_fit(run, folds=2, overrides=OVERRIDES, which="final")
    items = {it["id"]: it for it in json.loads((run / "datalist.json").read_text())["training"]}
    for k in (1, 2):
        held = _ids(run / "crossfit_2" / f"fold_{k}" / "run" / "datalist.json", "test")
        own = item_probabilities(run / "crossfit_2" / f"fold_{k}" / "run", [items[i] for i in held], which="final")
        np.testing.assert_allclose(final.aligned(held), own, atol=1e-6)
    assert json.loads((run / "crossfit_2" / "crossfit.json").read_text())["which"] == "final"
    cross_fit(run, folds=2, overrides=OVERRIDES)  # back to the default for the tests below


def test_fold_overrides_reach_the_fold_configs(crossfit):
    run, _ = crossfit
    assert yaml.safe_load((run / "config.yaml").read_text())["lilaw"]["enabled"] is True
    for k in (1, 2):
        cfg = yaml.safe_load((run / "crossfit_2" / f"fold_{k}" / "run" / "config.yaml").read_text())
        assert cfg["lilaw"]["enabled"] is False
        assert cfg["data"]["datalist"] == str(run / "crossfit_2" / f"fold_{k}" / "datalist_in.json")
        assert cfg["train"]["epochs"] == 2  # everything else from the run's own config
    assert not (run / "crossfit_2" / "fold_1" / "run" / "dynamics" / "ids_validation.json").exists()  # no meta step


def test_a_second_call_reuses_the_cross_fit_without_training(crossfit, monkeypatch):
    run, result = crossfit
    arrays = run / "crossfit_2" / "oof_probs.npy"
    mtime = arrays.stat().st_mtime_ns
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    again = cross_fit(run, folds=2, overrides=OVERRIDES)
    np.testing.assert_array_equal(again.probs, result.probs)
    assert again.ids == result.ids and arrays.stat().st_mtime_ns == mtime
    np.testing.assert_array_equal(load_cross_fit(run / "crossfit_2").probs, result.probs)


def test_an_interrupted_cross_fit_resumes_from_its_finished_folds(crossfit, monkeypatch, tmp_path):
    run, result = crossfit
    copy = shutil.copytree(run / "crossfit_2", tmp_path / "cf")
    (copy / "oof_probs.npy").unlink()  # as if stopped after the last fold's training
    (copy / "crossfit.json").unlink()
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    again = cross_fit(run, folds=2, out_dir=copy, overrides=OVERRIDES)
    np.testing.assert_allclose(again.probs, result.probs, atol=1e-6)
    assert (copy / "oof_probs.npy").is_file()


@pytest.mark.parametrize(("overrides", "seed"), [((), None), (OVERRIDES, 1)])
def test_other_settings_do_not_reuse_folds_trained_with_different_ones(crossfit, monkeypatch, tmp_path, overrides, seed):
    """Folds trained with LiLAW off (or split by another seed) must not pass as folds of another
    cross-fit, neither the finished cross-fit nor its folds: the fold trainings are redone (here:
    run_training is called)."""
    run, _ = crossfit
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    finished = shutil.copytree(run / "crossfit_2", tmp_path / "finished")
    with pytest.raises(Retrained):
        cross_fit(run, folds=2, out_dir=finished, overrides=overrides, seed=seed)
    interrupted = shutil.copytree(run / "crossfit_2", tmp_path / "interrupted")
    (interrupted / "crossfit.json").unlink()  # the first settings' folds only
    with pytest.raises(Retrained):
        cross_fit(run, folds=2, out_dir=interrupted, overrides=overrides, seed=seed)


def test_folds_finished_before_fold_markers_are_reused_only_for_the_same_held_out_items(crossfit, monkeypatch, tmp_path):
    run, result = crossfit
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    for seed, reused in ((None, True), (1, False)):
        old = shutil.copytree(run / "crossfit_2", tmp_path / f"old{seed}")
        for k in (1, 2):
            (old / f"fold_{k}" / "fold.json").unlink()  # as an interrupted cross-fit of an earlier version left it
        (old / "crossfit.json").unlink()
        if reused:
            np.testing.assert_allclose(cross_fit(run, folds=2, out_dir=old, overrides=OVERRIDES).probs, result.probs,
                                       atol=1e-6)
        else:  # another split: the old fold 1 trained on items the new fold 1 must predict
            with pytest.raises(Retrained):
                cross_fit(run, folds=2, out_dir=old, overrides=OVERRIDES, seed=seed)


def test_cross_fit_input_errors(tmp_path, crossfit):
    with pytest.raises(FileNotFoundError, match="not a finished run folder"):
        cross_fit(tmp_path, folds=2)
    with pytest.raises(ValueError, match="folds must be at least 2 but is 1"):
        cross_fit(crossfit[0], folds=1)
    with pytest.raises(InputError, match="no out-of-fold probabilities"):  # one line on the command line
        crossfit[1].aligned(["not-an-item"])


def test_run_audit_with_folds_reads_the_cached_out_of_fold_probabilities(crossfit, monkeypatch, tmp_path):
    from lilaw_med.workflows.audit import run_audit

    run, result = crossfit
    # the default fold overrides (LiLAW off) are those of the cross-fit above, which is reused
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    quiet = {"thumbnails": False, "final_model_baseline": False, "n_bootstrap": 0}
    audit = run_audit(run, tmp_path / "mean", folds=2, **quiet)
    assert audit.options.fold_overrides == tuple(OVERRIDES)
    train = audit.splits["training"]
    oof = result.aligned(train.ids)
    np.testing.assert_allclose(train.oof_probs, oof)
    np.testing.assert_allclose(train.pred_probs, (train.window_probs + oof) / 2)  # fold_combine "mean"
    rows = [r for r in audit.rows if r["split"] == "training"]
    np.testing.assert_allclose([r["oof_p_given"] for r in rows], oof[np.arange(len(rows)), train.labels], atol=1e-6)
    assert all(r["oof_p_given"] is None for r in audit.rows if r["split"] == "validation")
    # the per-class counts read the run's own count window, with folds or without
    plain = run_audit(run, tmp_path / "plain", **quiet)
    np.testing.assert_array_equal(train.noise.per_class, plain.splits["training"].noise.per_class)
    alone = run_audit(run, tmp_path / "oof", folds=2, fold_combine="oof", **quiet)
    np.testing.assert_allclose(alone.splits["training"].pred_probs, oof)


def test_a_finished_cross_fit_of_another_datalist_is_recomputed_not_reused(crossfit, monkeypatch, tmp_path):
    run, result = crossfit
    monkeypatch.setattr(crossfit_module, "run_training", _no_training)
    stale = shutil.copytree(run / "crossfit_2", tmp_path / "stale")
    # as another datalist's cross-fit with the same folds, overrides, checkpoint and seed leaves it
    (stale / "oof_ids.json").write_text(json.dumps([f"other_{i}" for i in range(len(result.ids))]))
    info = json.loads((stale / "crossfit.json").read_text())
    (stale / "crossfit.json").write_text(json.dumps({**info, "ids_sha256": "0" * 64}))
    again = cross_fit(run, folds=2, out_dir=stale, overrides=OVERRIDES)  # its folds match: predicted again
    assert again.ids == result.ids
    np.testing.assert_allclose(again.aligned(result.ids), result.probs, atol=1e-6)
