"""The ``lilaw-med`` command line: parses, validates, calls the library; no logic of its own.

Each command group lives in its own module exposing ``register(subparsers)``; a command's
handler returns an exit status. Errors meant for the user are raised as :class:`UserError`
and printed as one clear line, without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

__all__ = ["UserError", "build_parser", "main"]

# modules under lilaw_med.cli, each with register(subparsers)
_COMMAND_MODULES = ("train", "data", "audit", "bundle")


class UserError(Exception):
    """An error caused by the user's input (file, config, option); printed without a traceback."""


def build_parser() -> argparse.ArgumentParser:
    """Builds the argument parser with every registered sub-command."""
    from lilaw_med import __version__

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
        argv: the arguments (``sys.argv[1:]`` when ``None``).

    Returns:
        The exit status: 0 on success, 1 on a user error, 2 on a usage error.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
