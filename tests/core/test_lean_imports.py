"""Lean imports: the command line and the predict path do not load what they never use."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("pandas", "matplotlib", "sklearn", "scipy", "ignite", "sympy")


def _imported(code: str) -> set[str]:
    """Top-level packages of HEAVY (and monai) imported by ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=300)
    return set(out.stdout.split()) & {*HEAVY, "monai"}


def test_public_api_loads_on_first_use_and_the_parser_imports_no_monai() -> None:
    assert _imported("import lilaw_med.cli; lilaw_med.cli.build_parser()") == set()
    code = (
        "from lilaw_med import GCELoss, LiLAWLoss, LiLAWWeighting, SCELoss, lilaw_weights\n"
        "import lilaw_med; assert 'LiLAWHandler' in dir(lilaw_med) and 'LiLAWHandler' in lilaw_med.__all__\n"
    )
    assert _imported(code) == set()  # the math and the losses: no MONAI, no ignite
    assert {"monai", "ignite"} <= _imported("from lilaw_med import LiLAWHandler")


def test_lean_monai_import_refuses_the_unused_packages_only_while_monai_loads() -> None:
    code = (
        "from lilaw_med.lean import import_monai_lean\n"
        "assert import_monai_lean() and not import_monai_lean()  # once\n"
        "from monai.transforms import Resized\n"
        "from lilaw_med.data.transforms import build_transforms\n"
        "build_transforms('radiology_3d')\n"
    )
    assert _imported(code) == {"monai"}
    # afterwards every package imports as usual
    assert "sklearn" in _imported(code + "import sklearn.metrics\n")
