"""The ``lilaw-med`` command line: parses, validates, calls the library; no logic of its own.

Each command group lives in its own module exposing ``register(subparsers)``; a command's
handler returns an exit status. Errors meant for the user are raised as :class:`UserError`
and printed as one clear line, without a traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys
from collections.abc import Iterator, Sequence

from lilaw_med import __version__
from lilaw_med.allocator import tune_malloc
from lilaw_med.errors import InputError
from lilaw_med.lean import import_monai_lean
from lilaw_med.quiet import warn_once_per_process

__all__ = ["UserError", "build_parser", "main", "user_errors"]

# modules under lilaw_med.cli, each with register(subparsers)
_COMMAND_MODULES = ("train", "data", "audit", "review", "bundle")


class UserError(Exception):
    """An error caused by the user's input (file, config, option); printed without a traceback."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns errors in the user's input into one-line :class:`UserError` messages.

    ``ConfigError`` becomes "invalid config: ..."; :class:`~lilaw_med.errors.InputError` (the library's
    type for a bad file, field, option, label or split), ``RunDirBusyError`` (a run folder another live
    process holds), ``FileNotFoundError``, ``FileExistsError`` and ``PermissionError`` their message; any
    other ``OSError`` (disk full, unwritable folder) "<type>: <message>". Anything else, a bare
    ``ValueError`` or ``KeyError`` included, is a bug and keeps its traceback.

    Example::

        with user_errors():
            run_audit(args.run_dir)

    Raises:
        UserError: for each of the errors above.
    """
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.run.config import ConfigError
    from lilaw_med.run.run_dir import RunDirBusyError

    try:
        yield
    except UserError:
        raise
    except ConfigError as e:
        raise UserError(f"invalid config: {e}") from None
    except (InputError, RunDirBusyError, FileNotFoundError, FileExistsError, PermissionError) as e:
        raise UserError(str(e)) from None
    except OSError as e:
        raise UserError(f"{type(e).__name__}: {e}") from None


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser with every registered sub-command."""

    parser = argparse.ArgumentParser(
        prog="lilaw-med",
        description="Train medical image classifiers that stay accurate on noisy labels (LiLAW), "
        "and audit hard and mislabeled cases.",
    )
    parser.add_argument("--version", action="version", version=f"lilaw-med {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        importlib.import_module(f"lilaw_med.cli.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lilaw-med`` console script.

    Args:
        argv: the arguments (``sys.argv[1:]`` when ``None``). ``None`` also means this process is the
            ``lilaw-med`` program: ``predict`` then imports MONAI lean (:mod:`lilaw_med.lean`).

    Returns:
        The exit status: 0 on success, 1 on a user error, 2 on a usage error.
    """

    tune_malloc()  # before any large allocation: no mmap/munmap of 3D activations every step
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )

    warn_once_per_process()  # a library warning repeated per file or per chunk: shown once
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    if argv is None and args.command == "predict":

        # a program that only predicts: MONAI without pandas, matplotlib, scikit-learn, scipy and
        # ignite (about 190 MB); not for a caller's interpreter, which may train afterwards
        import_monai_lean()
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        print(f"lilaw-med {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"lilaw-med {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
