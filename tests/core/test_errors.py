"""lilaw_med.errors: the user-input error type and the one-line rendering of any error."""

from __future__ import annotations

from lilaw_med.errors import InputError, one_line


def test_input_error_is_a_value_error() -> None:
    assert issubclass(InputError, ValueError)


def test_one_line_joins_lines_and_drops_a_header_ending_in_a_colon() -> None:
    e = ValueError("Unable to decode as exceptions were raised by all available plugins:\n  a: bad\n  b: worse.\n")
    assert one_line(e) == "a: bad; b: worse"
    assert one_line(ValueError("first line\nsecond  line")) == "first line; second line"


def test_one_line_names_the_type_of_an_empty_message_and_on_request() -> None:
    assert one_line(KeyError()) == "KeyError"
    assert one_line(KeyError("x"), with_type=True) == "KeyError: 'x'"


def test_one_line_cuts_at_the_limit() -> None:
    assert one_line("x" * 20, limit=10) == "xxxxxxx..."
    assert one_line("x" * 10, limit=10) == "x" * 10
