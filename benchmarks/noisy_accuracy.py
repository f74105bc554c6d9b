"""CE vs LiLAW (CE) on PneumoniaMNIST-balanced with 40% symmetric label noise, and without noise.

The floor of issues 2, 7 and 17: the presets' default network (``small_cnn``) at the data's native 28 px, the
paper prototype's protocol (Adam lr 1e-3, weight decay 1e-4,
batch 64, 10 epochs, constant learning rate, validation = 15% of the noisy training data, the
same noise in training and validation labels, clean test labels), 10 seeds, paired by seed.
Reported: the mean difference LiLAW - CE with a 95% t-interval for clean-test accuracy, balanced
accuracy (argmax, and at the decision threshold fitted on the noisy validation split as ``lilaw-med train``
does) and AUROC, for the final model and for the epoch with the best noisy-validation AUROC, and how far
LiLAW's alpha, beta and delta moved.
Floor: mean final AUROC difference >= +3 points at 40% noise; without noise the interval of
LiLAW - CE includes 0 or lies above it.

Run (about 40 min of one core for 10 seeds; results are cached per run in benchmarks/out/runs)::

    nice -n 10 python -m benchmarks.noisy_accuracy --seeds 10
    nice -n 10 python -m benchmarks.noisy_accuracy --seeds 10 --detach-weights --report-name noisy_accuracy_detach
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

from benchmarks.harness import (
    DEFAULT_VAL_MODE,
    LILAW_METHODS,
    DataUnavailable,
    load_dataset,
    mean_ci,
    paired_difference,
    run_cached,
)
from lilaw_med.utils import atomic_write

__all__ = ["DEFAULT_CELLS", "compare_methods", "format_comparison", "main", "run_cells"]

logger = logging.getLogger(__name__)

OUT_DIR = Path(__file__).resolve().parent / "out"
DATASET = "pneumoniamnist_balanced"
DEFAULT_CELLS: tuple[tuple[str, float], ...] = (("symmetric", 0.4), ("none", 0.0))
METRICS = ("accuracy", "accuracy_calibrated", "balanced_accuracy", "auroc")
"""``accuracy_calibrated``: at the Youden threshold fitted on the noisy validation split (the toolkit's calibration)."""


def run_cells(
    dataset: str,
    cells: Sequence[tuple[str, float]],
    methods: Sequence[str],
    seeds: Sequence[int],
    cache_dir: Path,
    deadline: float | None = None,
    **run_kwargs: Any,
) -> dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]]:
    """Runs every (cell, seed, method), in that order, so that an early stop leaves paired results.

    Args:
        dataset: npz stem.
        cells: (noise kind, rate) pairs.
        methods: methods of :mod:`benchmarks.harness`.
        seeds: seeds.
        cache_dir: run cache folder (see :func:`benchmarks.harness.run_cached`).
        deadline: ``time.time()`` after which no new run starts (cached runs are still read).
        **run_kwargs: further :func:`benchmarks.harness.run_one` arguments.

    Returns:
        ``{(kind, rate): {method: {seed: summary}}}``.
    """
    results: dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]] = {
        (k, float(r)): {m: {} for m in methods} for k, r in cells
    }
    for kind, rate in cells:  # cell by cell (the floor's first), seed by seed: an early stop leaves pairs
        for seed in seeds:
            for method in methods:
                kwargs = dict(dataset=dataset, noise_kind=kind, noise_rate=float(rate), seed=int(seed),
                              method=method, **run_kwargs)
                if method not in LILAW_METHODS:  # LiLAW-only options: the baseline's runs stay shared in the cache
                    kwargs.update(val_mode="eval", detach_weights=False)
                late = deadline is not None and time.time() > deadline
                summary = run_cached(cache_dir, cache_only=late, **kwargs)
                if summary is None:
                    continue
                results[(kind, float(rate))][method][int(seed)] = summary
                logger.info(
                    "%s %s %.2f seed %d %s: final AUROC %.4f, best-val AUROC %.4f (%.0f s%s)",
                    dataset, kind, rate, seed, method, summary["final"]["auroc"], summary["best"]["auroc"],
                    summary["seconds"], ", cached" if summary.get("cached") else "",
                )
    return results


def compare_methods(
    per_method: dict[str, dict[int, dict[str, Any]]], a: str, b: str
) -> dict[str, Any]:
    """Per-method mean/std/CI and the paired difference ``a - b`` on the seeds both have.

    Args:
        per_method: ``{method: {seed: summary}}``.
        a: the method compared (e.g. ``"lilaw"``).
        b: the reference (e.g. ``"ce"``).

    Returns:
        ``{"seeds": [...], "checkpoints": {"final"|"best": {metric: {a: ci, b: ci, "diff": ci}}}}``.
    """
    seeds = sorted(set(per_method.get(a, {})) & set(per_method.get(b, {})))
    out: dict[str, Any] = {"a": a, "b": b, "seeds": seeds, "checkpoints": {}}
    for ckpt in ("final", "best"):
        table: dict[str, Any] = {}
        for metric in METRICS:
            va = [per_method[a][s][ckpt][metric] for s in seeds]
            vb = [per_method[b][s][ckpt][metric] for s in seeds]
            table[metric] = {a: mean_ci(va), b: mean_ci(vb), "diff": paired_difference(va, vb)}
        out["checkpoints"][ckpt] = table
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def format_comparison(title: str, comp: dict[str, Any]) -> str:
    """A markdown table of :func:`compare_methods`' result (figures in percentage points)."""
    a, b = comp["a"], comp["b"]
    lines = [
        f"**{title}** ({len(comp['seeds'])} paired seeds; percentage points; mean ± std; 95% t-interval of the paired difference)",
        "",
        f"| checkpoint | metric | {b} | {a} | {a} - {b} [95% CI] | seeds {a} > {b} |",
        "|---|---|---|---|---|---|",
    ]
    for ckpt, label in (("final", "final model"), ("best", "best noisy-val epoch")):
        for metric in METRICS:
            row = comp["checkpoints"][ckpt][metric]
            d = row["diff"]
            lines.append(
                f"| {label} | {metric} | {_pct(row[b]['mean'])} ± {_pct(row[b]['std'])} | "
                f"{_pct(row[a]['mean'])} ± {_pct(row[a]['std'])} | {100 * d['mean']:+.1f} "
                f"[{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}] | {d['wins']}/{d['n']} |"
            )
    return "\n".join(lines)


def lilaw_parameters_markdown(results: dict[tuple[str, float], dict[str, dict[int, dict[str, Any]]]]) -> str:
    """How far alpha, beta and delta moved from their initial values per cell (mean, min, max over seeds)."""
    from lilaw_med.weighting import LiLAWWeighting

    start = LiLAWWeighting().as_dict()
    lines = ["| cell | seeds | " + " | ".join(f"{k} (start {start[k]:g}): final mean [min, max]" for k in start) + " |",
             "|---|---|" + "---|" * len(start)]
    for (kind, rate), per_method in results.items():
        runs = [r["lilaw"] for r in per_method.get("lilaw", {}).values() if r.get("lilaw")]
        if not runs:
            continue
        cells = []
        for k in start:
            v = np.array([r[k] for r in runs], dtype=float)
            cells.append(f"{v.mean():.2f} [{v.min():.2f}, {v.max():.2f}]")
        lines.append(f"| {kind} {rate:g} | {len(runs)} | " + " | ".join(cells) + " |")
    return "LiLAW's three scalars after training:\n\n" + "\n".join(lines)


def main(
    seeds: int = 10,
    budget_min: float | None = None,
    out_dir: Path = OUT_DIR,
    val_mode: str = DEFAULT_VAL_MODE,
    detach_weights: bool = False,
    epochs: int = 10,
    network: str = "small_cnn",
    cells: Sequence[tuple[str, float]] = DEFAULT_CELLS,
    reverse_seeds: bool = False,
    report_name: str = "noisy_accuracy",
) -> dict[str, Any] | None:
    """Runs the floor experiment and returns (and writes) its results.

    Args:
        seeds: number of seeds (0..seeds-1).
        budget_min: stop starting new runs after this many minutes (cached runs still count).
        out_dir: where ``noisy_accuracy.json``/``.md`` and the run cache go.
        val_mode: the LiLAW handler's validation-forward mode.
        detach_weights: the LiLAW loss's ``detach_weights``.
        epochs: training epochs (paper: 10).
        network: see :func:`benchmarks.harness.build_network`.
        cells: (noise kind, rate) pairs.
        reverse_seeds: run the seeds from the last down.
        report_name: stem of the JSON/markdown report in ``out_dir``.

    Returns:
        The results dict, or ``None`` when the data are absent (a skip message is logged).
    """
    try:
        load_dataset(DATASET)
    except DataUnavailable as err:
        logger.warning("noisy_accuracy skipped: %s", err)
        return None
    deadline = time.time() + 60 * budget_min if budget_min is not None else None
    order = list(range(seeds))[::-1] if reverse_seeds else list(range(seeds))
    results = run_cells(
        DATASET, cells, ("ce", "lilaw"), order, out_dir / "runs", deadline,
        epochs=epochs, network=network, val_mode=val_mode, detach_weights=detach_weights,
    )
    report: dict[str, Any] = {
        "dataset": DATASET, "protocol": {"epochs": epochs, "optimizer": "Adam lr 1e-3 wd 1e-4", "batch_size": 64,
                                         "val_fraction": 0.15, "network": network, "val_mode": val_mode,
                                         "detach_weights": detach_weights},
        "cells": {},
    }
    md = []
    for (kind, rate), per_method in results.items():
        comp = compare_methods(per_method, "lilaw", "ce")
        name = f"{kind} {rate:.0%}" if kind != "none" else "no noise"
        report["cells"][name] = comp
        if comp["seeds"]:
            md.append(format_comparison(f"{DATASET}, {name}, LiLAW val_mode={val_mode}, detach_weights={detach_weights}", comp))
        else:
            md.append(f"**{DATASET}, {name}**: no paired runs yet (budget spent; rerun to continue from the cache).")
    sym = report["cells"].get("symmetric 40%")
    if sym and sym["seeds"]:
        d = sym["checkpoints"]["final"]["auroc"]["diff"]
        report["floor_auroc_40"] = {"mean_diff": d["mean"], "required": 0.03, "met": bool(d["mean"] >= 0.03)}
    clean = report["cells"].get("no noise")
    if clean and len(clean["seeds"]) >= 2:
        d = clean["checkpoints"]["final"]["auroc"]["diff"]
        report["floor_no_noise"] = {"ci_low": d["ci_low"], "ci_high": d["ci_high"], "met": bool(d["ci_high"] >= 0)}
    md.append(lilaw_parameters_markdown(results))
    report["markdown"] = "\n\n".join(md)
    atomic_write(out_dir / f"{report_name}.json", json.dumps(report, indent=1, default=float))
    atomic_write(out_dir / f"{report_name}.md", report["markdown"] + "\n")
    return report


def cli_summary(seed: int, lilaw_on: bool, rate: float = 0.4) -> dict[str, Any]:
    """One ``lilaw-med train`` run with the radiology_2d preset's defaults at 28 px (cached by the audit grid).

    The LiLAW run is the ``initial/`` run of the audit grid's refine stage when that exists (the same command,
    config and seed), so the refine benchmark and this one share it.
    """
    from benchmarks.audit_grid import Cell, run_dir, train

    cell = Cell(DATASET, "symmetric", rate, seed)
    initial = run_dir(cell, "refine") / "initial"
    rd = initial if lilaw_on and (initial / "summary.json").is_file() else train(cell, lilaw_on)
    s = json.loads((rd / "summary.json").read_text(encoding="utf-8"))
    out: dict[str, Any] = {}
    for ckpt in ("final", "best"):
        test, cal = s[ckpt]["test"], s[ckpt]["test_calibrated"]
        out[ckpt] = {"accuracy": test["accuracy"], "accuracy_calibrated": cal["accuracy"],
                     "balanced_accuracy": test["balanced_accuracy"], "auroc": test["auroc"]}
    out["lilaw"] = {k: s["lilaw"][k] for k in ("alpha", "beta", "delta")} if s.get("lilaw") else {}
    out["seconds"] = s["seconds"]
    return out


def preset_protocol(seeds: int = 5, out_dir: Path = OUT_DIR) -> dict[str, Any]:
    """CE vs LiLAW through ``lilaw-med train`` (the preset's protocol: batch 16, 12 epochs, 64->28 px, threshold
    calibration), PneumoniaMNIST-balanced at 40% symmetric noise, paired by seed."""
    per_method: dict[str, dict[int, dict[str, Any]]] = {"ce": {}, "lilaw": {}}
    for seed in range(seeds):
        for method in ("ce", "lilaw"):
            per_method[method][seed] = cli_summary(seed, method == "lilaw")
    comp = compare_methods(per_method, "lilaw", "ce")
    md = format_comparison(f"{DATASET}, symmetric 40%, the radiology_2d preset through `lilaw-med train` (28 px)", comp)
    md += "\n\n" + lilaw_parameters_markdown({("symmetric", 0.4): per_method})
    atomic_write(out_dir / "noisy_accuracy_preset.md", md + "\n")
    atomic_write(out_dir / "noisy_accuracy_preset.json", json.dumps(comp, indent=1, default=float))
    return {"comparison": comp, "markdown": md}


def _parse(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--budget", type=float, default=None, help="minutes after which no new run starts")
    p.add_argument("--val-mode", choices=("eval", "train"), default=DEFAULT_VAL_MODE)
    p.add_argument("--detach-weights", action="store_true")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--network", default="small_cnn",
                   help="small_cnn (the presets' default), resnet18_medmnist (MedMNIST's 28-px ResNet-18) or a "
                   "reduced ResNet-18 (see benchmarks.harness)")
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--cells", nargs="+", default=None, metavar="KIND:RATE",
                   help="noise cells, e.g. symmetric:0.4 none:0 (default: both)")
    p.add_argument("--report-name", default="noisy_accuracy", help="stem of the report files in --out")
    p.add_argument("--protocol", choices=("paper", "preset"), default="paper",
                   help="paper: the in-memory harness (batch 64, 10 epochs); preset: `lilaw-med train` with the "
                   "radiology_2d preset's defaults (5 seeds by default)")
    p.add_argument("--reverse-seeds", action="store_true",
                   help="run seeds from the last down (a second process can then share the cache)")
    return p.parse_args(argv)


if __name__ == "__main__":
    args = _parse()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)  # one line per run, not per epoch
    if args.protocol == "preset":
        args.out.mkdir(parents=True, exist_ok=True)
        print(preset_protocol(args.seeds, args.out)["markdown"])
        raise SystemExit(0)
    cells = DEFAULT_CELLS
    if args.cells:
        cells = tuple((c.split(":")[0], float(c.split(":")[1]) if ":" in c else 0.0) for c in args.cells)
    rep = main(args.seeds, args.budget, args.out, args.val_mode, args.detach_weights, args.epochs, args.network,
               cells, args.reverse_seeds, args.report_name)
    if rep is not None:
        print(rep["markdown"])
        for key in ("floor_auroc_40", "floor_no_noise"):
            if key in rep:
                print(key, rep[key])
