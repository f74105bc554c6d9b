"""Benchmark suites' plumbing: the decision rule, the grid, RESULTS.md, the GPU skip, the peer steps."""

from __future__ import annotations

import json
import statistics

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


def test_overhead_measure_reports_ratios_to_plain_for_every_method() -> None:
    def tiny(c: int, k: int, dims: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(c * 8 * 8, k))

    r = overhead.measure(8, batch_size=4, iterations=2, reps=3, network_fn=tiny)
    assert set(r["epoch_ratio"]) == {"plain", "lilaw", "naive"}
    for mode, per in (("epoch", 1), ("iter", 2)):  # seconds per epoch; per iteration (2 iterations an epoch)
        raw = r["raw"][mode]
        assert all(len(times) == 3 for times in raw.values())  # the warm-up round is not kept
        for m, times in raw.items():
            assert r[f"{mode}_s"][m] == statistics.median(times) / per
            # the median of the paired ratios (each round's time over plain's in the same round)
            assert r[f"{mode}_ratio"][m] == statistics.median(a / b for a, b in zip(times, raw["plain"], strict=True))


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
