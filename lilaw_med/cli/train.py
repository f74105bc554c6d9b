"""``lilaw-med train | evaluate | predict | init-config``: parse, validate, call the library, print.

Errors in the user's input (``InputError``, ``ConfigError``, ``FileNotFoundError``, ``OSError``) become
:class:`~lilaw_med.cli.UserError`, printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from lilaw_med.cli import UserError, user_errors
from lilaw_med.data.presets import PRESETS, find_preset

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "  n/a"
    return f"{value:.{digits}f}"


def format_summary(summary: Mapping[str, Any]) -> str:
    """The one-screen summary printed at the end of ``train`` (and by ``evaluate``)."""
    lines = []
    lilaw = summary.get("lilaw", {})
    status = "on" if summary.get("lilaw_enabled") else "off (baseline)"
    lines.append(
        f"LiLAW {status}: alpha {_fmt(lilaw.get('alpha'))}  beta {_fmt(lilaw.get('beta'))}  "
        f"delta {_fmt(lilaw.get('delta'))}  ({lilaw.get('meta_steps', 0)} meta steps)"
    )
    n = summary.get("num_items", {})
    lines.append(
        f"{summary.get('network')} on {summary.get('device')}, {summary.get('epochs')} epochs, "
        f"{summary.get('iterations')} iterations, {summary.get('seconds')} s; items: "
        f"{n.get('training', 0)} training / {n.get('validation', 0)} validation / {n.get('test', 0)} test"
    )
    key = summary.get("key_metric")
    lines.append(f"best epoch {summary.get('best_epoch')} by validation {key} = {_fmt(summary.get('best_val_metric'))}")
    lines.append(f"{'':30}{'accuracy':>9}{'bal.acc':>9}{'AUROC':>8}{'ECE':>7}{'loss':>8}")
    for which in ("best", "final"):
        for split, metrics in summary.get(which, {}).items():
            label = f"{which} model, {split.replace('_', ' ')}"
            lines.append(
                f"{label:30}{_fmt(metrics.get('accuracy')):>9}{_fmt(metrics.get('balanced_accuracy')):>9}"
                f"{_fmt(metrics.get('auroc')):>8}{_fmt(metrics.get('ece')):>7}{_fmt(metrics.get('loss')):>8}"
            )
    from lilaw_med.run.summary import RunSummary  # the run layer loads torch (1-2 s): not for the parser

    cal = RunSummary(summary).calibration("best")
    if cal and cal.get("method") not in (None, "none"):
        fitted = [f"temperature {_fmt(cal.get('temperature'))}"]
        if cal.get("threshold") is not None:
            fitted.append(f"threshold {_fmt(cal['threshold'])}")
        if cal.get("prior_strength") is not None:
            fitted.append(f"prior strength {_fmt(cal['prior_strength'])}")
        lines.append(f"calibration ({cal['method']}, fitted on the noisy validation split): " + ", ".join(fitted))
    lines.append("(validation labels are as noisy as the training labels; test labels are as given)")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ train
def _quiet_engines(args: argparse.Namespace) -> None:
    """ignite logs every engine run at INFO; keep that for --verbose only."""
    if not getattr(args, "verbose", False):
        logging.getLogger("ignite").setLevel(logging.WARNING)


def _train_overrides(args: argparse.Namespace) -> list[str]:
    """The ``--set`` overrides, plus those the dedicated flags stand for."""
    overrides = list(args.set or [])
    for flag, key in ((args.exclude, "data.exclude"), (args.relabel, "data.relabel")):
        if flag:
            overrides.append(f"{key}={Path(flag).absolute()}")
    if args.skip_bad:
        overrides.append("data.skip_bad=true")
    if args.device:
        overrides.append(f"train.device={args.device}")
    if args.no_progress:
        overrides.append("train.progress=false")
    return overrides


def _train_config(args: argparse.Namespace) -> tuple[dict[str, Any], Path | None]:
    """``(config, run folder)`` of ``train``: the run's own config to resume, else ``--config``."""
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.run.config import load_config
    from lilaw_med.run.run_dir import RunDir

    overrides = _train_overrides(args)
    if args.resume:
        run_dir = RunDir(args.resume)
        if not run_dir.exists():
            raise UserError(f"--resume {args.resume}: not a run folder (no {RunDir.CONFIG}).")
        if args.config:
            logger.warning("--resume uses the run's own config.yaml; --config %s is ignored.", args.config)
        return load_config(run_dir.config, overrides), run_dir.root
    if not args.config:
        raise UserError("--config is required (or --resume RUN_DIR); e.g. --config configs/radiology_2d.yaml")
    return load_config(args.config, overrides), Path(args.output) if args.output else None


def _refine(config: Mapping[str, Any], output: Path | None, args: argparse.Namespace) -> Any:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.training.distributed import torchrun_env_present
    from lilaw_med.workflows.refine import run_refine

    if args.resume:
        raise UserError("--refine cannot be combined with --resume.")
    if torchrun_env_present():  # distributed: refine is single-process for now
        raise UserError(
            "--refine does not run under torchrun; train under torchrun, then run `lilaw-med audit RUN_DIR` "
            "and train again under torchrun with --exclude RUN_DIR/audit/exclude.csv."
        )
    kwargs: dict[str, Any] = {}
    if args.refine_validation is not None:
        kwargs["exclude_validation"] = args.refine_validation == "exclude"
    if args.refine_flagged is not None:
        kwargs["flagged"] = args.refine_flagged
    return run_refine(config, output, **kwargs)


def _cmd_train(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.training.run import run_training

    _quiet_engines(args)
    with user_errors():
        if (args.refine_validation is not None or args.refine_flagged is not None) and not args.refine:
            raise UserError("--refine-validation and --refine-flagged apply to --refine only.")
        config, output = _train_config(args)
        if args.refine:
            result = _refine(config, output, args)
        else:
            result = run_training(config, output, resume=bool(args.resume))
            if result.rank != 0:  # distributed (torchrun): rank 0 alone reports
                return 0
    summary = getattr(result, "summary", None) or {}
    run_path = getattr(result, "run_dir", output)
    if summary:
        print(format_summary(summary))
    print(f"run folder: {run_path}")
    print(f"next: lilaw-med audit {run_path}   |   lilaw-med evaluate {run_path}   |   "
          f"lilaw-med predict {run_path} IMAGE... -o preds.csv")
    return 0


# ------------------------------------------------------------------------------------------ evaluate
def _cmd_evaluate(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.run.run_dir import RunDir, RunDirBusyError
    from lilaw_med.workflows.evaluate import evaluate_run

    _quiet_engines(args)
    run = RunDir(args.run_dir)
    out = Path(args.output) if args.output else run.evaluation
    # a report written into the run folder is written under its lock, as train and audit write it: never
    # beside a live training process (whose start-up removes temporary files there) or another evaluate;
    # a report written elsewhere only reads the run (its model files are replaced atomically)
    inside = run.exists() and out.absolute().parent.resolve().is_relative_to(run.root.absolute().resolve())
    with user_errors():
        try:
            lock = run.lock("lilaw-med evaluate") if inside else contextlib.nullcontext()
        except RunDirBusyError as e:
            raise RunDirBusyError(f"{e} Or write the report elsewhere: --output PATH.") from None
        with lock:
            report = evaluate_run(
                args.run_dir, datalist=args.datalist, splits=args.split, which=args.checkpoint, device=args.device,
                calibrated=not args.uncalibrated,
            )
            RunDir(out.parent).write_json(out.name, report)
    print(f"model: {report['checkpoint']} (epoch {report.get('epoch')})")
    print(f"{'split':12}{'n':>6}{'accuracy':>10}{'bal.acc':>9}{'AUROC':>8}{'ECE':>7}{'loss':>8}")
    for split, m in report["splits"].items():
        print(f"{split:12}{m['n']:>6}{_fmt(m['accuracy']):>10}{_fmt(m['balanced_accuracy']):>9}"
              f"{_fmt(m['auroc']):>8}{_fmt(m['ece']):>7}{_fmt(m['loss']):>8}")
        for name, pc in m.get("per_class", {}).items():
            print(f"    class {name}: precision {_fmt(pc['precision'])}  recall {_fmt(pc['recall'])}  n={pc['support']}")
        if m.get("confusion_matrix"):
            print(f"    confusion matrix (rows = given label): {m['confusion_matrix']}")
    print(f"written: {out}")
    return 0


# ------------------------------------------------------------------------------------------ predict
def _cmd_predict(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.workflows.predict import collect_inputs, predict_inputs

    _quiet_engines(args)
    with user_errors():
        inputs = collect_inputs(args.inputs, list_file=args.list, folder=args.folder)
        if not inputs:
            raise UserError("no input: give image paths or patterns, --list FILE or --folder DIR.")
        result = predict_inputs(
            args.run_dir, inputs, args.output, which=args.checkpoint, device=args.device,
            batch_size=args.batch_size, calibrated=not args.uncalibrated, slide_aggregation=args.slide_aggregation,
            tissue_threshold=args.tissue_threshold, num_workers=args.num_workers,
        )
    failed = result.get("failed", [])
    print(f"{result['n'] - len(failed)} prediction(s) and {len(failed)} error(s) written to {result['output']}")
    for path in result.get("slide_maps", []):
        print(f"slide probability map: {path}")
    if not failed:
        return 0
    shown = 10  # a batch of thousands of bad files must not flood the terminal: the CSV has them all
    for path, error in failed[:shown]:
        print(f"lilaw-med predict: {error if path in error else f'{path}: {error}'}", file=sys.stderr)
    if len(failed) > shown:
        print(f"lilaw-med predict: ... and {len(failed) - shown} more", file=sys.stderr)
    print(f"lilaw-med predict: error: {len(failed)} of {result['n']} input(s) could not be predicted; their rows in "
          f"{result['output']} give the reason in the 'error' column.", file=sys.stderr)
    return 1


# ------------------------------------------------------------------------------------------ init-config
def _init_config_names() -> list[str]:
    """What ``init-config`` accepts: every preset's config name (``pathology_patch``), and its preset name."""
    names = [spec.config_name for spec in PRESETS.values()]
    return names + [name for name in PRESETS if name not in names]


def _cmd_init_config(args: argparse.Namespace) -> int:
    spec = find_preset(args.preset)
    if spec is None:
        raise UserError(f"unknown preset {args.preset!r}; choose one of {sorted(_init_config_names())}.")
    text = spec.config_resource().read_text(encoding="utf-8")
    out = Path(args.output)
    if out.exists() and not args.force:
        raise UserError(f"{out} exists; use --force to overwrite it.")
    with user_errors():
        # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
        from lilaw_med.utils import atomic_write

        atomic_write(out, text)
    print(f"wrote {out} (preset {args.preset}); run: lilaw-med train --config {out}")
    return 0


# ------------------------------------------------------------------------------------------ parser
def _add(sub: Any, name: str, func: Callable[[argparse.Namespace], int], help: str, description: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(func=func)
    return p


def register(subparsers: Any) -> None:
    """Adds ``train``, ``evaluate``, ``predict`` and ``init-config`` to the ``lilaw-med`` parser."""
    p = _add(
        subparsers, "train", _cmd_train, "train a classifier with LiLAW (or the plain baseline) from a YAML config",
        "Train a classifier from a YAML config and write a run folder (config, datalist, metrics, plots,\n"
        "checkpoints, training dynamics, summary).\n\n"
        "examples:\n"
        "  lilaw-med train --config configs/radiology_2d.yaml\n"
        "  lilaw-med train --config my.yaml --set train.epochs=5 --set lilaw.enabled=false -o runs/baseline\n"
        "  lilaw-med train --resume runs/radiology_2d-20260101-120000",
    )
    p.add_argument("--config", "-c", metavar="YAML", help="the config file (see `lilaw-med init-config`)")
    p.add_argument(
        "--set", "-s", action="append", metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.epochs=3 --set data.options.spatial_size=[32,32] "
        "(values are read as YAML; repeatable)",
    )
    p.add_argument("--output", "-o", metavar="RUN_DIR", help="the run folder (default: output.dir/PRESET-TIMESTAMP)")
    p.add_argument("--device", help="auto (default: CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an interrupted run from its newest valid checkpoint")
    p.add_argument("--skip-bad", action="store_true",
                   help="drop items the pre-flight check rejects (listed in RUN_DIR/rejected_items.csv) instead of stopping")
    p.add_argument("--exclude", metavar="CSV", help="exclude the item ids listed in this CSV (e.g. the audit's exclude.csv; a review decision "
                   "file: its exclude rows)")
    p.add_argument("--relabel", metavar="CSV", help="relabel items: a CSV of item ids and new labels (a review decision file: its relabel rows)")
    p.add_argument("--refine", action="store_true",
                   help="train, audit, exclude suspected mislabels by the documented rule, and retrain")
    p.add_argument("--refine-validation", choices=("keep", "exclude"), default=None,
                   help="with --refine: keep the validation items the audit flags, or leave them out of the "
                   "retraining's validation split too (default: the library's, see docs/audit.md section 4)")
    p.add_argument("--refine-flagged", choices=("exclude", "relabel"), default=None,
                   help="with --refine: leave the flagged training items out of the retraining, or keep them with "
                   "the audit's predicted class as their label (default: the library's, see docs/audit.md section 4)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    p = _add(
        subparsers, "evaluate", _cmd_evaluate, "evaluate a trained run on its splits or on another datalist",
        "Evaluate a run's model (accuracy, balanced accuracy, AUROC, per-class precision/recall,\n"
        "confusion matrix, ECE) on its validation and test splits or on the items of --datalist;\n"
        "writes RUN_DIR/evaluation.json (or --output).",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    p.add_argument("--datalist", metavar="PATH", help="evaluate on this datalist (all its labelled items) instead")
    p.add_argument("--split", choices=("validation", "test", "all"), default="all", help="which splits (default: all)")
    p.add_argument("--checkpoint", choices=("best", "final"), default="best", help="which model (default: best)")
    p.add_argument("--uncalibrated", action="store_true", help="ignore the calibration fitted during training")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--output", "-o", metavar="JSON", help="where to write the report (default RUN_DIR/evaluation.json)")

    p = _add(
        subparsers, "predict", _cmd_predict, "per-image class probabilities for DICOM, NIfTI, PNG/TIFF or whole slides",
        "Write class probabilities for each input to a CSV (id, path, predicted class, one column per\n"
        "class). Inputs: DICOM files, DICOM series folders (one 3D volume), NIfTI, PNG/JPEG/TIFF.\n"
        "With a pathology run, a whole-slide image is tiled on its tissue (tissue mask, patch grid):\n"
        "a patch probability map is written beside the CSV and the slide gets a score by\n"
        "--slide-aggregation (mean: mean patch probability; max; top10: mean of the top 10%).\n"
        "Rows are written as they are made to CSV.partial, renamed to CSV at the end.\n\n"
        "examples:\n"
        "  lilaw-med predict RUN_DIR scan1.dcm scan2.dcm -o preds.csv\n"
        "  lilaw-med predict RUN_DIR --list paths.txt -o preds.csv\n"
        "  lilaw-med predict RUN_DIR --folder scans/ -o preds.csv\n"
        "  lilaw-med predict RUN_DIR 'scans/**/*.png' -o preds.csv",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="the run folder")
    p.add_argument("inputs", metavar="INPUT", nargs="*",
                   help="image files, DICOM series folders, or quoted glob patterns ('scans/**/*.png')")
    p.add_argument("--list", metavar="FILE", help="a text file of input paths, one a line (relative to its folder)")
    p.add_argument("--folder", metavar="DIR", help="predict every image file under this folder (recursive)")
    p.add_argument("--num-workers", type=int, default=None, metavar="N",
                   help="loader processes that read the images (default: one per core less one, at most 8)")
    p.add_argument("--output", "-o", required=True, metavar="CSV", help="the predictions CSV")
    p.add_argument("--checkpoint", choices=("best", "final"), default="best", help="which model (default: best)")
    p.add_argument("--uncalibrated", action="store_true", help="ignore the calibration fitted during training")
    p.add_argument("--device", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=32, help="inference batch size (default 32)")
    p.add_argument("--slide-aggregation", choices=("mean", "max", "top10"), default="top10",
                   help="slide score from patch probabilities (default top10)")
    p.add_argument("--tissue-threshold", type=float, default=0.5,
                   help="minimum tissue fraction of a slide patch to be scored (default 0.5)")

    p = _add(
        subparsers, "init-config", _cmd_init_config, "write a preset's documented YAML config to edit",
        "Copy the documented config of a preset (shipped inside the package) to a file.\n"
        f"presets: {', '.join(spec.config_name for spec in PRESETS.values())}",
    )
    p.add_argument("preset", metavar="PRESET", help=", ".join(spec.config_name for spec in PRESETS.values()))
    p.add_argument("--output", "-o", required=True, metavar="YAML", help="the file to write")
    p.add_argument("--force", action="store_true", help="overwrite an existing file")

