"""AdrenalMNIST3D through the real 3D pipeline: NIfTI files, a datalist, ``run_training``.

Issue 7.1's AdrenalMNIST3D cell, read through the files a user would have (the accuracy slice of
``benchmarks/run.py`` trains it in memory instead)::

    nice -n 10 python -m benchmarks.adrenal_pipeline                 # seeds 0..4, 10 epochs
    nice -n 10 python -m benchmarks.adrenal_pipeline --seeds 3       # seeds 0..2

1. ``../shared/data/adrenalmnist3d.npz`` (or ``$LILAW_SHARED_DATA``) is written out as NIfTI
   volumes plus a decathlon datalist by the toolkit's own converter
   (:func:`lilaw_med.data.npz_import.import_npz`) into ``benchmarks/out/adrenal_nifti`` (reused
   when present). The npz ``val`` split is dropped from the datalist used for training.
2. Per seed, 40% symmetric noise is injected with :func:`lilaw_med.data.noise.add_noise_to_datalist`
   (the toolkit's ``symmetric_noise``, Bernoulli flips, seeded by the seed) into the training and the
   validation labels: loading the datalist splits a stratified 15% of the training items off as
   validation first (seed 0, the same items for every seed), and both splits are noised; the npz
   ``test`` split, clean, is the test set.
3. Each (seed, method) trains through :func:`lilaw_med.training.run.run_training` with the
   packaged ``radiology_3d.yaml`` preset and ``--set``-style overrides: the paper protocol
   (Adam lr 1e-3, weight decay 1e-4, batch 64, 10 epochs, constant LR), the preset's network
   for both arms, ``lilaw.enabled=false`` (CE) vs ``true`` (LiLAW). Run folders:
   ``benchmarks/out/adrenal_runs/<method>-seed<k>``; a finished run (``summary.json``) is reused.
4. The table (mean ± std clean-test accuracy, balanced accuracy and AUROC of the final and the
   best-noisy-validation models, and the paired LiLAW - CE difference with its 95% t-interval)
   is printed and written to ``benchmarks/out/adrenal_pipeline.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.harness import mean_ci, paired_difference
from lilaw_med.utils import atomic_write

__all__ = ["METHODS", "METRICS", "build_table", "default_npz", "main", "prepare_nifti", "run_pipeline", "train_one"]

logger = logging.getLogger("benchmarks.adrenal_pipeline")

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
METHODS = ("ce", "lilaw")
METRICS = ("accuracy", "balanced_accuracy", "auroc")
CLASS_NAMES = ["normal", "hyperplasia"]  # MedMNIST v2 AdrenalMNIST3D label names


def default_npz() -> Path:
    """The shared AdrenalMNIST3D npz (``$LILAW_SHARED_DATA`` or ``../shared/data``)."""
    root = os.environ.get("LILAW_SHARED_DATA") or str(REPO.parent / "shared" / "data")
    return Path(root) / "adrenalmnist3d.npz"


def prepare_nifti(npz: str | os.PathLike, nifti_dir: str | os.PathLike, class_names: Sequence[str] | None = None) -> Path:
    """Writes the npz as NIfTI + datalist (once) and a train/test-only datalist beside it.

    Args:
        npz: the MedMNIST-style npz.
        nifti_dir: output folder of the converter (reused when its ``datalist.json`` exists).
        class_names: the class names written to the datalist.

    Returns:
        The path of ``datalist_train_test.json`` (training + test splits, no validation).
    """
    from lilaw_med.data.npz_import import import_npz

    nifti_dir = Path(nifti_dir)
    full = nifti_dir / "datalist.json"
    if not full.is_file():
        t0 = time.time()
        import_npz(npz, nifti_dir, fmt="nifti", class_names=list(class_names) if class_names else None)
        logger.info("wrote NIfTI volumes and %s in %.1f s", full, time.time() - t0)
    else:
        logger.info("reusing %s", full)
    data = json.loads(full.read_text())
    base = {k: v for k, v in data.items() if k != "validation"}  # the npz val split is not used
    out = nifti_dir / "datalist_train_test.json"
    atomic_write(out, json.dumps(base, indent=1) + "\n")
    return out


def noisy_datalist(base: Path, seed: int, rate: float) -> tuple[Path, float]:
    """Writes ``noisy_symmetric<rate>_seed<k>_noisyval.json`` beside ``base``: training and validation labels
    noised (loading ``base`` splits the validation items off first), test clean."""
    from lilaw_med.data.noise import add_noise_to_datalist

    out = base.parent / f"noisy_symmetric{rate:g}_seed{seed}_noisyval.json"
    res = add_noise_to_datalist(base, out, kind="symmetric", rate=rate, seed=seed, splits=("training", "validation"))
    return out, float(res.actual_rate.get("training", float("nan")))


def _overrides(datalist: Path, seed: int, method: str, epochs: int, batch_size: int, run_root: Path) -> list[str]:
    return [
        f"data.datalist={datalist}",
        "data.sample_data=false",
        "data.val_fraction=0.15",
        f"data.split_seed={seed}",
        f"train.seed={seed}",
        f"train.epochs={epochs}",
        f"train.batch_size={batch_size}",
        "train.device=cpu",
        "train.progress=false",
        "optim.name=adam",
        "optim.lr=0.001",
        "optim.weight_decay=0.0001",
        "schedule.name=none",
        f"lilaw.enabled={'true' if method == 'lilaw' else 'false'}",
        f"output.dir={run_root}",
        "output.plots=false",
        "output.tensorboard=false",
    ]


def train_one(
    datalist: Path, seed: int, method: str, run_root: Path, epochs: int = 10, batch_size: int = 64,
    extra: Sequence[str] = (),
) -> dict[str, Any]:
    """One (seed, method) training through ``run_training``; returns its ``summary.json`` content.

    A run folder that already holds a ``summary.json`` is reused (the runs are deterministic).
    """
    from lilaw_med.run.config import load_preset_config
    from lilaw_med.training.run import run_training

    run_dir = run_root / f"{method}-seed{seed}"
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        logger.info("reusing %s", summary_path)
        return json.loads(summary_path.read_text())
    if run_dir.exists():  # an unfinished run: start it again
        import shutil

        shutil.rmtree(run_dir)
    cfg = load_preset_config(
        "radiology_3d.yaml", [*_overrides(datalist, seed, method, epochs, batch_size, run_root), *extra]
    )
    t0 = time.time()
    result = run_training(cfg, output_dir=run_dir)
    logger.info("%s seed %d: %.1f s", method, seed, time.time() - t0)
    return result.summary


def _test_metrics(summary: dict[str, Any], which: str) -> dict[str, float]:
    entry = summary.get(which) or {}
    test = entry.get("test") or {}
    return {m: float(test[m]) if test.get(m) is not None else float("nan") for m in METRICS}


def build_table(summaries: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int]) -> dict[str, Any]:
    """Per-method mean ± std and the paired LiLAW - CE difference for the final and best models.

    Args:
        summaries: ``method -> seed -> summary.json`` content.
        seeds: the seeds, in pairing order.

    Returns:
        ``{"per_seed": ..., "methods": {which: {method: {metric: mean_ci}}}, "difference": {which: {metric: paired}}}``
        with metric values in percent.
    """
    per_seed: dict[str, dict[str, dict[str, dict[str, float]]]] = {}
    methods: dict[str, dict[str, dict[str, Any]]] = {}
    diff: dict[str, dict[str, Any]] = {}
    for which in ("final", "best"):
        methods[which] = {}
        vals = {m: {k: [100 * _test_metrics(summaries[m][s], which)[k] for s in seeds] for k in METRICS} for m in METHODS}
        for m in METHODS:
            methods[which][m] = {k: mean_ci(vals[m][k]) for k in METRICS}
            for s in seeds:
                per_seed.setdefault(m, {}).setdefault(str(s), {})[which] = {
                    k: 100 * _test_metrics(summaries[m][s], which)[k] for k in METRICS
                }
        diff[which] = {k: paired_difference(vals["lilaw"][k], vals["ce"][k]) for k in METRICS}
    for m in METHODS:
        for s in seeds:
            per_seed[m][str(s)]["best_epoch"] = summaries[m][s].get("best_epoch")
            per_seed[m][str(s)]["seconds"] = summaries[m][s].get("seconds")
    return {"per_seed": per_seed, "methods": methods, "difference": diff}


def _fmt(d: dict[str, float]) -> str:
    return f"{d['mean']:.1f} ± {d['std']:.1f}"


def _fmt_diff(d: dict[str, float]) -> str:
    return f"{d['mean']:+.1f} [{d['ci_low']:+.1f}, {d['ci_high']:+.1f}] ({d['wins']}/{d['n']})"


def table_markdown(table: dict[str, Any], meta: dict[str, Any]) -> str:
    """The Markdown table (clean-test metrics in percent)."""
    lines = [
        "## AdrenalMNIST3D through the 3D pipeline (NIfTI files, `run_training`)",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; seeds {meta['seeds']}; {meta['epochs']} epochs, batch {meta['batch_size']}, "
        f"Adam lr 1e-3, wd 1e-4, constant LR; network `{meta['network']}` (radiology_3d preset), "
        f"spatial size {meta['spatial_size']}; 40% symmetric noise on training + validation "
        f"(actual training rates {meta['noise_rates']}); clean npz test split ({meta['num_items']['test']} volumes); "
        f"training {meta['num_items']['training']} / validation {meta['num_items']['validation']} items.",
    ]
    if meta.get("note"):
        lines += ["", f"**Note:** {meta['note']}"]
    lines += [
        "",
        "Clean-test metrics in percent, mean ± std over seeds; LiLAW - CE: mean paired difference "
        "[95% t-interval] (seeds where LiLAW is better / seeds).",
        "",
        "| model | method | accuracy | balanced accuracy | AUROC |",
        "|---|---|---|---|---|",
    ]
    for which, label in (("final", "final"), ("best", "best noisy-val AUROC")):
        for m, name in (("ce", "CE"), ("lilaw", "LiLAW (CE)")):
            r = table["methods"][which][m]
            lines.append(f"| {label} | {name} | " + " | ".join(_fmt(r[k]) for k in METRICS) + " |")
        d = table["difference"][which]
        lines.append(f"| {label} | LiLAW - CE | " + " | ".join(_fmt_diff(d[k]) for k in METRICS) + " |")
    lines += ["", f"Seconds per run (mean): CE {meta['seconds']['ce']:.0f}, LiLAW {meta['seconds']['lilaw']:.0f}.", ""]
    return "\n".join(lines)


def _write_table(
    summaries: dict[str, dict[int, dict[str, Any]]], seeds: Sequence[int], rates: dict[int, float], epochs: int,
    batch_size: int, rate: float, out_dir: Path, note: str, command: str, final: bool,
) -> dict[str, Any]:
    """Builds the table over the finished seeds and writes ``adrenal_pipeline.{json,md}`` (after every seed)."""
    table = build_table(summaries, seeds)
    first = summaries["ce"][seeds[0]]
    cfg_path = Path(first["run_dir"]) / "config.yaml"
    spatial = None
    if cfg_path.is_file():
        import yaml

        spatial = yaml.safe_load(cfg_path.read_text())["data"]["options"].get("spatial_size")
    meta = {
        "command": command or "python -m benchmarks.adrenal_pipeline",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "seeds": list(seeds),
        "epochs": epochs,
        "batch_size": batch_size,
        "noise": {"kind": "symmetric", "rate": rate},
        "noise_rates": {str(k): round(v, 3) for k, v in rates.items()},
        "network": first.get("network"),
        "spatial_size": spatial,
        "num_items": first.get("num_items"),
        "seconds": {m: mean_ci([summaries[m][s].get("seconds") or float("nan") for s in seeds])["mean"] for m in METHODS},
        "note": note,
    }
    md = table_markdown(table, meta)
    result = {"meta": meta, "table": table}
    atomic_write(out_dir / "adrenal_pipeline.json", json.dumps(result, indent=1) + "\n")
    atomic_write(out_dir / "adrenal_pipeline.md", md)
    if final:
        print(md)
    else:
        logger.info("table over seeds %s written to %s", list(seeds), out_dir / "adrenal_pipeline.md")
    return result


def run_pipeline(
    npz: str | os.PathLike,
    out_dir: str | os.PathLike = OUT,
    seeds: Sequence[int] = (0, 1, 2, 3, 4),
    epochs: int = 10,
    batch_size: int = 64,
    rate: float = 0.4,
    extra_overrides: Sequence[str] = (),
    note: str = "",
    command: str = "",
) -> dict[str, Any]:
    """The whole benchmark: NIfTI conversion, noise, CE and LiLAW trainings, the table.

    Args:
        npz: the AdrenalMNIST3D-style npz.
        out_dir: holds ``adrenal_nifti/``, ``adrenal_runs/`` and ``adrenal_pipeline.{json,md}``.
        seeds: the seeds (methods paired by seed).
        epochs: training epochs.
        batch_size: training batch size.
        rate: symmetric noise rate.
        extra_overrides: further ``--set`` overrides (tests: a smaller spatial size).
        note: a line written above the table.
        command: the command line recorded with the table.

    Returns:
        ``{"meta", "table"}`` as written to the JSON file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = prepare_nifti(npz, out_dir / "adrenal_nifti", CLASS_NAMES)
    run_root = out_dir / "adrenal_runs"
    summaries: dict[str, dict[int, dict[str, Any]]] = {m: {} for m in METHODS}
    rates: dict[int, float] = {}
    for seed in seeds:
        noisy, actual = noisy_datalist(base, seed, rate)
        rates[seed] = actual
        for m in METHODS:
            summaries[m][seed] = train_one(noisy, seed, m, run_root, epochs, batch_size, extra_overrides)
            s = summaries[m][seed]
            logger.info(
                "%s seed %d: final test %s | best (epoch %s) test %s", m, seed, _test_metrics(s, "final"),
                s.get("best_epoch"), _test_metrics(s, "best"),
            )
        done = [s for s in seeds if all(s in summaries[m] for m in METHODS)]
        result = _write_table(summaries, done, rates, epochs, batch_size, rate, out_dir, note, command, final=seed == seeds[-1])
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: see the module docstring."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--npz", default=None, help="the AdrenalMNIST3D npz (default: the shared data folder)")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1 (default 5)")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--note", default="", help="a line written above the table")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    import torch

    torch.set_num_threads(1)
    npz = Path(args.npz) if args.npz else default_npz()
    if not npz.is_file():
        print(f"skipped: {npz} not found (see ../shared/data/README.md)")
        return 0
    run_pipeline(
        npz, args.out, seeds=tuple(range(args.seeds)), epochs=args.epochs, note=args.note,
        command="python -m benchmarks.adrenal_pipeline " + " ".join(argv if argv is not None else sys.argv[1:]),
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
