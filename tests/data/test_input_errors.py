"""What the user gives data/ (a datalist, a file, a noise setting) fails as InputError, one line.

The command line prints an ``InputError`` as one line and lets any other exception keep its
traceback, so every error about the user's input raised in data/ must be one (issue 27.3).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lilaw_med.data.datalist import load_datalist
from lilaw_med.data.noise import add_noise
from lilaw_med.data.readers import read_header
from lilaw_med.data.readers.common import _one_line_errors
from lilaw_med.errors import InputError


def _datalist(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "dl.json"
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_a_bad_datalist_is_an_input_error_with_its_message(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"dl\.json: not valid JSON"):
        load_datalist(_datalist(tmp_path, "{not json"))
    with pytest.raises(InputError, match=r"dl\.json: the 'training' split is missing or empty\.$"):
        load_datalist(_datalist(tmp_path, {"training": []}))
    items = [{"image": f"{i}.png", "label": 5, "group": f"g{i}"} for i in range(4)]
    with pytest.raises(InputError, match=r"label 5 out of range: expected a class index in \[0, 1\]"):
        load_datalist(_datalist(tmp_path, {"class_names": ["a", "b"], "training": items}))


def test_a_bad_noise_setting_is_an_input_error() -> None:
    with pytest.raises(InputError, match=r"^rate must be in \[0, 1\] but is 1\.5\.$"):
        add_noise(np.array([0, 1, 0, 1]), "symmetric", 2, rate=1.5)
    with pytest.raises(InputError, match=r"^uniform noise needs a rate\.$"):
        add_noise(np.array([0, 1]), "uniform", 2)


def test_an_unreadable_image_is_an_input_error_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    with pytest.raises(InputError, match=r"broken\.png: ") as err:
        read_header(path)
    assert "\n" not in str(err.value)


def test_a_library_error_on_a_file_becomes_one_input_error_line() -> None:
    # a library's own ValueError (not ours) about a file it cannot handle: wrapped, on one line
    with pytest.raises(InputError) as err, _one_line_errors("x.dcm", "cannot read the image"):
        raise ValueError("Unable to decode as exceptions were raised by all available plugins:\n  a: bad\n  b: worse.")
    assert str(err.value) == "x.dcm: cannot read the image (ValueError: a: bad; b: worse)."
    # our own InputError passes unchanged
    with pytest.raises(InputError, match=r"^y\.png: as raised$"), _one_line_errors("x", "what"):
        raise InputError("y.png: as raised")
