"""The spec's two open choices, measured: validation forward in eval or train mode, and whether the
model gradient flows through the LiLAW weight.

Variants (all LiLAW over CE, the spec's meta hyper-parameters), plus CE for reference with
``--with-ce``:

* ``val_mode``: ``"eval"`` (batch-norm running statistics untouched by validation data) or
  ``"train"`` (the paper prototype's: the validation forward updates them and normalises with
  the validation batch's own statistics);
* ``detach_weights``: ``False`` (the prototype's: the model gradient also flows through ``w``) or
  ``True`` (a pure reweighting).

Data: RetinaMNIST (NOT the floor's PneumoniaMNIST; BreastMNIST with ``--datasets``) with 40%
symmetric noise in the training and validation labels. RetinaMNIST is the default because a noisy
validation split can only judge what its labels still say: with symmetric noise at rate r over C
classes, the noisy-label AUROC moves by about (1 - r C / (C - 1)) times the clean one's change
(0.5 for RetinaMNIST's 5 classes) and it has 162 validation items, while binary BreastMNIST at 40%
keeps 0.2 of the signal on 82 items (its first runs gave noisy-validation AUROCs of 0.42-0.48 for
every variant: noise, not information). The paper prototype's protocol (Adam 1e-3, wd 1e-4, batch 64, 10 epochs,
validation = 15% of the noisy training data); seeds paired across variants. Judged ONLY on the
noisy validation split (AUROC and accuracy against the noisy labels, final model); the clean test
labels are never read for the decision.

Decision rule, fixed before the runs: a variant replaces the current default (eval, no detach) only
if its paired mean difference in final noisy-validation AUROC is positive with a 95% interval
above 0 on at least one data set and not below 0 on the other; otherwise the default stays
(eval mode keeps batch-norm statistics free of validation data; not detaching is the paper's).

Run::

    nice -n 10 python -m benchmarks.choices --seeds 5 --datasets retinamnist
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import (
    BENCH_NETWORK,
    DataUnavailable,
    load_dataset,
    mean_ci,
    paired_difference,
    run_cached,
)
from lilaw_med.utils import atomic_write

__all__ = ["VARIANTS", "decide", "main"]

logger = logging.getLogger(__name__)

OUT_DIR = Path(__file__).resolve().parent / "out"
DATASETS = ("retinamnist",)
# name -> (method, val_mode, detach_weights)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "eval, w not detached (default)": ("lilaw", "eval", False),
    "train, w not detached (prototype)": ("lilaw", "train", False),
    "eval, w detached": ("lilaw", "eval", True),
    "train, w detached": ("lilaw", "train", True),
}
REFERENCE = {"CE (reference, --with-ce)": ("ce", "eval", False)}
DEFAULT = "eval, w not detached (default)"


def _collect(dataset: str, seeds: Sequence[int], cache_dir: Path, deadline: float | None,
             epochs: int, network: str, variants: dict[str, tuple[str, str, bool]]) -> dict[str, dict[int, dict[str, Any]]]:
    results: dict[str, dict[int, dict[str, Any]]] = {v: {} for v in variants}
    for seed in seeds:
        for name, (method, val_mode, detach) in variants.items():
            late = deadline is not None and time.time() > deadline
            s = run_cached(cache_dir, cache_only=late, dataset=dataset, noise_kind="symmetric", noise_rate=0.4,
                           seed=int(seed), method=method, epochs=epochs, network=network, val_mode=val_mode,
                           detach_weights=detach)
            if s is not None:
                results[name][int(seed)] = s
                logger.info("%s seed %d %s: noisy-val AUROC %.4f", dataset, seed, name, s["final_val"]["auroc"])
    return results


def _summarise(results: dict[str, dict[int, dict[str, Any]]]) -> dict[str, Any]:
    seeds = sorted(set.intersection(*(set(r) for r in results.values())))
    table: dict[str, Any] = {"seeds": seeds, "variants": {}}
    for name, per_seed in results.items():
        auc = [per_seed[s]["final_val"]["auroc"] for s in seeds]
        acc = [per_seed[s]["final_val"]["accuracy"] for s in seeds]
        best_auc = [max(h["val"]["auroc"] for h in per_seed[s]["history"]) for s in seeds]
        ref_auc = [results[DEFAULT][s]["final_val"]["auroc"] for s in seeds]
        ref_acc = [results[DEFAULT][s]["final_val"]["accuracy"] for s in seeds]
        table["variants"][name] = {
            "val_auroc": mean_ci(auc), "val_accuracy": mean_ci(acc), "val_auroc_best_epoch": mean_ci(best_auc),
            "diff_auroc_vs_default": paired_difference(auc, ref_auc),
            "diff_accuracy_vs_default": paired_difference(acc, ref_acc),
            "final_alpha_beta_delta": [
                mean_ci([per_seed[s]["lilaw"].get(k, float("nan")) for s in seeds])["mean"]
                for k in ("alpha", "beta", "delta")
            ],
        }
    return table


def decide(tables: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Applies the decision rule of the module docstring.

    Args:
        tables: ``{dataset: summary}`` from the runs.

    Returns:
        ``{"choice": variant name, "val_mode": str, "detach_weights": bool, "reason": str}``.
    """
    best, reason = DEFAULT, "no variant beat the default with a 95% interval above 0; the default stays"
    for name in VARIANTS:
        if name == DEFAULT:
            continue
        diffs = [t["variants"][name]["diff_auroc_vs_default"] for t in tables.values() if t["seeds"]]
        if diffs and any(d["ci_low"] > 0 for d in diffs) and all(d["ci_high"] >= 0 for d in diffs):
            best, reason = name, "its noisy-validation AUROC gain over the default has a 95% interval above 0"
    _, val_mode, detach = VARIANTS[best]
    return {"choice": best, "val_mode": val_mode, "detach_weights": detach, "reason": reason}


def format_tables(tables: dict[str, dict[str, Any]]) -> str:
    """Markdown: one table per data set, every variant with its figures (percentage points)."""
    out = []
    for dataset, t in tables.items():
        out += [
            f"**{dataset}, 40% symmetric noise, {len(t['seeds'])} paired seeds** (noisy-validation metrics of the "
            "final model, percentage points, mean ± std; difference to the default with its 95% t-interval)",
            "",
            "| variant | noisy-val AUROC | - default [95% CI] | noisy-val accuracy | - default [95% CI] | best-epoch noisy-val AUROC | final alpha / beta / delta |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, v in t["variants"].items():
            da, dc = v["diff_auroc_vs_default"], v["diff_accuracy_vs_default"]
            abd = " / ".join(f"{x:.2f}" for x in v["final_alpha_beta_delta"])
            out.append(
                f"| {name} | {100 * v['val_auroc']['mean']:.1f} ± {100 * v['val_auroc']['std']:.1f} | "
                f"{100 * da['mean']:+.1f} [{100 * da['ci_low']:+.1f}, {100 * da['ci_high']:+.1f}] | "
                f"{100 * v['val_accuracy']['mean']:.1f} ± {100 * v['val_accuracy']['std']:.1f} | "
                f"{100 * dc['mean']:+.1f} [{100 * dc['ci_low']:+.1f}, {100 * dc['ci_high']:+.1f}] | "
                f"{100 * v['val_auroc_best_epoch']['mean']:.1f} | {abd} |"
            )
        out.append("")
    return "\n".join(out)


def _bonferroni_note(tables: dict[str, dict[str, Any]]) -> str:
    """The noisy-validation AUROC intervals again, Bonferroni-adjusted for the comparisons against the default."""
    import math

    from scipy import stats

    parts = []
    for dataset, t in tables.items():
        others = [n for n in t["variants"] if n != DEFAULT and n in VARIANTS]
        k = len(others)
        for name in others:
            d = t["variants"][name]["diff_auroc_vs_default"]
            if d["n"] < 2:
                continue
            half = stats.t.ppf(1 - 0.05 / (2 * k), d["n"] - 1) * d["std"] / math.sqrt(d["n"])
            parts.append(f"{dataset} {name}: {100 * d['mean']:+.1f} [{100 * (d['mean'] - half):+.1f}, "
                         f"{100 * (d['mean'] + half):+.1f}]")
    if not parts:
        return ""
    return ("\nThe same AUROC differences with Bonferroni-adjusted intervals (family-wise 95% over the comparisons "
            "with the default): " + "; ".join(parts) + ".\n")


def main(seeds: int = 5, budget_min: float | None = None, datasets: Sequence[str] = DATASETS, epochs: int = 10,
         network: str = BENCH_NETWORK, out_dir: Path = OUT_DIR, with_ce: bool = False) -> dict[str, Any] | None:
    """Runs every variant on every data set and seed, decides, writes ``choices.json``/``.md``.

    Returns:
        The report, or ``None`` when no data set is available.
    """
    deadline = time.time() + 60 * budget_min if budget_min is not None else None
    tables: dict[str, dict[str, Any]] = {}
    for dataset in datasets:
        try:
            load_dataset(dataset)
        except DataUnavailable as err:
            logger.warning("choices: %s", err)
            continue
        variants = {**VARIANTS, **(REFERENCE if with_ce else {})}
        tables[dataset] = _summarise(_collect(dataset, range(seeds), out_dir / "runs", deadline, epochs, network, variants))
    if not tables:
        return None
    report = {"tables": tables, "decision": decide(tables), "markdown": format_tables(tables)}
    report["markdown"] += _bonferroni_note(tables)
    report["markdown"] += (f"\nDecision (rule fixed in advance, see benchmarks/choices.py): **{report['decision']['choice']}**"
                           f" ({report['decision']['reason']}).\n")
    atomic_write(out_dir / "choices.json", json.dumps(report, indent=1, default=float))
    atomic_write(out_dir / "choices.md", report["markdown"])
    return report


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--budget", type=float, default=None)
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", type=Path, default=OUT_DIR)
    p.add_argument("--with-ce", action="store_true", help="also run CE as a reference row")
    a = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("ignite").setLevel(logging.WARNING)
    r = main(a.seeds, a.budget, a.datasets, a.epochs, out_dir=a.out, with_ce=a.with_ce)
    if r is not None:
        print(r["markdown"])
