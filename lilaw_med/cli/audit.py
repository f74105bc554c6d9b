"""``lilaw-med audit RUN_DIR [-o DIR]``: find and show the hard and mislabeled cases of a run."""

from __future__ import annotations

import argparse
import contextlib
import math
from typing import Any

from lilaw_med.cli import user_errors

__all__ = ["register"]


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _cmd_audit(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.audit.core import AuditOptions
    from lilaw_med.run.run_dir import RunDir
    from lilaw_med.workflows.audit import run_audit

    with user_errors():
        options = AuditOptions(
            window=args.window, count_window=args.count_window, window_fraction=args.window_fraction,
            method=args.method, adjust_pred_probs=args.adjust, folds=args.folds,
            fold_overrides=tuple(args.fold_set) if args.fold_set else AuditOptions().fold_overrides,
            fold_checkpoint=args.fold_checkpoint, noise_rate=args.noise_rate, review=args.review,
            ordinal=args.ordinal, top_k=args.top_k, thumbnails=not args.no_thumbnails,
            final_model_baseline=not args.no_final_model_baseline, include_identifying=args.include_identifying,
        )
        run = RunDir(args.run_dir)
        # the audit reads a finished run and writes RUN_DIR/audit (and crossfit_K): not while a training
        # process writes the folder, nor beside another audit of it (not a run folder: run_audit says so)
        with run.lock("lilaw-med audit") if run.exists() else contextlib.nullcontext():
            result = run_audit(args.run_dir, args.output, options)
    for split, info in result.summary["splits"].items():
        _print_split(split, info)
    if result.detection is not None:
        _print_detection(result.detection)
    for name, path in result.files.items():
        print(f"{name}: {path}")
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.audit.report import AuditFiles

    review = result.out_dir / AuditFiles.REVIEW
    where = f" --audit-dir {result.out_dir}" if args.output else ""
    print(f"next: lilaw-med review {args.run_dir}{where}   (writes {review}: decide on the flagged items)")
    return 0


def _print_split(split: str, info: dict[str, Any]) -> None:
    """One split's estimate, interval, windows, expected precision and warnings."""
    lo, hi = info["estimated_noise_rate_interval"]
    print(f"{split}: {info['n_items']} items, {info['n_label_issues']} suspected mislabels (estimated noise rate "
          f"{_fmt(info['estimated_noise_rate'])}, {100 * info['interval_confidence']:.0f}% interval "
          f"[{_fmt(lo)}, {_fmt(hi)}]); scoring window: epochs {info['window']['first_epoch']}-"
          f"{info['window']['last_epoch']} ({info['window']['rule']})"
          + (f"; count window: epochs {cw['first_epoch']}-{cw['last_epoch']} ({cw['rule']})"
             if (cw := info.get("count_window")) else ""))
    identified = "" if info["identifiable"] else "; NOT IDENTIFIABLE from this run: the interval is wide"
    budget = "" if info["review_budget"] is None else f" at the review budget of {info['review_budget']}"
    print(f"  interval: sampling error and the choice of count window{identified}; expected precision of the "
          f"{info['n_label_issues']} flagged{budget}: {_fmt(info['expected_precision'])}")
    for w in info.get("warnings", []):
        print(f"  warning: {w}")


def _print_detection(d: dict[str, Any]) -> None:
    """The detection figures against the noise sidecar's truth."""
    print(f"detection against the noise sidecar ({d['n_mislabeled']} of {d['n_items']} training labels wrong):")
    for name, m in d["scores"].items():
        print(f"  {name:30s} AUROC {_fmt(m['auroc'])}  AP {_fmt(m['average_precision'])}  "
              f"precision@noise {_fmt(m['precision_at_noise_count'])}")
    f = d["is_label_issue"]
    print(f"  is_label_issue: {f['n_flagged']} flagged, precision {_fmt(f['precision'])}, recall {_fmt(f['recall'])}, "
          f"count error {_fmt(f['count_error'])}")


def register(subparsers: Any) -> None:
    """Adds ``audit`` to the ``lilaw-med`` parser."""
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.audit.core import FOLD_CHECKPOINTS, AuditOptions
    from lilaw_med.audit.rank import SCORE_METHODS
    from lilaw_med.audit.window import WINDOW_RULES

    default = AuditOptions()
    p = subparsers.add_parser(
        "audit", help="rank a run's items by how likely their label is wrong; write CSV/JSON/HTML and exclude.csv",
        description="Audit a training run: one row per item (label score, rank, is_label_issue, difficulty, DICOM "
        "UIDs), the estimated share of wrong labels per class with an interval, a self-contained report.html, "
        "exclude.csv for `lilaw-med train --exclude`, and detection.json when the datalist's noise sidecar gives "
        "the true labels.\n\nexamples:\n  lilaw-med audit runs/my-run\n"
        "  lilaw-med audit runs/my-run --folds 4        # 4 extra trainings: out-of-fold probabilities\n"
        "  lilaw-med audit runs/my-run --review 200     # flag the 200 most suspicious items, with expected precision",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `lilaw-med train`")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write (default RUN_DIR/audit)")
    p.add_argument("--window", choices=WINDOW_RULES, default=default.window,
                   help="which epochs are scored (default %(default)s: up to the epoch of the lowest noisy "
                   "validation loss, where the network starts memorising wrong labels)")
    p.add_argument("--count-window", choices=WINDOW_RULES, default=default.count_window,
                   help="which epochs the per-class noise estimate reads (default %(default)s)")
    p.add_argument("--window-fraction", type=float, default=default.window_fraction,
                   help="share of epochs for the fraction rules, also the count window's earliest end "
                   "(default %(default)s)")
    p.add_argument("--method", choices=sorted(SCORE_METHODS), default=default.method,
                   help="label quality score (default %(default)s)")
    p.add_argument("--adjust", action="store_true", help="subtract the per-class confident thresholds before scoring")
    p.add_argument("--folds", type=int, default=0, metavar="K",
                   help="cross-fit: K extra trainings on K-1 folds each give out-of-fold probabilities, combined "
                   "with the run's (cached in RUN_DIR/crossfit_K; default 0: the run alone)")
    p.add_argument("--fold-set", action="append", metavar="KEY=VALUE",
                   help="config override for the fold trainings (default: lilaw.enabled=false, cleanlab's recipe; "
                   "--fold-set lilaw.enabled=true trains them with the run's own config)")
    p.add_argument("--fold-checkpoint", choices=FOLD_CHECKPOINTS, default=default.fold_checkpoint,
                   help="which checkpoint of each fold model predicts its held-out fold (default %(default)s: the best "
                   "by the noisy validation key metric, the one `lilaw-med predict` uses)")
    flag = p.add_mutually_exclusive_group()
    flag.add_argument("--noise-rate", type=float, default=None,
                      help="flag this share of each class (default: the per-class share estimated from the run)")
    flag.add_argument("--review", type=float, default=None, metavar="N|SHARE",
                      help="a review budget: flag the N lowest-scored items of each split (or this share of it, "
                      "e.g. 0.05) and report the expected precision at that budget")
    p.add_argument("--ordinal", action="store_true",
                   help="the classes are ordinal grades: the noise rate is reported as not identifiable from one run")
    p.add_argument("--top-k", type=int, default=default.top_k, help="thumbnails per class in the report (default %(default)s)")
    p.add_argument("--no-thumbnails", action="store_true", help="do not read images for the report")
    p.add_argument("--no-final-model-baseline", action="store_true",
                   help="skip the final model's self-confidence (an inference pass) in the detection figures")
    p.add_argument("--include-identifying", action="store_true",
                   help="add the DICOM PatientID column (off by default: no identifying tag is written)")
    p.set_defaults(func=_cmd_audit)
