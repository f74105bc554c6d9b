"""``lilaw-med audit RUN_DIR [-o DIR]``: find and show the hard and mislabeled cases of a run."""

from __future__ import annotations

import argparse
import math
from typing import Any

from lilaw_med.cli import UserError

__all__ = ["register"]


def _fmt(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.4f}"


def _cmd_audit(args: argparse.Namespace) -> int:
    from lilaw_med.audit.report import run_audit

    try:
        result = run_audit(
            args.run_dir, args.output, method=args.method, skip_epochs=args.skip_epochs, max_epochs=args.max_epochs,
            epoch_fraction=None if args.epoch_fraction <= 0 else args.epoch_fraction,
            rule=args.rule, noise_rate=args.noise_rate, noise_rate_method=args.noise_rate_method,
            threshold=args.threshold, top_k=args.top_k, thumbnails=not args.no_thumbnails,
            final_model_baseline=not args.no_final_model_baseline, include_identifying=args.include_identifying,
        )
    except (FileNotFoundError, ValueError, KeyError) as e:
        raise UserError(str(e).strip("'\"")) from None
    except OSError as e:
        raise UserError(f"{type(e).__name__}: {e}") from None
    for split, info in result.summary["splits"].items():
        print(f"{split}: {info['n_items']} items, {info['n_label_issues']} suspected mislabels "
              f"(estimated noise rate {_fmt(info['estimated_noise_rate'])})")
        for w in info.get("warnings", []):
            print(f"  warning: {w}")
    if result.detection is not None:
        d = result.detection
        print(f"detection against the noise sidecar ({d['n_mislabeled']} of {d['n_items']} training labels wrong):")
        for name, m in d["scores"].items():
            print(f"  {name:30s} AUROC {_fmt(m['auroc'])}  AP {_fmt(m['average_precision'])}  "
                  f"precision@noise {_fmt(m['precision_at_noise_count'])}")
    for name, path in result.files.items():
        print(f"{name}: {path}")
    return 0


def register(subparsers: Any) -> None:
    """Adds ``audit`` to the ``lilaw-med`` parser."""
    from lilaw_med.audit.scores import (
        DEFAULT_EPOCH_FRACTION,
        DEFAULT_METHOD,
        DEFAULT_NOISE_RATE_METHOD,
        DEFAULT_RULE,
        ISSUE_RULES,
        NOISE_RATE_METHODS,
        SCORE_METHODS,
    )

    p = subparsers.add_parser(
        "audit", help="rank a run's items by how likely their label is wrong; write CSV/JSON/HTML and exclude.csv",
        description="Audit a training run: one row per item (label score, rank, is_label_issue, difficulty, DICOM "
        "UIDs), a self-contained report.html, exclude.csv for `lilaw-med train --exclude`, and detection.json "
        "when the datalist's noise sidecar gives the true labels.\n\nexample:\n  lilaw-med audit runs/my-run",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by `lilaw-med train`")
    p.add_argument("-o", "--output", metavar="DIR", help="where to write (default RUN_DIR/audit)")
    p.add_argument("--method", choices=SCORE_METHODS, default=DEFAULT_METHOD, help="label quality score (default %(default)s)")
    p.add_argument("--skip-epochs", type=int, default=0, help="leave out the first epochs of the dynamics")
    p.add_argument("--epoch-fraction", type=float, default=DEFAULT_EPOCH_FRACTION,
                   help="score the first ceil(F * epochs) epochs, before wrong labels are memorised "
                   "(default %(default)s; 0 uses every epoch)")
    p.add_argument("--max-epochs", type=int, default=None, help="score at most this many epochs (overrides --epoch-fraction)")
    p.add_argument("--rule", choices=ISSUE_RULES, default=DEFAULT_RULE, help="is_label_issue rule (default %(default)s)")
    p.add_argument("--noise-rate", type=float, default=None,
                   help="share of wrong labels for the noise_rate rule (default: estimated per class from the run)")
    # confident_learning needs class probabilities the dynamics do not hold
    rate_methods = [m for m in NOISE_RATE_METHODS if m != "confident_learning"]
    p.add_argument("--noise-rate-method", choices=rate_methods, default=DEFAULT_NOISE_RATE_METHOD,
                   help="how the noise rate is estimated (default %(default)s)")
    p.add_argument("--threshold", type=float, default=None, help="score threshold for the threshold rule")
    p.add_argument("--top-k", type=int, default=8, help="thumbnails per class in the report (default %(default)s)")
    p.add_argument("--no-thumbnails", action="store_true", help="do not read images for the report")
    p.add_argument("--no-final-model-baseline", action="store_true",
                   help="skip the final model's self-confidence (an inference pass) in the detection figures")
    p.add_argument("--include-identifying", action="store_true",
                   help="add the DICOM PatientID column (off by default: no identifying tag is written)")
    p.set_defaults(func=_cmd_audit)
