"""``torchrun`` for the tests: one node on 127.0.0.1, and a scratch folder for what it leaves behind.

torchrun's launcher makes a ``torchelastic_*`` log folder under the temporary folder and leaves it
there; :func:`torchrun_env` points ``TMPDIR`` at a folder of the test's own ``tmp_path``, which
pytest removes with the rest.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


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


def run_processes(worker: Callable[..., None], args: tuple[Any, ...], nprocs: int, timeout_s: float, what: str) -> None:
    """Runs ``worker(rank, *args)`` in ``nprocs`` processes and waits for all of them; kills them and
    fails the test after ``timeout_s`` (a hung collective must not hang the suite).

    fork, as DataLoader workers are started, spares each child re-importing torch and MONAI.
    """
    import pytest
    import torch.multiprocessing as mp

    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method=method)
    deadline = time.monotonic() + timeout_s
    while not ctx.join(timeout=1.0):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                if p.is_alive():
                    p.kill()
            pytest.fail(f"the {what} did not finish within {timeout_s:.0f} s")
