"""Time and peak memory of a block of code, and the table the scale benchmarks print.

Every scale benchmark reports rows ``{task, items, seconds, peak_rss_mb, items_per_s, note}``;
this module measures them one way (``VmHWM``, reset before each task through
``/proc/self/clear_refs``, so each row's peak is its own) and formats them one way.
"""

from __future__ import annotations

import resource
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = ["markdown_table", "measured", "peak_rss_mb", "reset_peak_rss", "row"]


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB: ``VmHWM`` on Linux (per process, not carried over
    a fork), else ``ru_maxrss``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 1024 / 1024 if sys.platform == "darwin" else rss / 1024


def reset_peak_rss() -> None:
    """Resets this process's peak RSS to its current RSS (Linux >= 4.0, ``clear_refs`` 5); elsewhere a no-op."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def row(task: str, items: int, seconds: float, peak_mb: float | None, note: str = "") -> dict[str, Any]:
    """One table row; ``items_per_s`` from ``items`` and ``seconds``."""
    return {"task": task, "items": int(items), "seconds": round(seconds, 3),
            "peak_rss_mb": None if peak_mb is None else round(peak_mb, 1),
            "items_per_s": round(items / seconds, 1) if seconds > 0 else float("inf"), "note": note}


@contextmanager
def measured(task: str, items: int, note: str, rows: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Times the block, measures its peak RSS and appends its row; the block may replace ``note``
    through the yielded dict."""
    reset_peak_rss()
    extra: dict[str, Any] = {"note": note}
    start = time.perf_counter()
    yield extra
    rows.append(row(task, items, time.perf_counter() - start, peak_rss_mb(), extra["note"]))


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """The rows as a Markdown table (peak RSS blank where a row has none)."""
    lines = ["| task | items | seconds | peak RSS MB | items/s | note |", "|---|---|---|---|---|---|"]
    for r in rows:
        peak = "" if r.get("peak_rss_mb") is None else f"{r['peak_rss_mb']:.0f}"
        lines.append(f"| {r['task']} | {r['items']} | {r['seconds']:.2f} | {peak} | {r['items_per_s']:.0f} | {r['note']} |")
    return "\n".join(lines)
