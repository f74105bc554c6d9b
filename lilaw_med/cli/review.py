"""``lilaw-med review RUN_DIR``: the page where a reader decides on the audit's suspected labels;
``lilaw-med review --merge A.csv B.csv -o merged.csv``: the decisions of several readers, combined."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
import webbrowser
from pathlib import Path
from typing import Any

from lilaw_med.cli import UserError, user_errors

__all__ = ["register"]

logger = logging.getLogger(__name__)

# lilaw_med.audit.review.DEFAULT_IMAGE_SIZE (a test keeps them equal): importing that module to build
# the parser would import torch (about 1.5 s for `lilaw-med --help`)
_IMAGE_SIZE = 512
_MAX_ITEMS = 1000  # lilaw_med.audit.review.DEFAULT_MAX_ITEMS, likewise


def _open_in_browser(path: Path) -> bool:
    """Opens the page where a person sits at a browser: an interactive terminal, not CI, a graphical
    session (a console browser such as lynx cannot run the page), a browser found."""

    if not sys.stdout.isatty() or os.environ.get("CI"):
        return False
    if sys.platform.startswith(("linux", "freebsd", "openbsd")) and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False
    try:
        return webbrowser.get().open(path.absolute().as_uri())
    except webbrowser.Error:
        return False


def _audit_first(run_dir: str) -> None:
    """Runs the audit with its defaults (what ``lilaw-med audit RUN_DIR`` does) for a run without one."""
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.run.run_dir import RunDir
    from lilaw_med.workflows.audit import run_audit

    logger.info("%s has no audit yet: auditing it with the defaults of `lilaw-med audit` first.", run_dir)
    run = RunDir(run_dir)
    with run.lock("lilaw-med review") if run.exists() else contextlib.nullcontext():
        run_audit(run_dir)


def _cmd_merge(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.audit.review import merge_decisions, write_decisions

    if not args.output:
        raise UserError("--merge needs -o MERGED.csv (where to write the combined decisions).")
    out = Path(args.output)
    with user_errors():
        result = merge_decisions(args.merge)
        write_decisions(out, result.rows)
        print(f"merged decisions of {len(args.merge)} readers: {len(result.rows)} items -> {out}")
        if result.n_disagreed:
            listed = out.with_name(out.stem + "_disagreements.csv")
            write_decisions(listed, result.disagreements, ("id", "reviewer", "decision", "new_label", "note", "time", "file"))
            logger.warning("the readers disagree on %d item(s): they are left out of %s and listed, one row per "
                           "reader, in %s; settle them and merge again.", result.n_disagreed, out, listed)
            print(f"disagreements: {result.n_disagreed} items -> {listed}")
    return 0


def _cmd_review(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.audit.review import write_review_page
    from lilaw_med.run.run_dir import RunDir

    if args.merge:
        return _cmd_merge(args)
    if not args.run_dir:
        raise UserError("give a RUN_DIR (or --merge FILE FILE ... -o MERGED.csv).")
    with user_errors():
        audit_dir = Path(args.audit_dir) if args.audit_dir else RunDir(args.run_dir).root / RunDir.AUDIT
        _audit_unless_audited(args, audit_dir)
        path = write_review_page(
            args.run_dir, audit_dir, args.output, include=args.include or (), include_classes=args.include_class or (),
            include_splits=args.split or (), hard=not args.no_hard, image_size=args.image_size,
            max_items=args.max_items or None,
        )
    print(f"review page: {path}")
    print("decide with the keyboard (K keep, 1-9 relabel, X exclude, S skip, U undo), then 'Save decisions' and "
          "train with: lilaw-med train ... --relabel DECISIONS.csv --exclude DECISIONS.csv")
    if not args.no_open and not _open_in_browser(path):
        print(f"open it in a browser: {path.absolute().as_uri()}")
    return 0


def _audit_unless_audited(args: argparse.Namespace, audit_dir: Path) -> None:
    """Audits the run first when ``audit_dir`` holds no audit at all; a partial one (one file missing)
    is an error that write_review_page raises naming the file, as re-auditing would replace the
    user's audit."""
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.audit.report import AuditFiles
    from lilaw_med.run.run_dir import RunDir

    if any((audit_dir / name).is_file() for name in (AuditFiles.JSON, AuditFiles.CSV)):
        return
    if args.audit_dir:
        raise UserError(f"--audit-dir {args.audit_dir}: no audit there ({AuditFiles.JSON} and "
                        f"{AuditFiles.CSV} are missing).")
    if not RunDir(args.run_dir).datalist.is_file():
        raise UserError(f"{args.run_dir} is not a run folder ({RunDir.DATALIST} is missing).")
    _audit_first(args.run_dir)


def register(subparsers: Any) -> None:
    """Adds ``review`` to the ``lilaw-med`` parser."""
    p = subparsers.add_parser(
        "review", help="a page to decide on the audit's suspected labels (keep, relabel, exclude); merge readers' decisions",
        description="Write RUN_DIR/audit/review.html, one self-contained page (no server, no network) where a reader "
        "keeps, relabels or excludes the audit's flagged items, then its hard ones, by keyboard or mouse. Progress "
        "is kept in the browser; 'Save decisions' downloads one CSV that `lilaw-med train --relabel` and --exclude "
        "read as it is. Runs the audit first when the run has none.\n\nexamples:\n"
        "  lilaw-med review runs/my-run\n"
        "  lilaw-med review runs/my-run --include case-017 case-102 --no-open\n"
        "  lilaw-med review --merge ann.csv bob.csv -o decisions.csv   # disagreements listed, not resolved\n"
        "  lilaw-med train --config cfg.yaml --relabel decisions.csv --exclude decisions.csv",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="?", help="a run folder written by `lilaw-med train`")
    p.add_argument("-o", "--output", metavar="PATH",
                   help="the page (default: review.html in the audit folder); with --merge, the merged CSV")
    p.add_argument("--audit-dir", metavar="DIR", help="the run's audit, when written elsewhere with `audit -o` "
                   "(default RUN_DIR/audit)")
    p.add_argument("--include", nargs="+", metavar="ID", help="also queue these item ids")
    p.add_argument("--include-class", nargs="+", metavar="CLASS", help="also queue every item of these classes (names or indices)")
    p.add_argument("--split", nargs="+", choices=("training", "validation", "test"),
                   help="also queue every item of these splits")
    p.add_argument("--no-hard", action="store_true", help="queue only the flagged items (and those asked for), "
                   "not the audit's other hard ones")
    p.add_argument("--image-size", type=int, default=_IMAGE_SIZE, metavar="PX",
                   help="longest side of an embedded image in pixels (default %(default)s)")
    p.add_argument("--max-items", type=int, default=_MAX_ITEMS, metavar="N",
                   help=f"the longest queue: the flagged items by rank first (default {_MAX_ITEMS}; 0: all)")
    p.add_argument("--no-open", action="store_true", help="do not open the page in a browser")
    p.add_argument("--merge", nargs="+", metavar="CSV", help="combine the decision files of several readers into -o")
    p.set_defaults(func=_cmd_review)
