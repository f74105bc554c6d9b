"""The package's error type for what the user gave, and one way to put any error on one line.

``InputError`` marks an error in the user's input (a file, a config field, an option, a label,
a split): the message names what is wrong, and the command line prints it as one line without a
traceback. Any other exception is a bug and keeps its traceback. It subclasses ``ValueError``, so
code that catches ``ValueError`` keeps working.

Example::

    from lilaw_med.errors import InputError, one_line

    raise InputError(f"{path}: label 7 is out of range [0, 4].")
    message = one_line(exc)  # "Unable to decode: plugin a: reason; plugin b: reason"
"""

from __future__ import annotations

__all__ = ["InputError", "one_line"]


class InputError(ValueError):
    """An error in the user's input; its message names the file or field and what is wrong."""


def one_line(error: BaseException | str, limit: int = 500, with_type: bool = False) -> str:
    """An exception's message on one line, at most ``limit`` characters.

    Several lines join with ``"; "``; a first line ending in ``":"`` (a header such as pydicom's
    "Unable to decode as exceptions were raised by all available plugins:") is dropped, so the
    reasons that follow are the message. An empty message gives the exception's type name.

    Args:
        error: the exception, or its text.
        limit: the longest line returned (longer ones end in "...").
        with_type: prefix the type name (``"KeyError: ..."``), for errors whose message alone is
            not self-explanatory.

    Returns:
        The line.
    """
    name = type(error).__name__ if isinstance(error, BaseException) else ""
    lines = _message_lines(str(error))
    line = "; ".join(lines) or name
    if with_type and name and lines:
        line = f"{name}: {line}"
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _message_lines(text: str) -> list[str]:
    """The message's non-empty lines, whitespace collapsed, without a trailing "." or a header line."""
    lines = [" ".join(line.split()).rstrip(".") for line in text.strip().splitlines() if line.strip()]
    return lines[1:] if len(lines) > 1 and lines[0].endswith(":") else lines
