"""Lean imports for a process that only predicts: MONAI without the packages it loads but never uses there.

Any MONAI import runs ``monai/__init__.py``, which imports every MONAI sub-package except
``handlers``, ``bundle`` and ``fl``, and MONAI's ``optional_import`` is eager (it imports the
package, then checks its version). So ``from monai.data import Dataset`` alone loads

=============  =====================================================  ======================
package        imported by (at module level)                          used by ``predict``
=============  =====================================================  ======================
pandas         ``monai.utils.profiling``, CSV datasets                 no
matplotlib     ``monai.utils.jupyter_utils``, ``monai.visualize``      no
scikit-learn   ``monai.metrics.embedding_collapse``                    no
scipy          ``monai.data.ultrasound_confidence_map`` (signal,       no (the presets resize
               sparse), ``monai.transforms`` (``ndimage``: spline      with torch: bilinear,
               orders of ``Resample``/``Zoom`` with numpy backends)    area)
ignite         ``monai.engines``, ``monai.utils``; ignite imports     no (:func:`~lilaw_med.
               ``torch.distributed.optim`` and with it FSDP and sympy  training.evaluation.
                                                                       run_inference` is a loop)
=============  =====================================================  ======================

which is about 190 MB of resident memory (472 MB after ``import monai.transforms`` against
283 MB without them, Python 3.11, torch 2.x, CPU). :func:`import_monai_lean` imports MONAI once
with these packages refused: while ``monai`` initialises, a finder at the head of
``sys.meta_path`` answers ``ModuleNotFoundError`` for them, MONAI records each as missing, and the
features that need one raise MONAI's ``OptionalImportError`` when used. The finder is removed as
soon as MONAI is imported: afterwards every package imports as usual, only MONAI's own module-level
references stay placeholders. A process that later trains (``monai.engines``) would therefore fail,
so only ``lilaw-med predict`` run as a program (the console script or ``python -m lilaw_med``)
calls it (:func:`lilaw_med.cli.main` with ``argv=None``); a caller inside a live interpreter
(tests, notebooks) keeps its modules untouched. ``LILAW_MED_LEAN_IMPORTS=off`` switches it off.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence
from importlib.abc import MetaPathFinder
from typing import Any

__all__ = ["LEAN_REFUSED", "import_monai_lean", "lean_imports_enabled"]

# top-level packages MONAI imports eagerly that the predict path never calls (see the table above)
LEAN_REFUSED: tuple[str, ...] = ("pandas", "matplotlib", "sklearn", "scipy", "ignite", "sympy")


class _Refuse(MetaPathFinder):
    """Answers ``ModuleNotFoundError`` for ``packages`` and their sub-modules.

    Args:
        packages: top-level package names.
    """

    def __init__(self, packages: Sequence[str]) -> None:
        self.packages = tuple(packages)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> None:
        if fullname.split(".", 1)[0] in self.packages:
            raise ModuleNotFoundError(f"{fullname} is not imported by lilaw-med's lean MONAI import", name=fullname)
        return None  # any other module: the next finder


def lean_imports_enabled() -> bool:
    """Whether lean imports are on (``LILAW_MED_LEAN_IMPORTS`` unset, or not ``off``/``0``/``false``)."""
    return os.environ.get("LILAW_MED_LEAN_IMPORTS", "on").strip().lower() not in ("off", "0", "false", "no")


def import_monai_lean(refused: Sequence[str] = LEAN_REFUSED) -> bool:
    """Imports MONAI without the packages in ``refused`` (once per process; see the module docstring).

    Args:
        refused: top-level packages MONAI must not import; one already imported stays as it is.

    Returns:
        ``True`` when MONAI was imported lean now; ``False`` when MONAI was already imported (nothing
        changes) or lean imports are off (``LILAW_MED_LEAN_IMPORTS=off``; MONAI is then imported in full).
    """
    if "monai" in sys.modules:
        return False
    if not lean_imports_enabled():
        importlib.import_module("monai")
        return False
    importlib.import_module("torch")  # in full, before the finder: torch's own optional imports are its business
    finder = _Refuse([p for p in refused if p not in sys.modules])
    sys.meta_path.insert(0, finder)
    try:
        importlib.import_module("monai")
    finally:
        sys.meta_path.remove(finder)
    return True
