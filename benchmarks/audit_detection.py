"""Audit detection quality: how well the label-issue score finds injected wrong labels.

Two stages, in this order (issue 5):

1. ``--stage select`` chooses the score and the noise-rate estimate on OTHER data (BreastMNIST /
   RetinaMNIST with injected symmetric noise): every variant of
   :data:`lilaw_med.audit.scores.SCORE_METHODS` x ``skip_epochs`` in {0, 1} is scored by its
   detection AUROC against the injected truth, and every noise-rate estimator by its error.
2. ``--stage floor`` measures the chosen score on ``pneumoniamnist_balanced`` with 30% symmetric
   noise, 5 seeds of LiLAW: mean label-issue AUROC, against (a) the final model's self-confidence
   on the training items (one eval pass after training), and (b) confident learning's
   self-confidence on out-of-sample probabilities from 3-fold cross-validation (3 extra plain-CE
   trainings per seed on two folds each, predicting the third, as cleanlab asks to be used; the
   score ``p[y]`` is computed here: cleanlab is not needed). MedMNIST has no patient groups, so the
   folds are stratified by the given label only.

Run from the repository root (the CPU is shared: one at a time, niced)::

    nice -n 10 python -m benchmarks.audit_detection --stage select --dataset breastmnist --noise 0.3 --seeds 0-4
    nice -n 10 python -m benchmarks.audit_detection --stage floor --seeds 0-4

Results: printed tables, and JSON in ``benchmarks/out/audit/`` (per run) plus a summary
``benchmarks/audit_results/<stage>_<dataset>_<noise>.json`` (small, committed).
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.harness import DataUnavailable, load_dataset, mean_ci, run_one
from lilaw_med.audit.detection import detection_quality
from lilaw_med.audit.scores import (
    DEFAULT_EPOCH_FRACTION,
    DEFAULT_METHOD,
    DEFAULT_NOISE_RATE_METHOD,
    SCORE_METHODS,
    consensus_prediction,
    early_epochs,
    estimate_noise_rate,
    get_label_quality_scores,
)

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out" / "audit"
SUMMARY_DIR = REPO / "benchmarks" / "audit_results"

# the audit's defaults, chosen by --stage select on BreastMNIST/RetinaMNIST (see docs/audit.md)
CHOSEN_METHOD = DEFAULT_METHOD
CHOSEN_EPOCH_FRACTION = DEFAULT_EPOCH_FRACTION
CHOSEN_RATE_METHOD = DEFAULT_NOISE_RATE_METHOD

logger = logging.getLogger("benchmarks.audit_detection")


def parse_seeds(text: str) -> list[int]:
    """``"0-4"`` -> [0, 1, 2, 3, 4]; ``"0,3"`` -> [0, 3]."""
    out: list[int] = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out.extend(range(int(a), int(b) + 1))
        elif part:
            out.append(int(part))
    return out


def _binary_pseudo_probs(q: np.ndarray, labels: np.ndarray) -> np.ndarray | None:
    """(N, 2) probabilities with p[y] = q for two classes (None for more classes)."""
    if labels.max() > 1:
        return None
    p = np.empty((len(q), 2))
    p[np.arange(len(q)), labels] = q
    p[np.arange(len(q)), 1 - labels] = 1 - q
    return p


def score_variants(dynamics: dict[str, np.ndarray], labels: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """Detection AUROC/AP/P@k of every score variant, and every noise-rate estimate, for one run."""
    variants: dict[str, Any] = {}
    n_epochs = dynamics["prob_label"].shape[0]
    windows = sorted({w for w in (1, 2, 3, 5, None) if w is None or w < n_epochs}, key=lambda w: w or 10**6)
    for method in SCORE_METHODS:
        for skip in (0, 1):
            for window in windows:
                if method == "self_confidence" and (skip or window is not None):
                    continue
                q = get_label_quality_scores(dynamics, method=method, skip_epochs=skip, max_epochs=window)
                variants[f"{method}/skip{skip}/first{window or 'all'}"] = detection_quality(q, truth)
    rates: dict[str, float] = {}
    for window in windows:
        pred = consensus_prediction(dynamics["pred_label"], max_epochs=window)
        q = get_label_quality_scores(dynamics, method="mean_prob_label", max_epochs=window)
        tag = f"mean_prob_label/first{window or 'all'}"
        rates[f"disagreement({tag})"] = float(estimate_noise_rate(q, labels, pred_labels=pred))
        rates[f"below_half({tag})"] = float(estimate_noise_rate(q, labels))
        rates[f"gmm({tag})"] = float(estimate_noise_rate(q, labels, method="gmm"))
        pp = _binary_pseudo_probs(q, labels)
        if pp is not None:
            rates[f"confident_learning({tag})"] = float(
                estimate_noise_rate(q, labels, method="confident_learning", pred_probs=pp))
    return {"variants": variants, "noise_rate_estimates": rates, "true_noise_rate": float(truth.mean())}


def stage_select(dataset: str, noise: float, seeds: list[int], epochs: int) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        out = run_one(dataset, "symmetric", noise, seed, "lilaw", epochs=epochs, record_dynamics=True)
        labels = out.noisy_labels[out.train_idx]
        res = score_variants(out.dynamics, labels, out.noise_mask)
        res.update(seed=seed, seconds=round(time.perf_counter() - t0, 1), test_auroc=out.final["auroc"])
        runs.append(res)
        best = max(res["variants"].items(), key=lambda kv: kv[1]["auroc"])
        print(f"[select {dataset} {noise}] seed {seed}: best {best[0]} AUROC {best[1]['auroc']:.4f} "
              f"({res['seconds']} s)", flush=True)
    table = {}
    for name in runs[0]["variants"]:
        table[name] = {k: mean_ci([r["variants"][name][k] for r in runs])
                       for k in ("auroc", "average_precision", "precision_at_noise_count")}
    rate_table = {}
    for name in runs[0]["noise_rate_estimates"]:
        errs = [r["noise_rate_estimates"][name] - r["true_noise_rate"] for r in runs]
        rate_table[name] = {"mean_estimate": float(np.mean([r["noise_rate_estimates"][name] for r in runs])),
                            "mean_error": float(np.mean(errs)), "mean_abs_error": float(np.mean(np.abs(errs)))}
    print(f"\nScore variants on {dataset}, {noise:.0%} symmetric noise, LiLAW, {len(seeds)} seeds ({epochs} epochs):")
    print(f"{'variant':32s} {'AUROC':>14s} {'AP':>8s} {'P@noise':>8s}")
    for name, row in sorted(table.items(), key=lambda kv: -kv[1]["auroc"]["mean"]):
        a = row["auroc"]
        print(f"{name:32s} {a['mean']:.4f}±{a['std']:.4f} {row['average_precision']['mean']:8.4f} "
              f"{row['precision_at_noise_count']['mean']:8.4f}")
    print(f"\nNoise-rate estimates (true {noise:.3f}):")
    for name, row in sorted(rate_table.items(), key=lambda kv: kv[1]["mean_abs_error"]):
        print(f"{name:40s} estimate {row['mean_estimate']:.4f}  error {row['mean_error']:+.4f}  |error| {row['mean_abs_error']:.4f}")
    return {"stage": "select", "dataset": dataset, "noise": noise, "seeds": seeds, "epochs": epochs,
            "table": table, "noise_rate_table": rate_table, "runs": runs}


def _stratified_folds(labels: np.ndarray, k: int, seed: int) -> list[np.ndarray]:
    """Positions 0..N-1 split into ``k`` folds stratified by label."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), 7101]))
    folds: list[list[int]] = [[] for _ in range(k)]
    for c in np.unique(labels):
        members = rng.permutation(np.nonzero(labels == c)[0])
        for i, m in enumerate(members):
            folds[i % k].append(int(m))
    return [np.sort(np.array(f, dtype=np.int64)) for f in folds]


def stage_floor(dataset: str, noise: float, seeds: list[int], epochs: int, folds: int = 3) -> dict[str, Any]:
    runs = []
    for seed in seeds:
        t0 = time.perf_counter()
        n_all = len(load_dataset(dataset).train_labels)
        # predict_items: the final model's probabilities (eval mode) on every item, for its self-confidence
        out = run_one(dataset, "symmetric", noise, seed, "lilaw", epochs=epochs, record_dynamics=True,
                      predict_items=np.arange(n_all))
        labels = out.noisy_labels[out.train_idx]
        truth = out.noise_mask
        window = early_epochs(epochs, CHOSEN_EPOCH_FRACTION)
        q = get_label_quality_scores(out.dynamics, method=CHOSEN_METHOD, max_epochs=window)
        ours = detection_quality(q, truth)
        all_epochs = detection_quality(get_label_quality_scores(out.dynamics, method=CHOSEN_METHOD), truth)
        final_sc = out.predict_probs[out.train_idx, labels]
        final = detection_quality(final_sc, truth)
        # confident learning: out-of-sample probabilities from k-fold cross-validation (plain CE)
        oos = np.full((len(out.train_idx), int(labels.max()) + 1), np.nan)
        for f, fold in enumerate(_stratified_folds(labels, folds, seed)):
            cv = run_one(dataset, "symmetric", noise, seed, "ce", epochs=epochs,
                         train_items=out.train_idx, val_items=out.train_idx[fold], predict_items=out.train_idx[fold])
            oos[fold] = cv.predict_probs
            print(f"  seed {seed} fold {f}: CE trained on {len(cv.train_idx)} items", flush=True)
        cl_sc = oos[np.arange(len(labels)), labels]
        cl = detection_quality(cl_sc, truth)
        pred = consensus_prediction(out.dynamics["pred_label"], max_epochs=window)
        est = float(estimate_noise_rate(q, labels, method=CHOSEN_RATE_METHOD, pred_labels=pred))
        est_cl = float(estimate_noise_rate(cl_sc, labels, method="confident_learning", pred_probs=oos))
        res = {"seed": seed, "lilaw_score": ours, "lilaw_score_all_epochs (not chosen; for information)": all_epochs,
               "final_model_self_confidence": final,
               "cl_self_confidence_3fold": cl, "noise_rate_estimate": est, "noise_rate_estimate_cl": est_cl,
               "true_noise_rate": float(truth.mean()), "test_auroc": out.final["auroc"],
               "seconds": round(time.perf_counter() - t0, 1)}
        runs.append(res)
        print(f"[floor] seed {seed}: ours {ours['auroc']:.4f}  final-model SC {final['auroc']:.4f}  "
              f"CL 3-fold SC {cl['auroc']:.4f}  est. noise {est:.3f} ({res['seconds']} s)", flush=True)
        _save_json(OUT / f"floor_{dataset}_{noise}_seed{seed}.json", res)
    summary: dict[str, Any] = {}
    for key in ("lilaw_score", "lilaw_score_all_epochs (not chosen; for information)",
                "final_model_self_confidence", "cl_self_confidence_3fold"):
        summary[key] = {m: mean_ci([r[key][m] for r in runs]) for m in ("auroc", "average_precision", "precision_at_noise_count")}
    diffs = {k: mean_ci([r["lilaw_score"]["auroc"] - r[k]["auroc"] for r in runs])
             for k in ("final_model_self_confidence", "cl_self_confidence_3fold")}
    print(f"\nDetection of {noise:.0%} symmetric noise on {dataset}, {len(seeds)} seeds, {epochs} epochs:")
    print(f"{'score':54s} {'AUROC mean (95% CI)':>28s} {'AP':>8s} {'P@noise':>8s}")
    for key, row in summary.items():
        a = row["auroc"]
        print(f"{key:54s} {a['mean']:.4f} ({a['ci_low']:.4f}, {a['ci_high']:.4f}) "
              f"{row['average_precision']['mean']:8.4f} {row['precision_at_noise_count']['mean']:8.4f}")
    for k, d in diffs.items():
        print(f"paired AUROC difference ours - {k}: {d['mean']:+.4f} ({d['ci_low']:+.4f}, {d['ci_high']:+.4f})")
    floor_ok = summary["lilaw_score"]["auroc"]["mean"] >= 0.92 and all(d["mean"] > 0 for d in diffs.values())
    print(f"floor (mean AUROC >= 0.92 and above both baselines): {'MET' if floor_ok else 'MISSED'}")
    return {"stage": "floor", "dataset": dataset, "noise": noise, "seeds": seeds, "epochs": epochs,
            "score": {"method": CHOSEN_METHOD, "epoch_fraction": CHOSEN_EPOCH_FRACTION,
                      "noise_rate_method": CHOSEN_RATE_METHOD}, "summary": summary,
            "paired_differences": diffs, "floor_met": floor_ok, "runs": runs}


def markdown_tables() -> str:
    """The selection and floor tables of docs/audit.md, from the summaries in benchmarks/audit_results/."""
    lines: list[str] = []
    selects = sorted(SUMMARY_DIR.glob("select_*.json"))
    if selects:
        runs = [json.loads(p.read_text()) for p in selects]
        heads = [f"{r['dataset']} {r['noise']:.0%} ({len(r['seeds'])} seeds)" for r in runs]
        lines += ["| score variant (detection AUROC, mean ± sd) | " + " | ".join(heads) + " |",
                  "|---" * (len(runs) + 1) + "|"]
        names = sorted(runs[0]["table"], key=lambda n: -runs[0]["table"][n]["auroc"]["mean"])
        for name in names:
            cells = []
            for r in runs:
                a = r["table"].get(name, {}).get("auroc")
                cells.append(f"{a['mean']:.3f} ± {a['std']:.3f}" if a else "")
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines += ["", "| noise-rate estimate (mean; true rate in the heading) | "
                  + " | ".join(f"{r['dataset']} {r['noise']:.2f}" for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
        for name in sorted(runs[0]["noise_rate_table"]):
            cells = [f"{r['noise_rate_table'][name]['mean_estimate']:.3f}" if name in r["noise_rate_table"] else ""
                     for r in runs]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _save_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=1, default=float))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stage", choices=("select", "floor", "tables"), required=True)
    parser.add_argument("--dataset", default=None, help="npz stem (select: breastmnist; floor: pneumoniamnist_balanced)")
    parser.add_argument("--noise", type=float, default=0.3)
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.stage == "tables":
        print(markdown_tables())
        return 0
    dataset = args.dataset or ("breastmnist" if args.stage == "select" else "pneumoniamnist_balanced")
    seeds = parse_seeds(args.seeds)
    try:
        if args.stage == "select":
            result = stage_select(dataset, args.noise, seeds, args.epochs)
        else:
            result = stage_floor(dataset, args.noise, seeds, args.epochs)
    except DataUnavailable as e:
        print(f"skipped: {e}")
        return 0
    result["command"] = "python -m benchmarks.audit_detection " + " ".join(sys.argv[1:] if argv is None else argv)
    result["machine"] = {"platform": platform.platform(), "python": platform.python_version()}
    result["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    _save_json(OUT / f"{args.stage}_{dataset}_{args.noise}.json", result)
    small = {k: v for k, v in result.items() if k != "runs"}
    _save_json(SUMMARY_DIR / f"{args.stage}_{dataset}_{args.noise}.json", small)
    return 0


if __name__ == "__main__":
    sys.exit(main())
