"""The audit at clinical scale: time and peak memory of ``run_audit`` on synthetic dynamics.

The benchmark writes a run folder in the real on-disk format (``datalist.json``, ``metrics.csv``
and the dynamics through :func:`lilaw_med.run.dynamics_format.write_epoch`), then audits it in a
child process (thumbnails and the final-model baseline off: the folder holds no images or model) and
reads the child's peak resident memory from ``/proc/self/status`` (``VmHWM``; ``ru_maxrss``
elsewhere). Linux carries ``ru_maxrss`` over from the parent across fork and exec, so the child
reports its own high-water mark instead.

The synthetic run: N training items and N // 10 validation items, C classes, 20% of the given
labels wrong (uniform over the other classes); the network learns the true class over the first
epochs and memorises the given training labels from 40% of training on (the validation items,
never trained on, are not memorised and their out-of-sample view degrades a little);
``metrics.csv``'s noisy validation loss is lowest at epoch ``E // 3``. Floor (issue 23): 1M items, 20 epochs, 9 classes in <= 60 s and <= 2 GB peak RSS.

Run::

    nice -n 10 python -m benchmarks.scale_audit --items 1000000
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import markdown_table, peak_rss_mb

__all__ = ["audit_rows", "main", "write_synthetic_run"]

NOISE = 0.2
FLOOR_SECONDS, FLOOR_RSS_MB = 60.0, 2048.0


def _epoch_records(true: np.ndarray, given: np.ndarray, epoch: int, epochs: int, num_classes: int,
                   rng: np.random.Generator, trained: bool = True) -> np.ndarray:
    """One epoch's records (n,) of the recorder's dtype: learning the truth first, the labels late
    (``trained``); items never trained on (validation) are not memorised, and generalise a little
    worse once the network memorises the training labels."""
    from lilaw_med.run.dynamics_format import record_dtype

    n = true.size
    t = epoch / epochs
    truth_pull = 4.0 * min(1.0, 3 * t)  # learnt within the first third
    memorise = 6.0 * max(0.0, t - 0.4)  # memorisation of the given labels from 40% of training on
    if not trained:
        truth_pull, memorise = truth_pull - memorise / 3, 0.0
    logits = rng.normal(0.0, 1.0, (n, num_classes)).astype(np.float32)
    rows = np.arange(n)
    logits[rows, true] += truth_pull
    logits[rows, given] += memorise
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    rec = np.zeros(n, dtype=record_dtype((), num_classes))
    p_given = probs[rows, given]
    top2 = np.partition(probs, num_classes - 2, axis=1)[:, -2:]
    pred = probs.argmax(axis=1)
    rec["prob_label"] = p_given
    rec["prob_max"] = top2[:, 1]
    rec["prob_other"] = np.where(pred == given, top2[:, 0], top2[:, 1])
    for name in ("w_alpha", "w_beta", "w_delta"):
        rec[name] = rng.random(n, dtype=np.float32)
    rec["weight"] = rec["w_alpha"].astype(np.float32) + rec["w_beta"] + rec["w_delta"]
    rec["loss"] = -np.log(np.maximum(p_given, 1e-7))
    rec["probs"] = probs
    rec["pred_label"] = pred
    rec["count"] = 1
    return rec


def write_synthetic_run(root: str | Path, items: int, epochs: int = 20, num_classes: int = 9, seed: int = 0) -> Path:
    """Writes a run folder the audit reads: datalist, metrics and dynamics in the real format.

    Args:
        root: the run folder to create.
        items: N training items (N // 10, at least 20, validation items).
        epochs: E recorded epochs.
        num_classes: C.
        seed: the generator's seed.

    Returns:
        The run folder.
    """
    from lilaw_med.run.dynamics_format import FOLDER, write_epoch
    from lilaw_med.run.run_dir import RunDir
    from lilaw_med.utils import atomic_write

    rng = np.random.default_rng(seed)
    rd = RunDir(root)
    rd.root.mkdir(parents=True, exist_ok=True)
    sizes = {"training": items, "validation": max(20, items // 10)}
    truth, given, ids = {}, {}, {}
    for split, n in sizes.items():
        truth[split] = rng.integers(0, num_classes, n)
        flip = rng.random(n) < NOISE
        given[split] = np.where(flip, (truth[split] + rng.integers(1, num_classes, n)) % num_classes, truth[split])
        ids[split] = [f"{split[0]}{i:08d}" for i in range(n)]
    datalist = {
        split: [{"id": ids[split][i], "image": f"/synthetic/{ids[split][i]}.png", "label": int(given[split][i]),
                 "group": None} for i in range(n)]
        for split, n in sizes.items()
    }
    datalist["class_names"] = [f"class_{k}" for k in range(num_classes)]
    atomic_write(rd.datalist, json.dumps(datalist))
    best = max(1, epochs // 3)
    lines = ["epoch,val_loss,val_accuracy"] + [
        f"{e},{0.6 + 0.02 * (e - best) ** 2 / max(best, 1):.6f},{0.75 - 0.01 * abs(e - best):.4f}"
        for e in range(1, epochs + 1)]
    atomic_write(rd.metrics_csv, "\n".join(lines) + "\n")
    done: dict[str, list[int]] = {split: [] for split in sizes}
    for e in range(1, epochs + 1):
        records = {split: _epoch_records(truth[split], given[split], e, epochs, num_classes, rng, split == "training")
                   for split in sizes}
        for split in sizes:
            done[split].append(e)
        write_epoch(rd.root / FOLDER, e, records, ids, done, lilaw={str(e): {"alpha": 1.0, "beta": 1.0, "delta": 1.0}})
    return rd.root


def _child(run_dir: str) -> None:
    """Audits ``run_dir`` in THIS process and prints ``{"seconds", "peak_rss_mb", "flagged"}`` as JSON."""
    import logging

    from lilaw_med.workflows.audit import run_audit

    logging.basicConfig(level=logging.ERROR)
    start = time.perf_counter()
    result = run_audit(run_dir, thumbnails=False, final_model_baseline=False)
    seconds = time.perf_counter() - start
    flagged = sum(int(a.is_label_issue.sum()) for a in result.splits.values())
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb(), "flagged": flagged}))


def audit_rows(items: int = 1_000_000, epochs: int = 20, num_classes: int = 9, workdir: str | Path | None = None,
               seed: int = 0) -> list[dict[str, Any]]:
    """Writes a synthetic run and audits it in a child process.

    Args:
        items: N training items.
        epochs: E.
        num_classes: C.
        workdir: where the run folder goes (a temporary folder, removed afterwards, when ``None``).
        seed: the synthetic run's seed.

    Returns:
        Row dicts ``{task, items, seconds, peak_rss_mb, items_per_s, note}``: writing the synthetic
        dynamics (in this process; no peak memory) and the audit (the child's).
    """
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        start = time.perf_counter()
        run = write_synthetic_run(Path(tmp) / "run", items, epochs, num_classes, seed)
        write_s = time.perf_counter() - start
        n_total = items + max(20, items // 10)
        out = subprocess.run([sys.executable, "-m", "benchmarks.scale_audit", "--child", str(run)],
                             check=True, capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
        child = json.loads(out.stdout.strip().splitlines()[-1])
        disk_mb = sum(p.stat().st_size for p in (run / "dynamics").rglob("*") if p.is_file()) / 2**20
        csv_mb = (run / "audit" / "audit.csv").stat().st_size / 2**20
        json_kb = (run / "audit" / "audit.json").stat().st_size / 1024
    shape = f"{items} training + {n_total - items} validation items, {epochs} epochs, {num_classes} classes"
    return [
        {"task": "write synthetic dynamics", "items": n_total, "seconds": write_s, "peak_rss_mb": None,
         "items_per_s": n_total / write_s, "note": f"{shape}; {disk_mb:.0f} MB on disk"},
        {"task": "audit (run_audit)", "items": n_total, "seconds": child["seconds"], "peak_rss_mb": child["peak_rss_mb"],
         "items_per_s": n_total / child["seconds"],
         "note": f"{child['flagged']} flagged; audit.csv {csv_mb:.0f} MB, audit.json {json_kb:.0f} kB; floor at 1M: "
                 f"<= {FLOOR_SECONDS:.0f} s, <= {FLOOR_RSS_MB:.0f} MB"},
    ]


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.scale_audit [--items N] [--epochs E] [--classes C]``: prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--classes", type=int, default=9)
    parser.add_argument("--workdir", default=None, help="folder for the temporary run (default: the system's)")
    parser.add_argument("--child", metavar="RUN_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child)
        return 0
    rows = audit_rows(args.items, args.epochs, args.classes, args.workdir)
    print(markdown_table(rows))
    if args.items >= 1_000_000:
        audit = rows[-1]
        ok = audit["seconds"] <= FLOOR_SECONDS and audit["peak_rss_mb"] <= FLOOR_RSS_MB
        print(f"floor (<= {FLOOR_SECONDS:.0f} s, <= {FLOOR_RSS_MB:.0f} MB): {'met' if ok else 'NOT met'}")
    return 0 if not math.isnan(rows[-1]["seconds"]) else 1


if __name__ == "__main__":
    sys.exit(main())
