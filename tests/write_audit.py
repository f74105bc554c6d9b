"""Which files each torchrun rank writes: a Python audit hook installed into every rank.

``write_audit_env`` returns the environment for a ``torchrun`` subprocess; after it ends,
``writes_by_rank`` reads what each rank wrote under the watched folder. The hook is a
``sitecustomize`` put first on ``PYTHONPATH``; it records ``open`` for writing (``open()`` and
``os.open`` with O_CREAT/O_WRONLY/...), rename/replace, mkdir and removals under the folder, and
each rank dumps its list at exit to a file outside it. ``torch.save`` to a path writes from C++
and raises no audit event, so the hook also wraps ``torch.save`` (looked up at call time by
MONAI's and ignite's savers).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["write_audit_env", "writes_by_rank"]

# Active in the ranks only (the torchrun launcher has no RANK).
SITECUSTOMIZE = '''
import atexit, os, sys
_root = os.environ.get("LILAW_TEST_RUN_ROOT")  # a realpath
_rank = os.environ.get("RANK")
if _root and _rank is not None:
    _events = []
    _busy = [False]
    _write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC

    def _under_root(path):
        try:
            p = os.path.realpath(os.fsdecode(path))
            return p == _root or p.startswith(_root + os.sep)
        except TypeError:
            return False

    def _hook(event, args):
        if _busy[0]:
            return
        if event == "open":
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                mode is None and isinstance(flags, int) and flags & _write_flags
            )
            if writing and not isinstance(path, int) and _under_root(path):
                _events.append(f"open {os.fsdecode(path)}")
        elif event in ("os.rename", "os.mkdir", "os.remove", "os.rmdir", "shutil.rmtree"):
            # a rename's target (args[1]) counts too: os.replace(outside, inside) writes inside
            paths = args[:2] if event == "os.rename" else args[:1]
            for path in paths:
                if not isinstance(path, int) and _under_root(path):
                    _events.append(f"{event} {os.fsdecode(path)}")
                    break

    def _dump():
        _busy[0] = True
        with open(os.environ["LILAW_TEST_WRITE_LOG"] + f".rank{_rank}", "w") as f:
            f.write("\\n".join(_events))

    sys.addaudithook(_hook)
    atexit.register(_dump)

    # torch.save to a path writes from C++ and raises no audit event (MONAI's CheckpointSaver saves so)
    import torch

    _save = torch.save

    def _logged_save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and _under_root(f):
            _events.append(f"torch.save {os.path.abspath(os.fsdecode(f))}")
        return _save(obj, f, *args, **kwargs)

    torch.save = torch.serialization.save = _logged_save
'''


def write_audit_env(scratch: Path, watched: Path, env: dict[str, str]) -> dict[str, str]:
    """The environment for a torchrun subprocess whose ranks log their writes under ``watched``.

    Args:
        scratch: a folder outside ``watched`` for the hook and the per-rank logs.
        watched: the folder whose writes are logged.
        env: the environment to extend (its ``PYTHONPATH`` is kept after the hook's folder).

    Returns:
        A copy of ``env`` with the hook installed; bytecode caching is off so that imports write nothing.
    """
    hook_dir = scratch / "write_audit"
    hook_dir.mkdir(parents=True, exist_ok=True)
    (hook_dir / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return {
        **env,
        "PYTHONPATH": os.pathsep.join(p for p in [str(hook_dir), env.get("PYTHONPATH", "")] if p),
        "PYTHONDONTWRITEBYTECODE": "1",
        "LILAW_TEST_RUN_ROOT": os.path.realpath(watched),
        "LILAW_TEST_WRITE_LOG": str(hook_dir / "writes"),
    }


def writes_by_rank(scratch: Path, world_size: int) -> dict[int, list[str] | None]:
    """Each rank's logged writes.

    Args:
        scratch: the folder given to :func:`write_audit_env`.
        world_size: the number of ranks.

    Returns:
        ``{rank: ["<event> <path>", ...]}``; ``None`` for a rank whose hook never dumped (it did not
        run or the rank crashed).
    """
    out: dict[int, list[str] | None] = {}
    for r in range(world_size):
        log = scratch / "write_audit" / f"writes.rank{r}"
        out[r] = [line for line in log.read_text().splitlines() if line] if log.is_file() else None
    return out
