"""CE, LiLAW, GCE and SCE on three MedMNIST data sets at 0% and 40% symmetric and asymmetric noise.

Issue 17, item 1: the presets' default network (``small_cnn``) at the data's native 28 px, the paper
protocol of :mod:`benchmarks.noisy_accuracy` (Adam lr 1e-3, weight decay 1e-4, batch 64, 10 epochs,
constant learning rate, 15% noisy validation split, one thread per run (the harness's default),
runs serial and cached), 5 seeds paired across methods. Data sets: PneumoniaMNIST-balanced (binary), RetinaMNIST (5 grades),
PathMNIST-1000 (9 tissues). Losses at their published defaults: GCE q = 0.7 (Zhang & Sabuncu
2018), SCE alpha = 0.1, beta = 1.0 (Wang et al. 2019), LiLAW over CE with the spec's defaults.

Per cell, for the final model and the epoch with the best noisy-validation AUROC: clean-test
AUROC, accuracy and balanced accuracy (argmax), and both after the toolkit's calibration fitted
on the noisy validation split (binary: Youden's J threshold; multi-class: the class-prior
correction, ``eval.calibration: prior``), mean ± std over seeds; and each method minus CE, paired
by seed, with a 95% t-interval. The runs share the cache of :mod:`benchmarks.noisy_accuracy`
(its PneumoniaMNIST CE and LiLAW runs are the same runs). The order is seed by seed over every
(data set, cell, method), so a budget stop leaves complete paired seeds.

Run (about 45 min of one core for the runs not yet cached)::

    nice -n 10 python -m benchmarks.noise_table --seeds 5 [--budget MIN]
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DEFAULT_VAL_MODE, DataUnavailable, load_dataset, mean_ci, paired_difference
from benchmarks.noisy_accuracy import run_cells
from lilaw_med.utils import atomic_write

__all__ = ["CELLS", "DATASETS", "METHODS", "main", "table_markdown"]

logger = logging.getLogger(__name__)

CACHE = Path.home() / ".cache" / "lilaw-med-bench" / "noisy_accuracy"
DATASETS = ("pneumoniamnist_balanced", "retinamnist", "pathmnist_1000")
CELLS: tuple[tuple[str, float], ...] = (("none", 0.0), ("symmetric", 0.4), ("asymmetric", 0.4))
METHODS = ("ce", "lilaw", "gce", "sce")
METRICS = ("auroc", "accuracy", "balanced_accuracy", "accuracy_calibrated", "balanced_accuracy_calibrated")
SHORT = {"auroc": "AUROC", "accuracy": "acc", "balanced_accuracy": "bal acc",
         "accuracy_calibrated": "acc cal", "balanced_accuracy_calibrated": "bal acc cal"}


def _cell_name(kind: str, rate: float) -> str:
    return "no noise" if kind == "none" else f"{kind} {rate:.0%}"


def table_markdown(results: dict[str, dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]]]) -> str:
    """The report's tables: per data set and checkpoint, the methods' means (± std) and each method minus CE.

    Args:
        results: ``{dataset: {(kind, rate): {method: {seed: run summary}}}}``.

    Returns:
        Markdown: for each data set and checkpoint (final, best noisy-validation epoch) a table of means
        and a table of paired differences to CE (95% t-interval, seeds better).
    """
    out = []
    for dataset, cells in results.items():
        for ckpt, label in (("final", "final model"), ("best", "best noisy-validation epoch")):
            means = [f"**{dataset}, {label}** (percentage points, mean ± std over seeds)", "",
                     "| cell | method | seeds | " + " | ".join(SHORT[m] for m in METRICS) + " |",
                     "|---|---|---|" + "---|" * len(METRICS)]
            diffs = [f"**{dataset}, {label}: method - CE, paired by seed** (points, mean [95% CI], wins)", "",
                     "| cell | method | seeds | " + " | ".join(SHORT[m] for m in METRICS) + " |",
                     "|---|---|---|" + "---|" * len(METRICS)]
            for (kind, rate), per_method in cells.items():
                for method, runs in per_method.items():
                    seeds = sorted(runs)
                    if not seeds:
                        continue
                    row = []
                    for m in METRICS:
                        v = [runs[s][ckpt].get(m, float("nan")) for s in seeds]
                        ci = mean_ci(v)
                        row.append(f"{100 * ci['mean']:.1f} ± {100 * ci['std']:.1f}")
                    means.append(f"| {_cell_name(kind, rate)} | {method} | {len(seeds)} | " + " | ".join(row) + " |")
                    if method == "ce":
                        continue
                    paired = sorted(set(seeds) & set(per_method.get("ce", {})))
                    if len(paired) < 2:
                        continue
                    row = []
                    for m in METRICS:
                        a = [runs[s][ckpt].get(m, float("nan")) for s in paired]
                        b = [per_method["ce"][s][ckpt].get(m, float("nan")) for s in paired]
                        d = paired_difference(a, b)
                        row.append(f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] "
                                   f"{d['wins']}/{d['n']}")
                    diffs.append(f"| {_cell_name(kind, rate)} | {method} | {len(paired)} | " + " | ".join(row) + " |")
            out += ["\n".join(means), "\n".join(diffs)]
    return "\n\n".join(out)


def _cost(results: dict[str, Any]) -> dict[str, float]:
    seconds = [s["seconds"] for cells in results.values() for per in cells.values() for runs in per.values()
               for s in runs.values()]
    return {"runs": len(seconds), "cpu_hours": float(np.sum(seconds)) / 3600.0}


def main(seeds: int = 5, budget_min: float | None = None, cache: Path = CACHE,
         datasets: Sequence[str] = DATASETS, methods: Sequence[str] = METHODS) -> dict[str, Any] | None:
    """Runs (or reads from the cache) the table and writes ``noise_table.md``/``.json`` into ``cache``.

    Args:
        seeds: seeds 0..seeds-1.
        budget_min: no new run starts after this many minutes (cached runs are still read).
        cache: the folder of the reports; runs are cached in ``cache / "runs"``.
        datasets: npz stems.
        methods: methods of :mod:`benchmarks.harness`.

    Returns:
        ``{"markdown", "cost", "results"}``, or ``None`` when a data set is absent (logged).
    """
    try:
        for d in datasets:
            load_dataset(d)
    except DataUnavailable as err:
        logger.warning("noise_table skipped: %s", err)
        return None
    deadline = time.time() + 60 * budget_min if budget_min is not None else None
    results: dict[str, dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]]] = {
        d: {(k, r): {m: {} for m in methods} for k, r in CELLS} for d in datasets
    }
    kwargs = dict(epochs=10, network="small_cnn", val_mode=DEFAULT_VAL_MODE, detach_weights=False)
    for seed in range(seeds):  # seed by seed: a budget stop leaves complete pairs
        for d in datasets:
            part = run_cells(d, CELLS, methods, [seed], cache / "runs", deadline, **kwargs)
            for cell, per_method in part.items():
                for m, runs in per_method.items():
                    results[d][cell][m].update(runs)
    md = table_markdown(results)
    cost = _cost(results)
    md += (f"\n\nCost: {cost['runs']} runs, {cost['cpu_hours']:.2f} h of training wall time "
           "(cached runs count at the time they took).")
    report = {"markdown": md, "cost": cost, "results": {
        d: {_cell_name(*c): per for c, per in cells.items()} for d, cells in results.items()}}
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(cache / "noise_table.md", md + "\n")
    atomic_write(cache / "noise_table.json", json.dumps(report, indent=1, default=float))
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=float, default=None, help="minutes after which no new run starts")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    rep = main(args.seeds, args.budget, args.cache, args.datasets, args.methods)
    if rep is not None:
        print(rep["markdown"])
