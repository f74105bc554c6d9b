"""The run folder: one place that owns every file name of a training run (see docs/ARCHITECTURE.md).

```
RUN_DIR/
  config.yaml            resolved config (every default filled in)
  datalist.json          resolved items with ids, absolute paths, given labels, class_names
  metrics.csv / .json    per-epoch metrics (train loss, val/test metrics, lilaw scalars)
  lilaw_iterations.csv   per-iteration alpha, beta, delta, weight stats
  plots/*.png            losses, metrics, alpha/beta/delta, weight histograms per epoch
  checkpoints/           atomic checkpoints (last + best), checkpoint index
  dynamics/              per-item training dynamics (DynamicsRecorder)
  rejected_items.csv     items the pre-flight check rejected (with --skip-bad)
  tensorboard/           when tensorboard is installed
  summary.json           final metrics, best checkpoint, paths
  evaluation.json        written by `lilaw-med evaluate`
  audit/                 written by `lilaw-med audit`
  .lock                  the exclusive lock of the process writing the folder (never deleted)
```

Every write goes through :func:`lilaw_med.utils.atomic_write`. One process at a time writes a run
folder: ``train`` (new or ``--resume``) and ``audit`` hold :class:`RunLock` (``fcntl.flock`` on
``.lock``) for as long as they run, and a second one gets :class:`RunDirBusyError`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lilaw_med.run.config import dump_config, load_yaml_file
from lilaw_med.run.dynamics_format import FOLDER as DYNAMICS_FOLDER
from lilaw_med.utils import atomic_write

__all__ = ["RunDir", "RunDirBusyError", "RunLock", "default_run_name", "to_jsonable"]


def default_run_name(preset: str) -> str:
    """``PRESET-YYYYmmdd-HHMMSS`` (UTC), the default name of a run folder."""
    return f"{preset}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"


def to_jsonable(value: Any) -> Any:
    """Converts tensors/arrays/paths/NaN to plain JSON values (NaN and inf become ``None``)."""
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return to_jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


KEYS_ADDED_LATER: dict[tuple[str, str], Any] = {("lilaw", "epoch_budget"): None, ("lilaw", "meta_objective"): "mean"}
"""(section, key) -> the behaviour of a run folder written before the key existed: its ``config.yaml``
holds every key of its day, so a missing one means that day's behaviour, not today's default."""


class RunDirBusyError(RuntimeError):
    """Another live process holds the run folder's lock (a second ``train -o``, ``--resume`` or ``audit``)."""


class RunLock:
    """An exclusive, non-blocking lock on a run folder: ``fcntl.flock`` on ``RUN_DIR/.lock``.

    The kernel drops a ``flock`` lock when the last descriptor of its open file goes, so a process
    killed by any signal (SIGKILL included) frees the folder at once: there is no stale lock to
    clean up by hand, and no guess about whether a recorded pid is still alive. The lock file is
    never deleted or replaced: a lock on a deleted file would not exclude a process that opened a new
    one under the same name. The holder's command, pid, host and start time are written into it (for
    the message another process gets); they are informative only, the kernel lock decides.

    Forked children (e.g. ``DataLoader`` worker processes) share the locked descriptor: the folder is
    free once they have exited too (they exit within seconds of their parent).

    Args:
        folder: the run folder (must exist).
        command: what holds it (shown to a process that finds it busy), e.g. ``"lilaw-med train"``.
    """

    NAME = ".lock"

    def __init__(self, folder: str | os.PathLike, command: str = "lilaw-med"):
        self.path = Path(folder).absolute() / self.NAME
        self.command = command
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """Whether this object holds the lock."""
        return self._fd is not None

    def holder(self) -> str:
        """Who the lock file says holds the folder (best effort: it may be half-written)."""
        try:
            info = json.loads(self.path.read_text(encoding="utf-8"))
            return f"{info['command']}, pid {info['pid']} on {info['host']}, since {info['since']}"
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"

    def acquire(self) -> RunLock:
        """Takes the lock without waiting.

        Returns:
            ``self``.

        Raises:
            RunDirBusyError: when another live process holds it.
            OSError: when the lock file cannot be created for another reason than a read-only folder.
        """
        # POSIX only: imported where the lock is taken
        import fcntl

        if self._fd is not None:
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
            writable = True
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EROFS, errno.EPERM):
                raise
            # a read-only run folder (e.g. audited from a shared copy): nobody can write it, and a
            # lock file that exists is still honoured (flock needs no write access)
            if not self.path.is_file():
                return self
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirBusyError(
                f"run folder {self.path.parent} is in use by {self.holder()}; wait until it finishes (a "
                "folder whose process was killed is free again at once)."
            ) from None
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        if writable:  # written in place: replacing the file would break the lock (see the class docstring)
            info = {
                "command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            }
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        return self

    def release(self) -> None:
        """Releases the lock (the file stays); a no-op when not held."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)  # closing the only descriptor drops the flock lock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()


class RunDir:
    """Paths of a run folder and atomic writers for its files.

    Args:
        root: the run folder (created by :meth:`create`).

    Example::

        run = RunDir("runs/first")
        run.best_model                      # runs/first/checkpoints/best_model.pt (absolute)
        config = run.read_config()          # the plain dict of config.yaml
        run.write_json(RunDir.EVALUATION, {"accuracy": 0.9})   # atomically
    """

    CONFIG = "config.yaml"
    DATALIST = "datalist.json"
    METRICS_CSV = "metrics.csv"
    METRICS_JSON = "metrics.json"
    LILAW_ITERATIONS = "lilaw_iterations.csv"
    PLOTS = "plots"
    CHECKPOINTS = "checkpoints"
    DYNAMICS = DYNAMICS_FOLDER  # the dynamics format owns its folder name
    REJECTED = "rejected_items.csv"
    TENSORBOARD = "tensorboard"
    SUMMARY = "summary.json"
    EVALUATION = "evaluation.json"
    AUDIT = "audit"
    BEST_MODEL = "best_model.pt"
    FINAL_MODEL = "final_model.pt"
    LOCK = RunLock.NAME

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root).absolute()
        self.held_lock: RunLock | None = None

    # ------------------------------------------------------------------ paths
    @property
    def config(self) -> Path:
        return self.root / self.CONFIG

    @property
    def datalist(self) -> Path:
        return self.root / self.DATALIST

    @property
    def metrics_csv(self) -> Path:
        return self.root / self.METRICS_CSV

    @property
    def metrics_json(self) -> Path:
        return self.root / self.METRICS_JSON

    @property
    def lilaw_iterations(self) -> Path:
        return self.root / self.LILAW_ITERATIONS

    @property
    def plots(self) -> Path:
        return self.root / self.PLOTS

    @property
    def checkpoints(self) -> Path:
        return self.root / self.CHECKPOINTS

    @property
    def best_model(self) -> Path:
        """Network weights of the best epoch by the key metric (plus metadata)."""
        return self.checkpoints / self.BEST_MODEL

    @property
    def final_model(self) -> Path:
        """Network weights at the end of training (plus metadata)."""
        return self.checkpoints / self.FINAL_MODEL

    @property
    def dynamics(self) -> Path:
        return self.root / self.DYNAMICS

    @property
    def rejected(self) -> Path:
        return self.root / self.REJECTED

    @property
    def tensorboard(self) -> Path:
        return self.root / self.TENSORBOARD

    @property
    def summary(self) -> Path:
        return self.root / self.SUMMARY

    @property
    def evaluation(self) -> Path:
        """The report of ``lilaw-med evaluate`` (by default)."""
        return self.root / self.EVALUATION

    @property
    def audit(self) -> Path:
        return self.root / self.AUDIT

    # ------------------------------------------------------------------ life cycle
    def create(self, overwrite: bool = False, command: str = "lilaw-med train") -> RunDir:
        """Creates the folder (and ``plots/``, ``checkpoints/``) and takes its lock (:attr:`held_lock`,
        kept until :meth:`release`).

        Two processes creating the same folder at once cannot both succeed: the emptiness check runs
        under the lock, so the second one finds the folder busy (or, once the first has finished, not
        empty).

        Args:
            overwrite: allow an existing non-empty folder.
            command: what takes the lock (named to a process that finds the folder busy).

        Returns:
            ``self``.

        Raises:
            RunDirBusyError: when another live process holds the folder.
            FileExistsError: when the folder holds files and ``overwrite`` is false.
            OSError: when it cannot be created or is not writable.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        lock = self.lock(command)
        try:
            if not overwrite and any(p.name != self.LOCK for p in self.root.iterdir()):
                raise FileExistsError(
                    f"run folder {self.root} exists and is not empty: choose another --output, set "
                    "output.overwrite=true, or continue it with --resume."
                )
            for folder in (self.plots, self.checkpoints):
                folder.mkdir(parents=True, exist_ok=True)
            if not os.access(self.root, os.W_OK):
                raise PermissionError(f"run folder {self.root} is not writable.")
        except BaseException:
            lock.release()
            raise
        self.held_lock = lock
        return self

    def lock(self, command: str = "lilaw-med") -> RunLock:
        """Takes the run folder's exclusive lock (see :class:`RunLock`).

        Args:
            command: what takes it (named to a process that finds the folder busy).

        Returns:
            The held lock; release it with :meth:`RunLock.release` or use it as a context manager.

        Raises:
            RunDirBusyError: when another live process holds it.
        """
        return RunLock(self.root, command).acquire()

    def release(self) -> None:
        """Releases the lock :meth:`create` took (a no-op when none is held)."""
        if self.held_lock is not None:
            self.held_lock.release()
            self.held_lock = None

    def remove_stale_temp_files(self) -> list[Path]:
        """Removes the hidden ``.NAME.*.tmp`` files that interrupted atomic writes left in the folder.

        Call it only while holding the lock: then no other process can be in the middle of a write.

        Returns:
            The files removed.
        """
        removed = []
        for tmp in self.root.rglob(".*.tmp"):
            if tmp.is_file():
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
                    removed.append(tmp)
        return removed

    def exists(self) -> bool:
        """Whether this looks like a run folder (it has a ``config.yaml``)."""
        return self.config.is_file()

    # ------------------------------------------------------------------ writers
    def write_json(self, name: str | Path, data: Any) -> Path:
        """Writes ``data`` as indented JSON (NaN -> null) atomically under the run folder."""
        return atomic_write(self.root / name, json.dumps(to_jsonable(data), indent=2) + "\n")

    def read_json(self, name: str | Path) -> Any:
        """Reads a JSON file of the run folder."""
        return json.loads((self.root / name).read_text(encoding="utf-8"))

    def write_config(self, config: Mapping[str, Any] | Any) -> Path:
        """Writes the resolved config (a mapping or a :class:`~lilaw_med.run.config.Config`) as YAML."""

        return atomic_write(self.config, dump_config(config))

    def read_config(self) -> dict[str, Any]:
        """Reads ``config.yaml`` (safe-loaded), with the value each key added since the run was written
        had then (:data:`KEYS_ADDED_LATER`), so the run's own behaviour is what a resume, a cross-fit
        or an export reproduces.

        Raises:
            FileNotFoundError: when the folder is not a run folder.
            ConfigError: naming the file, when it is not YAML text (binary, too large, too deeply nested).
        """

        if not self.config.is_file():
            raise FileNotFoundError(f"{self.root} is not a run folder: {self.CONFIG} is missing.")
        config = load_yaml_file(self.config)
        for (section, key), value in KEYS_ADDED_LATER.items():
            if isinstance(config, dict) and isinstance(config.get(section), dict) and key not in config[section]:
                config[section][key] = value
        return config

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"
