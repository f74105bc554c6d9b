"""Benchmark suites' plumbing: the decision rule, the grid, RESULTS.md, the GPU skip, the peer steps."""

from __future__ import annotations

import json

import pytest
import torch
from monai.engines import SupervisedTrainer
from torch import nn

from benchmarks import choices, overhead, run
from benchmarks.cost import MetaWeightNetStep


def _table(diffs: dict[str, tuple[float, float, float]]) -> dict:
    variants = {name: {"diff_auroc_vs_default": {"mean": 0.0, "ci_low": 0.0, "ci_high": 0.0}} for name in choices.VARIANTS}
    for name, (m, lo, hi) in diffs.items():
        variants[name]["diff_auroc_vs_default"] = {"mean": m, "ci_low": lo, "ci_high": hi}
    return {"seeds": [0, 1, 2], "variants": variants}


def test_choice_changes_the_default_only_when_the_gain_interval_lies_above_zero() -> None:
    unclear = {"breastmnist": _table({"eval, w detached": (0.02, -0.01, 0.05)})}
    assert choices.decide(unclear)["choice"] == choices.DEFAULT
    clear = {"breastmnist": _table({"eval, w detached": (0.04, 0.01, 0.07)})}
    decision = choices.decide(clear)
    assert decision["choice"] == "eval, w detached" and decision["detach_weights"] is True
    contradicted = {**clear, "retinamnist": _table({"eval, w detached": (-0.05, -0.08, -0.02)})}
    assert choices.decide(contradicted)["choice"] == choices.DEFAULT


def test_full_grid_keeps_binary_sets_at_40_percent_symmetric_noise_at_most() -> None:
    grid = run.full_grid()
    sym = {(ds, rate) for ds, kind, rate, _, _ in grid if kind == "symmetric"}
    assert ("breastmnist", 0.6) not in sym and ("retinamnist", 0.6) in sym
    assert len({ds for ds, *_ in grid}) == 5
    assert sum(len(m) * s for *_, m, s in grid) > 1000  # the "about 1,500 trainings"


def test_results_md_has_header_and_every_suite_section(tmp_path) -> None:
    (tmp_path / "accuracy.md").write_text("| accuracy table |\n")
    (tmp_path / "overhead.json").write_text(json.dumps({"results": [], "markdown": "x", "raw": {}}))
    text = run.assemble_results("python -m benchmarks.run --suite accuracy", tmp_path,
                                tmp_path / "RESULTS.md", tmp_path / "RESULTS.json")
    for needle in ("last assembled by `python -m benchmarks.run --suite accuracy`", "Machine:", "Date:", "torch",
                   "| accuracy table |", "## Step cost", "## GPU", "Not run yet"):
        assert needle in text
    small = json.loads((tmp_path / "RESULTS.json").read_text())
    assert "markdown" not in small["overhead"] and small["versions"]["torch"]


def test_gpu_suite_skips_with_a_note_without_cuda(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report = run.gpu_suite(out_dir=tmp_path)
    assert "skipped" in report and "no CUDA" in (tmp_path / "gpu.md").read_text()


def test_overhead_measure_reports_medians_and_median_paired_ratios_to_plain(monkeypatch) -> None:
    def tiny(c: int, k: int, dims: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(c * 8 * 8, k))

    # CPU seconds of each run() in measure's order (per round: epoch then iteration mode, each over
    # plain, lilaw, naive); the warm-up round (100 s) must be dropped; wall clock = 2 x CPU
    rounds = [
        [100.0] * 6,
        [2.0, 3.0, 4.0, 1.0, 1.2, 2.0],
        [4.0, 4.0, 8.0, 1.0, 1.4, 3.0],
        [3.0, 6.0, 9.0, 1.0, 1.1, 2.5],
    ]
    times = iter(t for r in rounds for t in r)
    monkeypatch.setattr(overhead, "_timed_run", lambda engine: (t := next(times), 2 * t))
    r = overhead.measure(8, batch_size=4, iterations=2, reps=3, network_fn=tiny)
    assert next(times, None) is None  # (1 warm-up + 3 rounds) x 2 modes x 3 methods runs
    assert r["raw"]["epoch"] == {"plain": [2.0, 4.0, 3.0], "lilaw": [3.0, 4.0, 6.0], "naive": [4.0, 8.0, 9.0]}
    # medians per epoch; per iteration, the median over 2 iterations an epoch
    assert r["epoch_s"] == pytest.approx({"plain": 3.0, "lilaw": 4.0, "naive": 8.0})
    assert r["iter_s"] == pytest.approx({"plain": 0.5, "lilaw": 0.6, "naive": 1.25})
    # the median of each round's ratio (lilaw: 1.5, 1.0, 2.0), not the ratio of the medians (4 / 3)
    assert r["epoch_ratio"] == pytest.approx({"plain": 1.0, "lilaw": 1.5, "naive": 2.0})
    assert r["iter_ratio"] == pytest.approx({"plain": 1.0, "lilaw": 1.2, "naive": 2.5})
    assert r["wall_epoch_s"] == pytest.approx({"plain": 6.0, "lilaw": 8.0, "naive": 16.0})
    assert r["wall_epoch_ratio"] == pytest.approx(r["epoch_ratio"])


def test_meta_weight_net_step_updates_the_weighting_mlp_and_the_network() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(0)
    batch = {"image": torch.randn(6, 8, generator=g), "label": torch.randint(0, 3, (6,), generator=g)}
    step = MetaWeightNetStep([batch], inner_lr=0.5)
    trainer = SupervisedTrainer(device=torch.device("cpu"), max_epochs=1, train_data_loader=[batch], network=net,
                                optimizer=torch.optim.SGD(net.parameters(), lr=0.1), loss_function=nn.CrossEntropyLoss(),
                                iteration_update=step, decollate=False)
    net_before = [p.detach().clone() for p in net.parameters()]
    mlp_before = [p.detach().clone() for p in step.vnet.parameters()]
    trainer.run()
    assert any(not torch.equal(a, b) for a, b in zip(net_before, net.parameters(), strict=True))
    # the MLP only gets a gradient through the look-ahead (second order): it must have moved
    assert any(not torch.equal(a, b) for a, b in zip(mlp_before, step.vnet.parameters(), strict=True))
