"""``torchrun`` for the tests: one node on 127.0.0.1, and a scratch folder for what it leaves behind.

torchrun's launcher makes a ``torchelastic_*`` log folder under the temporary folder and leaves it
there; :func:`torchrun_env` points ``TMPDIR`` at a folder of the test's own ``tmp_path``, which
pytest removes with the rest.
"""

from __future__ import annotations

import socket
import sys
from collections.abc import Mapping
from pathlib import Path


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def torchrun_command(nproc: int, *args: str) -> list[str]:
    """``torchrun`` on one node with a free port on 127.0.0.1 only (no hostname resolution)."""
    return [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", str(nproc),
        "--master_addr", "127.0.0.1", "--master_port", str(free_port()), *args,
    ]  # fmt: skip


def torchrun_env(scratch: Path, env: Mapping[str, str]) -> dict[str, str]:
    """``env`` with ``TMPDIR`` in ``scratch`` (created), so that torchrun's log folders go there.

    Args:
        scratch: a folder the test owns (its ``tmp_path``).
        env: the environment to extend.

    Returns:
        A copy of ``env`` with ``TMPDIR`` set.
    """
    tmp = scratch / "tmpdir"
    tmp.mkdir(parents=True, exist_ok=True)
    return {**env, "TMPDIR": str(tmp)}
