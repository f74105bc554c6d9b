"""Refine: train with LiLAW, audit, exclude the suspected mislabels, retrain on the rest.

The benchmark twin of ``lilaw-med train --refine`` (:func:`lilaw_med.training.refine.run_refine`),
on in-memory MedMNIST through :mod:`benchmarks.harness`. Per seed: one LiLAW run recording its
dynamics (the "single LiLAW run"), the audit's score and exclusion rule on its training items (no
clean label is used), and a second LiLAW run on the kept items with the same noisy validation
split and the same seed. Both are judged on the clean test set (final model).

Stages (issue 5): ``--stage select`` compares exclusion rules on OTHER data (BreastMNIST at 40%
symmetric noise by default); ``--stage floor`` measures the chosen rule on
``pneumoniamnist_balanced`` at 40% symmetric noise, paper protocol (Adam 1e-3, weight decay 1e-4,
batch 64, 10 epochs, validation = 15% of the noisy training data), 5 seeds.

    nice -n 10 python -m benchmarks.refine --stage select --dataset breastmnist --seeds 0-4
    nice -n 10 python -m benchmarks.refine --stage floor --seeds 0-4
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from typing import Any

import numpy as np

from benchmarks.audit_detection import OUT, SUMMARY_DIR, parse_seeds
from benchmarks.harness import DataUnavailable, mean_ci, paired_difference, run_one
from lilaw_med.audit.detection import detection_quality
from lilaw_med.audit.scores import (
    consensus_prediction,
    early_epochs,
    find_label_issues,
    get_label_quality_scores,
)
from lilaw_med.training.refine import REFINE_RULE


def exclusion_mask(dynamics: dict[str, np.ndarray], labels: np.ndarray, rule: dict[str, Any]) -> np.ndarray:
    """bool (N,) items to exclude under an exclusion rule (see :data:`REFINE_RULE` for the keys)."""
    window = rule.get("max_epochs")
    if window is None and rule.get("epoch_fraction") is not None:
        window = early_epochs(dynamics["prob_label"].shape[0], rule["epoch_fraction"])
    q = get_label_quality_scores(dynamics, method=rule["method"], max_epochs=window)
    pred = consensus_prediction(dynamics["pred_label"], max_epochs=window)
    if rule["rule"] == "noise_rate":
        flags = find_label_issues(q, labels, rule="noise_rate", pred_labels=pred,
                                  noise_rate_method=rule["noise_rate_method"])
        if rule.get("fraction_of_estimate", 1.0) != 1.0:  # exclude only the lowest share of those flagged
            from lilaw_med.audit.scores import estimate_noise_rate

            rates = estimate_noise_rate(q, labels, method=rule["noise_rate_method"], per_class=True, pred_labels=pred)
            flags = find_label_issues(q, labels, rule="noise_rate", noise_rate=rates * rule["fraction_of_estimate"])
        return flags
    if rule["rule"] == "predicted_neq_given":
        return find_label_issues(q, labels, rule="predicted_neq_given", pred_labels=pred)
    return find_label_issues(q, labels, rule="threshold", threshold=rule["threshold"])


VARIANTS: dict[str, dict[str, Any]] = {
    "full_estimate": {**REFINE_RULE, "fraction_of_estimate": 1.0},
    "half_of_estimate": {**REFINE_RULE, "fraction_of_estimate": 0.5},  # the chosen REFINE_RULE
    "all_epochs_gmm": {"method": "mean_prob_label", "max_epochs": None, "rule": "noise_rate",
                       "noise_rate_method": "gmm"},
    "threshold_0.3": {**REFINE_RULE, "rule": "threshold", "threshold": 0.3},
}


def one_seed(dataset: str, noise: float, seed: int, epochs: int, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    t0 = time.perf_counter()
    first = run_one(dataset, "symmetric", noise, seed, "lilaw", epochs=epochs, record_dynamics=True)
    labels = first.noisy_labels[first.train_idx]
    truth = first.noise_mask
    res: dict[str, Any] = {"seed": seed, "single": {"final": first.final, "best": first.best}, "variants": {}}
    for name, rule in variants.items():
        excl = exclusion_mask(first.dynamics, labels, rule)
        keep = first.train_idx[~excl]
        second = run_one(dataset, "symmetric", noise, seed, "lilaw", epochs=epochs,
                         train_items=np.concatenate([keep, first.val_idx]), val_items=first.val_idx)
        res["variants"][name] = {
            "rule": rule, "n_excluded": int(excl.sum()), "n_train": int(len(first.train_idx)),
            "excluded_precision": float(truth[excl].mean()) if excl.any() else None,
            "excluded_recall": float(excl[truth].mean()) if truth.any() else None,
            "noise_left": float(truth[~excl].mean()) if (~excl).any() else None,
            "final": second.final, "best": second.best,
        }
    res["detection"] = detection_quality(
        get_label_quality_scores(first.dynamics, method=REFINE_RULE["method"],
                                 max_epochs=early_epochs(epochs, REFINE_RULE["epoch_fraction"])), truth)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    line = "  ".join(f"{n} {v['final']['auroc']:.4f} (-{v['n_excluded']})" for n, v in res["variants"].items())
    print(f"[refine {dataset} {noise}] seed {seed}: single {first.final['auroc']:.4f}  {line}  ({res['seconds']} s)",
          flush=True)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("select", "floor", "info"), required=True,
                        help="info: extra variants on any data, AFTER the floor, for information only (never to choose)")
    parser.add_argument("--dataset", default=None)
    parser.add_argument("--noise", type=float, default=0.4)
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"select stage: some of {list(VARIANTS)}")
    args = parser.parse_args(argv)
    dataset = args.dataset or ("breastmnist" if args.stage == "select" else "pneumoniamnist_balanced")
    variants = {k: VARIANTS[k] for k in args.variants.split(",")} if args.stage != "floor" else {"chosen": REFINE_RULE}
    runs = []
    try:
        for seed in parse_seeds(args.seeds):
            runs.append(one_seed(dataset, args.noise, seed, args.epochs, variants))
            OUT.mkdir(parents=True, exist_ok=True)
            (OUT / f"refine_{args.stage}_{dataset}_{args.noise}_seed{seed}.json").write_text(
                json.dumps(runs[-1], indent=1, default=float))
    except DataUnavailable as e:
        print(f"skipped: {e}")
        return 0
    single = [r["single"]["final"]["auroc"] for r in runs]
    table: dict[str, Any] = {"single_lilaw": {"final_auroc": mean_ci(single),
                                              "best_auroc": mean_ci([r["single"]["best"]["auroc"] for r in runs])}}
    print(f"\nRefine on {dataset}, {args.noise:.0%} symmetric noise, {len(runs)} seeds, {args.epochs} epochs "
          "(clean-test AUROC of the final model):")
    s = table["single_lilaw"]["final_auroc"]
    print(f"{'single LiLAW run':28s} {s['mean']:.4f} ({s['ci_low']:.4f}, {s['ci_high']:.4f})")
    for name in runs[0]["variants"]:
        after = [r["variants"][name]["final"]["auroc"] for r in runs]
        row = {"final_auroc": mean_ci(after), "best_auroc": mean_ci([r["variants"][name]["best"]["auroc"] for r in runs]),
               "paired_vs_single": paired_difference(after, single),
               "mean_excluded": float(np.mean([r["variants"][name]["n_excluded"] for r in runs])),
               "mean_excluded_precision": float(np.mean([r["variants"][name]["excluded_precision"] or 0 for r in runs])),
               "mean_noise_left": float(np.mean([r["variants"][name]["noise_left"] or 0 for r in runs]))}
        table[name] = row
        a, d = row["final_auroc"], row["paired_vs_single"]
        print(f"refine: {name:20s} {a['mean']:.4f} ({a['ci_low']:.4f}, {a['ci_high']:.4f})  vs single {d['mean']:+.4f} "
              f"({d['ci_low']:+.4f}, {d['ci_high']:+.4f}), wins {d['wins']}/{len(runs)}; excluded {row['mean_excluded']:.0f} "
              f"(precision {row['mean_excluded_precision']:.3f}, noise left {row['mean_noise_left']:.3f})")
    result: dict[str, Any] = {"stage": args.stage, "dataset": dataset, "noise": args.noise, "epochs": args.epochs,
                              "seeds": parse_seeds(args.seeds), "table": table,
                              "command": "python -m benchmarks.refine " + " ".join(sys.argv[1:] if argv is None else argv),
                              "machine": {"platform": platform.platform(), "python": platform.python_version()},
                              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.stage == "floor":
        chosen = table["chosen"]["final_auroc"]["mean"]
        result["floor_met"] = bool(chosen >= 0.88 and chosen > table["single_lilaw"]["final_auroc"]["mean"])
        print(f"floor (mean AUROC after refine >= 0.88 and above the single run's): "
              f"{'MET' if result['floor_met'] else 'MISSED'}")
    SUMMARY_DIR.mkdir(parents=True, exist_ok=True)
    (SUMMARY_DIR / f"refine_{args.stage}_{dataset}_{args.noise}.json").write_text(json.dumps(result, indent=1, default=float))
    (OUT / f"refine_{args.stage}_{dataset}_{args.noise}.json").write_text(json.dumps({**result, "runs": runs}, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
