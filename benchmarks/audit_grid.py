"""The audit grid (issue 12): does the shipped audit rank, count and grade mislabels as well as
cleanlab, on data and noise it was not tuned on, through the CLI a user runs?

Every cell goes through the real commands (as subprocesses, one at a time)::

    lilaw-med import-npz NPZ --format dicom|png|nifti -o DATA      # once per data set
    lilaw-med add-noise DATALIST --kind K --rate R --seed S --splits training,validation -o NOISY
    lilaw-med train --config configs/PRESET.yaml --set data.datalist=NOISY ... -o RUN   # LiLAW on
    lilaw-med audit RUN [--folds 4]

The npz's own validation split is dropped; ``add-noise`` splits a stratified 15% of the training items off as
the validation split (as the pipeline does for a user's datalist) and noises it with the training split; the npz test
split stays clean and unused here (the ``count_dev`` cells train on the val and test images of two
data sets instead: held-out images, no grid cell holds them). cleanlab 2.9 (AGPL: a benchmark-only
extra) gets 4-fold out-of-fold probabilities of the same preset and network trained by the same CLI with LiLAW off
(``lilaw_med.workflows.crossfit``, the code behind ``audit --folds``).

Stages::

    python -m benchmarks.audit_grid --stage dev     # development cells (BreastMNIST, sample tiles): choose
    python -m benchmarks.audit_grid --stage count_dev --train-only   # round 6: held-out multi-class cells
    python -m benchmarks.audit_grid --stage count_dev --evaluate
    python -m benchmarks.audit_grid --stage grid    # the evaluation grid -> benchmarks/RESULTS.md section
    python -m benchmarks.audit_grid --stage dev --cells breastmnist:symmetric:0.3:0  # one cell
    python -m benchmarks.audit_grid --stage round7 --evaluate   # round 7: the ranking score (rule in audit_selection_rule.md)
    python -m benchmarks.audit_grid --stage holdout # a third seed of the grid's cells (after rounds 8-9), then --evaluate
    python -m benchmarks.audit_grid --stage refine  # train --refine at 40% (PneumoniaMNIST), then --evaluate
    python -m benchmarks.audit_grid --stage refine_dev --round 10   # --refine-validation keep vs exclude, then --evaluate
    python -m benchmarks.audit_grid --stage refine_dev --round 11   # --refine-flagged exclude vs relabel, then --evaluate

Runs are cached under ``$LILAW_BENCH_CACHE`` (default ``~/.cache/lilaw-med-bench``): a finished
run (its ``summary.json``) is never trained again. Data: ``../shared/data`` or
``$LILAW_SHARED_DATA``; a missing file skips its cells with a message.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lilaw_med.audit.core import DEFAULT_COUNT_WINDOW

REPO = Path(__file__).resolve().parents[1]
logger = logging.getLogger("benchmarks.audit_grid")

# data set -> (npz, preset, import format, class names, --set overrides giving the native size; "ordinal": the
# classes are grades, which a user says with `lilaw-med audit --ordinal`)
DATASETS: dict[str, dict[str, Any]] = {
    "breastmnist": {"npz": "breastmnist.npz", "preset": "radiology_2d", "format": "dicom",
                    "names": "malignant,normal_or_benign", "set": ["data.options.spatial_size=[28,28]"]},
    "pneumoniamnist_balanced": {"npz": "pneumoniamnist_balanced.npz", "preset": "radiology_2d", "format": "dicom",
                                "names": "normal,pneumonia", "set": ["data.options.spatial_size=[28,28]"]},
    "retinamnist": {"npz": "retinamnist.npz", "preset": "pathology", "format": "png",
                    "names": "grade0,grade1,grade2,grade3,grade4", "set": [], "ordinal": True},
    "pathmnist_1000": {"npz": "pathmnist_1000.npz", "preset": "pathology", "format": "png",
                       "names": "adipose,background,debris,lymphocytes,mucus,smooth_muscle,normal_mucosa,stroma,"
                                "tumor_epithelium", "set": []},
    # held-out images of two grid data sets (their npz val + test splits, never in a grid cell): round 6's
    # multi-class development cells for the counts
    "retinamnist_heldout": {"npz": "retinamnist.npz", "heldout": True, "preset": "pathology", "format": "png",
                            "names": "grade0,grade1,grade2,grade3,grade4", "set": [], "ordinal": True},
    "pathmnist_heldout": {"npz": "pathmnist_1000.npz", "heldout": True, "preset": "pathology", "format": "png",
                          "names": "adipose,background,debris,lymphocytes,mucus,smooth_muscle,normal_mucosa,stroma,"
                                   "tumor_epithelium", "set": []},
    "adrenalmnist3d": {"npz": "adrenalmnist3d.npz", "preset": "radiology_3d", "format": "nifti",
                       "names": "normal,hyperplasia", "set": ["data.options.spatial_size=[28,28,28]"]},
    # the presets' own sample data (seed 11, not the quick start's 0), re-noised from their clean labels
    "sample_tiles": {"sample": "pathology", "preset": "pathology", "set": []},
    "sample_radiology": {"sample": "radiology_2d", "preset": "radiology_2d", "set": []},
}


@dataclass(frozen=True)
class Cell:
    """One (data set, noise kind, rate, seed) cell."""

    dataset: str
    kind: str
    rate: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.dataset}-{self.kind}{self.rate:g}-seed{self.seed}"

    @classmethod
    def parse(cls, text: str) -> Cell:
        d, k, r, s = text.split(":")
        return cls(d, k, float(r), int(s))


DEV_CELLS = [Cell("breastmnist", k, 0.3, s) for k in ("symmetric", "asymmetric", "instance") for s in (0, 1)] + [
    Cell("sample_tiles", k, 0.3, s) for k in ("asymmetric", "instance") for s in (0, 1)
] + [Cell("sample_radiology", k, 0.3, s) for k in ("symmetric", "asymmetric", "instance") for s in (0, 1)]
GRID_CELLS = [
    Cell(d, k, 0.3, s)
    for s in (0, 1)
    for d in ("pathmnist_1000", "retinamnist", "pneumoniamnist_balanced", "adrenalmnist3d")
    for k in ("symmetric", "asymmetric", "instance")
    if d != "adrenalmnist3d" or k == "symmetric"
] + [Cell(d, "asymmetric", 0.3, 2) for d in ("pathmnist_1000", "retinamnist", "pneumoniamnist_balanced")]
"""Seed 0 of every cell first, then seed 1 (a run stopped half-way leaves whole seeds), then a third seed of the
asymmetric cells (issue 25 asks for 3 seeds of systematic noise)."""
HOLDOUT_CELLS = [Cell(d, k, 0.3, 2) for d in ("pathmnist_1000", "retinamnist", "pneumoniamnist_balanced", "adrenalmnist3d")
                 for k in ("symmetric", "instance") if d != "adrenalmnist3d" or k == "symmetric"]
"""A third seed of the grid's non-asymmetric cells, trained after rounds 8 and 9 (which were written after seeds 0 and
1 had been seen): their out-of-sample check (``benchmarks/audit_selection_rule.md``, "Held-out seed")."""
COUNT_DEV_CELLS = [Cell(d, k, 0.3, s) for s in (0, 1) for d in ("pathmnist_heldout", "retinamnist_heldout")
                   for k in ("symmetric", "asymmetric", "instance")]
"""Round 6 (counts): multi-class development cells on images no grid cell holds (the npz's val and test
splits as training items), the failure the first development cells lacked (a slowly learning or ambiguous
multi-class task)."""
REFINE_CELLS = [Cell("pneumoniamnist_balanced", "symmetric", 0.4, s) for s in range(5)]
"""Issue 12 item 4: ``train --refine`` at 40% symmetric noise, clean-test AUROC of the refined run."""
REFINE_DEV_CELLS = [Cell(d, "symmetric", r, s) for d, r in (("breastmnist", 0.2), ("sample_radiology", 0.4))
                    for s in range(5)]
"""Round 10 (refine's validation items): two data sets no refine evaluation uses, where the preset learns."""
REFINE_VARIANTS = {"default": ("keep", "exclude"), "exclude_validation": ("exclude", "exclude"),
                   "relabel": ("keep", "relabel")}
"""A refine variant -> its ``(--refine-validation, --refine-flagged)``; ``default`` is the library's defaults."""
REFINE_ROUNDS = {10: ("default", "exclude_validation"), 11: ("default", "relabel")}
"""Round -> (incumbent, candidate) (``benchmarks/audit_selection_rule.md``)."""


def refine_folder(variant: str) -> str:
    """The refine folder's name: ``refine`` for the defaults (the runs made before the options existed), else
    ``refine_exclude`` (validation items left out) or ``refine_relabel``."""
    return "refine" if variant == "default" else {"exclude_validation": "refine_exclude"}.get(variant, f"refine_{variant}")


def cache_root() -> Path:
    return Path(os.environ.get("LILAW_BENCH_CACHE", Path.home() / ".cache" / "lilaw-med-bench"))


def shared_data() -> Path:
    return Path(os.environ.get("LILAW_SHARED_DATA") or REPO.parent / "shared" / "data")


def _run(cmd: Sequence[str], log: Path) -> None:
    """Runs one CLI command, its output to ``log``; raises with the log's tail on failure."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    with log.open("a", encoding="utf-8") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.call(list(cmd), stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
    if rc != 0:
        tail = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
        raise RuntimeError(f"{' '.join(cmd[:3])} failed (rc {rc}); log {log}:\n" + "\n".join(tail))
    logger.info("%.0f s: %s", time.time() - t0, " ".join(cmd[:4]))


def lilaw(*args: str) -> list[str]:
    return [sys.executable, "-m", "lilaw_med", *args]


def clean_datalist(dataset: str) -> Path:
    """The data set as files plus a datalist without a validation split (written once)."""
    spec = DATASETS[dataset]
    root = cache_root() / "data" / dataset
    out = root / "datalist_train_test.json"
    if out.is_file():
        return out
    if "sample" in spec:
        from lilaw_med.data.sample import write_sample_data

        sample = cache_root() / "data" / "sample_seed11"
        if not (sample / spec["sample"] / "datalist_clean.json").is_file():
            write_sample_data(sample, seed=11)  # not the quick start's seed-0 data
        root = sample
        src = root / spec["sample"] / "datalist_clean.json"
        out = cache_root() / "data" / dataset / "datalist_train_test.json"
        out.parent.mkdir(parents=True, exist_ok=True)
    else:
        npz = shared_data() / spec["npz"]
        if not npz.is_file():
            raise FileNotFoundError(f"{npz} is absent: set LILAW_SHARED_DATA to the folder of the MedMNIST npz files.")
        if spec.get("heldout"):  # the val and test images become the training items (no other split)
            arrays = np.load(npz)
            root.mkdir(parents=True, exist_ok=True)
            npz = root / "heldout.npz"
            np.savez(npz, train_images=np.concatenate([arrays["val_images"], arrays["test_images"]]),
                     train_labels=np.concatenate([arrays["val_labels"].reshape(-1), arrays["test_labels"].reshape(-1)]))
        _run(lilaw("import-npz", str(npz), "--format", spec["format"], "--class-names", spec["names"],
                   "-o", str(root / "files")), root / "import.log")
        src = root / "files" / "datalist.json"
    data = json.loads(src.read_text(encoding="utf-8"))
    data.pop("validation", None)
    data.pop("noise_sidecar", None)
    data.pop("noise", None)
    base = src.parent
    for split in ("training", "test"):
        for item in data.get(split, []):
            image = Path(item["image"])
            item["image"] = str(image if image.is_absolute() else (base / image).resolve())
    out.write_text(json.dumps(data, indent=1), encoding="utf-8")
    return out


def noisy_datalist(cell: Cell) -> Path:
    """The cell's datalist with the training AND validation labels noised (written once).

    ``add-noise`` loads the datalist, which splits a stratified 15% of the training items off as the
    validation split when it has none (as the pipeline would); both splits are noised, so the meta
    step, the best checkpoint and the audit read a validation split as noisy as the training one,
    which is what a user's data gives them.
    """
    out = cache_root() / "data" / cell.dataset / f"noisy_{cell.kind}{cell.rate:g}_seed{cell.seed}_noisyval.json"
    if not out.is_file():
        _run(lilaw("add-noise", str(clean_datalist(cell.dataset)), "--kind", cell.kind, "--rate", str(cell.rate),
                   "--seed", str(cell.seed), "--splits", "training,validation", "-o", str(out)),
             out.with_suffix(".log"))
    return out


def train_args(cell: Cell, lilaw_on: bool = True) -> list[str]:
    """The ``lilaw-med train`` arguments of a cell (without ``-o``)."""
    spec = DATASETS[cell.dataset]
    args = ["train", "--config", str(REPO / "configs" / f"{spec['preset'] if spec['preset'] != 'pathology' else 'pathology_patch'}.yaml"),
            "--set", f"data.datalist={noisy_datalist(cell)}", "--set", "data.sample_data=false",
            "--set", f"train.seed={cell.seed}", "--set", "train.progress=false"]
    for s in spec["set"]:
        args += ["--set", s]
    if not lilaw_on:
        args += ["--set", "lilaw.enabled=false"]
    return args


def run_dir(cell: Cell, variant: str = "lilaw") -> Path:
    return cache_root() / "runs" / cell.name / variant


def reads_datalist(rd: Path, datalist: Path) -> bool:
    """Whether the run folder (or a refine's ``initial/`` run) trained on ``datalist`` (by file name): a
    cached run made from another datalist of the same cell (an older protocol's) is not reused."""
    import yaml

    for config in (rd / "config.yaml", rd / "initial" / "config.yaml"):
        if config.is_file():
            given = (yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("data", {}).get("datalist")
            return given is not None and Path(str(given)).name == datalist.name
    return False


def train(cell: Cell, lilaw_on: bool = True) -> Path:
    """Trains the cell's run once (cached by its ``summary.json`` and its datalist)."""
    rd = run_dir(cell, "lilaw" if lilaw_on else "ce")
    if not ((rd / "summary.json").is_file() and reads_datalist(rd, noisy_datalist(cell))):
        if rd.exists():
            import shutil

            shutil.rmtree(rd)
        _run(lilaw(*train_args(cell, lilaw_on), "-o", str(rd)), rd.parent / f"train_{rd.name}.log")
    return rd


def crossfit(cell: Cell, lilaw_on: bool, folds: int = 4) -> Path:
    """K-fold out-of-fold probabilities of the cell's training items (cached)."""
    from lilaw_med.workflows.crossfit import cross_fit

    rd = train(cell, True)
    out = rd.parent / f"crossfit{folds}_{'lilaw' if lilaw_on else 'ce'}"
    overrides = [] if lilaw_on else ["lilaw.enabled=false"]
    cross_fit(rd, folds=folds, out_dir=out, overrides=overrides)
    return out


def refine(cell: Cell, variant: str) -> Path:
    """``lilaw-med train --refine --refine-validation V --refine-flagged F`` on the cell, LiLAW on, the preset's
    defaults otherwise.

    Args:
        cell: the cell.
        variant: a key of :data:`REFINE_VARIANTS` (its ``V`` and ``F``).

    Returns:
        The refine folder (cached by its ``refine.json``).
    """
    rd = run_dir(cell, refine_folder(variant))
    if not ((rd / "refine.json").is_file() and reads_datalist(rd, noisy_datalist(cell))):
        if rd.exists():
            import shutil

            shutil.rmtree(rd)
        validation, flagged = REFINE_VARIANTS[variant]
        _run(lilaw(*train_args(cell, True), "--refine", "--refine-validation", validation, "--refine-flagged", flagged,
                   "-o", str(rd)), rd.parent / f"train_{rd.name}.log")
    return rd


def evaluate_refine(cell: Cell, variant: str) -> dict[str, Any]:
    """Clean-test AUROC of both runs of a refine, and how many of its exclusions were wrong labels.

    Args:
        cell: the cell.
        variant: the refine variant (a key of :data:`REFINE_VARIANTS`).

    Returns:
        ``cell``, ``variant``; per split the items ``n``, wrong labels ``n_wrong``, exclusions ``n_excluded``
        and wrong labels among them ``excluded_wrong`` (the validation split's keys prefixed ``val_``); the
        relabelled training items ``n_relabelled`` and those whose new label is the true one ``relabelled_right``;
        and ``{initial,refined}_{best,final}_{auroc,accuracy}`` (clean test; accuracy at the calibrated threshold).
    """
    import csv

    from lilaw_med.data.noise import load_noise_truth
    from lilaw_med.utils import unguard_csv_text

    rd = run_dir(cell, refine_folder(variant))
    info = json.loads((rd / "refine.json").read_text(encoding="utf-8"))
    initial = rd / "initial"
    datalist = json.loads((initial / "datalist.json").read_text(encoding="utf-8"))
    truth = load_noise_truth(initial / "datalist.json")
    with (rd / "refine_exclude.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    relabelled: dict[str, int] = {}
    if (rd / "refine_relabel.csv").is_file():
        with (rd / "refine_relabel.csv").open(newline="", encoding="utf-8") as f:
            relabelled = {unguard_csv_text(r["id"]): int(r["label"]) for r in csv.DictReader(f)}
    out: dict[str, Any] = {"cell": cell.name, "variant": variant, "n_relabelled": len(relabelled),
                           "relabelled_right": sum(int(truth.get(i, -1)) == y for i, y in relabelled.items())}
    for split, key in (("training", ""), ("validation", "val_")):
        given = {str(it["id"]): int(it["label"]) for it in datalist.get(split, [])}
        wrong = {i for i, y in given.items() if int(truth.get(i, y)) != y}
        excluded = {unguard_csv_text(r["id"]) for r in rows if r["split"] == split}
        out.update({f"{key}n": len(given), f"{key}n_wrong": len(wrong), f"{key}n_excluded": len(excluded),
                    f"{key}excluded_wrong": len(excluded & wrong)})
    for run in ("initial", "refined"):
        for ckpt in ("best", "final"):
            out[f"{run}_{ckpt}_auroc"] = float(info[run][ckpt]["test"]["auroc"])
            out[f"{run}_{ckpt}_accuracy"] = float(info[run][ckpt]["test_calibrated"]["accuracy"])
    return out


def refine_markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The refine table: per seed, then the mean with a t-interval over seeds."""
    lines = ["| cell | n (wrong) | excluded (wrong among them) | initial AUROC best / final | refined AUROC best / final "
             "| refined accuracy (calibrated) best / final |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['cell']} | {r['n']} ({r['n_wrong']}) | {r['n_excluded']} ({r['excluded_wrong']}) | "
                     f"{_fmt(r['initial_best_auroc'])} / {_fmt(r['initial_final_auroc'])} | "
                     f"{_fmt(r['refined_best_auroc'])} / {_fmt(r['refined_final_auroc'])} | "
                     f"{_fmt(r['refined_best_accuracy'])} / {_fmt(r['refined_final_accuracy'])} |")
    if len(rows) >= 2:
        from scipy import stats

        lines += ["", "| clean-test AUROC (mean over seeds, 95% t-interval) | best checkpoint | final checkpoint |",
                  "|---|---|---|"]
        for run in ("initial", "refined"):
            cells = []
            for ckpt in ("best", "final"):
                v = np.array([r[f"{run}_{ckpt}_auroc"] for r in rows])
                h = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
                cells.append(f"{v.mean():.3f} [{v.mean() - h:.3f}, {v.mean() + h:.3f}]")
            lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def refine_round_markdown(incumbent: Sequence[dict[str, Any]], candidate: Sequence[dict[str, Any]],
                          names: tuple[str, str]) -> str:
    """A refine development round's table and verdict (rounds 10 and 11).

    Args:
        incumbent: :func:`evaluate_refine` rows of the incumbent's runs.
        candidate: the same of the candidate's runs (paired with ``incumbent`` by cell).
        names: ``(incumbent, candidate)`` as the table names them.

    Returns:
        Markdown: per cell, what the candidate left out of the validation split and relabelled, and the
        refined run's clean-test AUROC (best checkpoint, the rule's figure; final too) of both; then the means
        and the rule's choice (the incumbent unless every cell of :data:`REFINE_DEV_CELLS` is done and the
        candidate's mean is higher).
    """
    inc, cand = names
    by_cell = {r["cell"]: r for r in candidate}
    pairs = [(k, by_cell[k["cell"]]) for k in incumbent if k["cell"] in by_cell]
    lines = [f"| cell | validation n (wrong) | {cand}: validation excluded (wrong among them) | {cand}: training "
             f"relabelled (now right) | refined best AUROC {inc} / {cand} | refined final AUROC {inc} / {cand} |",
             "|---|---|---|---|---|---|"]
    for k, e in pairs:
        lines.append(f"| {k['cell']} | {e['val_n']} ({e['val_n_wrong']}) | {e['val_n_excluded']} ({e['val_excluded_wrong']}) | "
                     f"{e['n_relabelled']} ({e['relabelled_right']}) | "
                     f"{_fmt(k['refined_best_auroc'])} / {_fmt(e['refined_best_auroc'])} | "
                     f"{_fmt(k['refined_final_auroc'])} / {_fmt(e['refined_final_auroc'])} |")
    if pairs:
        diff = np.array([e["refined_best_auroc"] - k["refined_best_auroc"] for k, e in pairs])
        inc_mean = float(np.mean([k["refined_best_auroc"] for k, _ in pairs]))
        cand_mean = float(np.mean([e["refined_best_auroc"] for _, e in pairs]))
        verdict = cand if len(pairs) == len(REFINE_DEV_CELLS) and cand_mean > inc_mean else inc
        lines += ["", f"Mean refined best-checkpoint AUROC over {len(pairs)} cells: {inc} {inc_mean:.3f}, {cand} "
                  f"{cand_mean:.3f} (paired difference {diff.mean():+.3f}, {cand} ahead in {int((diff > 0).sum())} of "
                  f"{len(pairs)}). Chosen by the rule: **{verdict}**"
                  + ("" if len(pairs) == len(REFINE_DEV_CELLS) else " (not every cell is done: the incumbent stays)")]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- scoring
WINDOWS = ("best_val_loss", "best_val_accuracy", "best_meta_loss", "all", "last", "fraction",
           "val_loss_at_least_fraction")
SCORES = ("self_confidence", "normalized_margin", "posterior", "self_confidence+adjust", "normalized_margin+adjust")
ROUND7_METHODS = ("self_confidence", "normalized_margin", "posterior")
"""Round 7's candidate ranking scores (``audit_selection_rule.md``), in the rule's tie order."""


@dataclass
class RunView:
    """What the scores need from one run folder."""

    ids: list[str]
    labels: np.ndarray
    true: np.ndarray
    dynamics: dict[str, np.ndarray]
    val_loss: np.ndarray
    val_accuracy: np.ndarray
    meta_loss: np.ndarray
    num_classes: int
    val_dynamics: dict[str, np.ndarray] | None = None
    val_labels: np.ndarray | None = None


def read_run(rd: Path) -> RunView:
    import csv

    from lilaw_med.data.noise import load_noise_truth
    from lilaw_med.run.dynamics_format import load_dynamics

    dyn = load_dynamics(rd)
    datalist = json.loads((rd / "datalist.json").read_text(encoding="utf-8"))
    by_id = {str(it["id"]): it for it in datalist["training"]}
    labels = np.array([int(by_id[i]["label"]) for i in dyn.ids])
    truth = load_noise_truth(rd / "datalist.json")
    true = np.array([int(truth.get(i, labels[j])) for j, i in enumerate(dyn.ids)])
    with (rd / "metrics.csv").open(newline="") as f:
        rows = {int(r["epoch"]): r for r in csv.DictReader(f)}

    def curve(key: str) -> np.ndarray:
        return np.array([float(rows[e][key]) if e in rows and rows[e].get(key) not in ("", None) else np.nan
                         for e in dyn.epochs])

    val_d, val_labels = None, None
    try:
        val = load_dynamics(rd, split="validation")
        meta_loss = np.array([np.nanmean(np.asarray(r["loss"], dtype=np.float64)) for r in val.records])
        if val.has_probs:
            val_d = val.as_dict()
            vby = {str(it["id"]): it for it in datalist["validation"]}
            val_labels = np.array([int(vby[i]["label"]) for i in val.ids])
    except ValueError:
        meta_loss = np.full(len(dyn.epochs), np.nan)
    names = datalist.get("class_names") or []
    d = dyn.as_dict()
    c = max(len(names), int(labels.max()) + 1, d["probs"].shape[-1] if "probs" in d else 0)
    return RunView(dyn.ids, labels, true, d, curve("val_loss"), curve("val_accuracy"), meta_loss, c, val_d, val_labels)


def window_of(run: RunView, name: str):  # noqa: ANN201
    from lilaw_med.audit.window import choose_window

    n = run.dynamics["prob_label"].shape[0]
    if name == "best_meta_loss":
        return choose_window(n, "best_val_loss", val_loss=run.meta_loss)
    return choose_window(n, name, val_loss=run.val_loss, val_accuracy=run.val_accuracy)


def score_probs(labels: np.ndarray, probs: np.ndarray, score: str) -> np.ndarray:
    from lilaw_med.audit.rank import get_label_quality_scores

    method, _, adjust = score.partition("+")
    return get_label_quality_scores(labels, probs, method=method, adjust_pred_probs=bool(adjust))


def flag_quality(flags: np.ndarray, wrong: np.ndarray) -> dict[str, float]:
    tp = float((flags & wrong).sum())
    precision = tp / flags.sum() if flags.any() else float("nan")
    recall = tp / wrong.sum() if wrong.any() else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"n_flagged": int(flags.sum()), "precision": precision, "recall": recall, "f1": f1,
            "count_error": abs(int(flags.sum()) - int(wrong.sum())) / wrong.size}


def final_model_self_confidence(rd: Path, run: RunView) -> np.ndarray:
    """p[given] of the run's final model on its training items (one eval pass, cached beside the run)."""
    from lilaw_med.workflows.crossfit import item_probabilities

    cache = rd.parent / "final_model_probs.npy"
    if cache.is_file():
        probs = np.load(cache)
    else:
        datalist = json.loads((rd / "datalist.json").read_text(encoding="utf-8"))
        by_id = {str(it["id"]): it for it in datalist["training"]}
        probs = item_probabilities(rd, [by_id[i] for i in run.ids], which="final")
        np.save(cache, probs)
    return probs[np.arange(len(run.ids)), run.labels]


def level_table(levels: np.ndarray, wrong: np.ndarray) -> dict[str, dict[str, float]]:
    """Share of items and true mislabel rate per difficulty level."""
    return {lv: {"share": float((levels == lv).mean()),
                 "mislabel_rate": float(wrong[levels == lv].mean()) if (levels == lv).any() else float("nan")}
            for lv in ("easy", "moderate", "hard")}


def shipped_audit(rd: Path, wrong: np.ndarray, ids: Sequence[str], method: str,
                  oof: np.ndarray | None = None, ordinal: bool = False) -> dict[str, Any]:
    """The library's own audit of the run's training items (:func:`lilaw_med.audit.core.audit_split`, every
    default but ``method``; ``oof``: the ``--folds`` probabilities), scored against the truth: ranking, flagged
    count, the 95% interval of the noise rate and whether it holds the true rate, and the identifiability verdict."""
    from lilaw_med.audit.core import AuditOptions, audit_split
    from lilaw_med.audit.detection import detection_quality
    from lilaw_med.audit.record import RunRecord

    record = RunRecord.read(rd)
    audit = audit_split(record, "training", AuditOptions(method=method, thumbnails=False, ordinal=ordinal),
                        oof_probs=oof)
    if list(audit.ids) != list(ids):
        raise ValueError(f"{rd}: the audit's item order differs from the benchmark's")
    lo, hi = audit.noise.overall_interval
    truth = float(wrong.mean())
    return {**detection_quality(audit.scores, wrong), **flag_quality(audit.is_label_issue, wrong),
            "estimate": float(audit.noise.overall), "interval": [float(lo), float(hi)], "true_rate": truth,
            "covers": bool(lo - 1e-9 <= truth <= hi + 1e-9), "identifiable": audit.identifiable,
            "reasons": list(audit.not_identifiable)}


SHIPPED_COUNT_WINDOW = DEFAULT_COUNT_WINDOW
"""The library's ``count_window`` default; this benchmark's window of that name reads ``metrics.csv``'s curve, as the
library's count window does."""


def evaluate_cell(cell: Cell, folds: int = 4) -> dict[str, Any]:
    """Every variant's detection figures on one cell (the truth is used only here, to score)."""
    from lilaw_med.audit.counts import estimate_noise, find_label_issues
    from lilaw_med.audit.detection import detection_quality
    from lilaw_med.audit.difficulty import difficulty
    from lilaw_med.audit.window import ScoringWindow, window_pred_probs
    from lilaw_med.workflows.crossfit import load_cross_fit

    rd = run_dir(cell, "lilaw")
    run = read_run(rd)
    wrong = run.true != run.labels
    out: dict[str, Any] = {"cell": cell.name, "n": int(wrong.size), "n_wrong": int(wrong.sum()), "variants": {},
                           "counts": {}}
    probs_by_window = {}
    for w in WINDOWS:
        win = window_of(run, w)
        probs_by_window[w] = window_probs = window_pred_probs(run.dynamics, run.labels, win, run.num_classes)
        out.setdefault("window_stop", {})[w] = win.stop
        for s in SCORES:
            out["variants"][f"{w}/{s}"] = detection_quality(score_probs(run.labels, window_probs, s), wrong)
        est = estimate_noise(run.labels, window_probs, n_bootstrap=0)
        flags, _ = find_label_issues(score_probs(run.labels, window_probs, "self_confidence"), run.labels, est.n_wrong)
        out["counts"][f"cj/{w}"] = flag_quality(flags, wrong)
        out.setdefault("difficulty", {})[w] = level_table(difficulty(run.labels, window_probs), wrong)
        if run.val_labels is not None:
            val_win = ScoringWindow(win.start, min(win.stop, run.val_dynamics["probs"].shape[0]), win.rule, win.reason)
            val_probs = window_pred_probs(run.val_dynamics, run.val_labels, val_win, run.num_classes)
            rates = estimate_noise(run.val_labels, val_probs, n_bootstrap=0).per_class
            n_flag = np.rint(rates * np.bincount(run.labels, minlength=run.num_classes)).astype(np.int64)
            flags, _ = find_label_issues(score_probs(run.labels, window_probs, "self_confidence"), run.labels, n_flag)
            out["counts"][f"cj_val/{w}"] = flag_quality(flags, wrong)
    at = window_of(run, "best_meta_loss")
    at = ScoringWindow(at.stop - 1, at.stop, "at_best", "the best epoch alone")
    at_probs = window_pred_probs(run.dynamics, run.labels, at, run.num_classes)
    sc = score_probs(run.labels, probs_by_window["best_meta_loss"], "self_confidence")
    est = estimate_noise(run.labels, at_probs, n_bootstrap=0)
    out["counts"]["cj/at_best"] = flag_quality(find_label_issues(sc, run.labels, est.n_wrong)[0], wrong)
    if run.val_labels is not None and at.stop <= run.val_dynamics["probs"].shape[0]:
        from lilaw_med.audit.rank import confident_thresholds

        val_at = window_pred_probs(run.val_dynamics, run.val_labels, at, run.num_classes)
        thr = confident_thresholds(run.val_labels, val_at)
        est = estimate_noise(run.labels, at_probs, n_bootstrap=0, thresholds=thr)
        out["counts"]["cj/at_best_valthr"] = flag_quality(find_label_issues(sc, run.labels, est.n_wrong)[0], wrong)
    # the shipped audit as the library runs it: the count from the count window, the flags from the scores
    shipped_n = estimate_noise(run.labels, probs_by_window[SHIPPED_COUNT_WINDOW], n_bootstrap=0).n_wrong
    out["counts"]["shipped/one_run"] = flag_quality(find_label_issues(sc, run.labels, shipped_n)[0], wrong)
    from lilaw_med.audit.difficulty import lilaw_term_difficulty

    d = run.dynamics
    out["difficulty"]["lilaw_terms"] = level_table(lilaw_term_difficulty(d["w_alpha"], d["w_beta"], d["w_delta"]), wrong)
    out["variants"]["final_model/self_confidence"] = detection_quality(final_model_self_confidence(rd, run), wrong)
    ordinal = bool(DATASETS[cell.dataset].get("ordinal"))
    out["shipped"] = {f"one_run/{m}": shipped_audit(rd, wrong, run.ids, m, ordinal=ordinal) for m in ROUND7_METHODS}
    for variant in ("lilaw", "ce"):
        cf_dir = rd.parent / f"crossfit{folds}_{variant}"
        try:
            cf = load_cross_fit(cf_dir)
        except FileNotFoundError:
            continue
        oof = cf.aligned(run.ids)
        for s in SCORES:
            out["variants"][f"oof_{variant}/{s}"] = detection_quality(score_probs(run.labels, oof, s), wrong)
        for w in ("best_meta_loss", "all"):
            mixed = (oof + probs_by_window[w]) / 2
            for s in SCORES:
                out["variants"][f"oof_{variant}+{w}/{s}"] = detection_quality(score_probs(run.labels, mixed, s), wrong)
        est = estimate_noise(run.labels, oof, n_bootstrap=0)
        flags, _ = find_label_issues(score_probs(run.labels, oof, "self_confidence"), run.labels, est.n_wrong)
        out["counts"][f"cj/oof_{variant}"] = flag_quality(flags, wrong)
        if variant == "ce":  # --folds: scores on the mean of the out-of-fold and the window's probabilities
            mixed = score_probs(run.labels, (oof + probs_by_window["best_meta_loss"]) / 2, "self_confidence")
            out["counts"]["shipped/folds"] = flag_quality(find_label_issues(mixed, run.labels, shipped_n)[0], wrong)
        if variant == "ce":  # the library's --folds 4 (LiLAW-off fold models, best checkpoint: what cleanlab reads)
            for m in ROUND7_METHODS:
                out["shipped"][f"folds/{m}"] = shipped_audit(rd, wrong, run.ids, m, oof, ordinal=ordinal)
            try:
                from cleanlab.filter import find_label_issues as cl_find
                from cleanlab.rank import get_label_quality_scores as cl_scores

                out["variants"]["cleanlab"] = detection_quality(cl_scores(run.labels, oof), wrong)
                out["counts"]["cleanlab"] = flag_quality(cl_find(run.labels, oof), wrong)
            except ImportError:
                logger.warning("cleanlab is not installed (pip install -e '.[compare]'): no cleanlab baseline")
    return out


def variant_table(results: Sequence[dict[str, Any]], baseline: str = "last/self_confidence") -> list[dict[str, Any]]:
    """Per variant: mean AUROC over the cells, the worst cell's margin over ``baseline``, cells counted."""
    names = sorted({v for r in results for v in r["variants"]})
    rows = []
    for v in names:
        cells = [r for r in results if v in r["variants"]]
        auroc = np.array([r["variants"][v]["auroc"] for r in cells], dtype=np.float64)
        base = np.array([r["variants"][baseline]["auroc"] for r in cells], dtype=np.float64)
        rows.append({"variant": v, "cells": len(cells), "mean_auroc": float(np.nanmean(auroc)),
                     "min_auroc": float(np.nanmin(auroc)), "worst_margin": float(np.nanmin(auroc - base)),
                     "mean_ap": float(np.nanmean([r["variants"][v]["average_precision"] for r in cells]))})
    return sorted(rows, key=lambda r: -r["mean_auroc"])


def count_table(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    names = sorted({v for r in results for v in r["counts"]})
    rows = []
    for v in names:
        cells = [r["counts"][v] for r in results if v in r["counts"]]
        rows.append({"counts": v, "cells": len(cells),
                     **{k: float(np.nanmean([c[k] for c in cells])) for k in ("count_error", "precision", "recall", "f1")},
                     "max_count_error": float(np.nanmax([c["count_error"] for c in cells]))})
    return sorted(rows, key=lambda r: r["count_error"])


def _fmt(v: Any, d: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.{d}f}"


def dev_markdown(results: Sequence[dict[str, Any]]) -> str:
    """The development tables (every variant), for docs/audit.md."""
    lines = ["| variant (window/score) | cells | mean AUROC | worst cell | worst margin over last-epoch self-confidence | mean AP |",
             "|---|---|---|---|---|---|"]
    for r in variant_table(results):
        lines.append(f"| {r['variant']} | {r['cells']} | {_fmt(r['mean_auroc'])} | {_fmt(r['min_auroc'])} | "
                     f"{r['worst_margin']:+.3f} | {_fmt(r['mean_ap'])} |")
    lines += ["", "| counts (confident joint on) | cells | mean count error | worst cell | precision | recall | F1 |",
              "|---|---|---|---|---|---|---|"]
    for r in count_table(results):
        lines.append(f"| {r['counts']} | {r['cells']} | {_fmt(r['count_error'])} | {_fmt(r['max_count_error'])} | "
                     f"{_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} |")
    return "\n".join(lines)


def difficulty_markdown(results: Sequence[dict[str, Any]], window: str = "best_meta_loss") -> str:
    lines = ["| cell | easy: share / true mislabel rate | moderate | hard | LiLAW terms (first definition): easy | moderate | hard |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        d, t = r["difficulty"][window], r["difficulty"]["lilaw_terms"]
        cells = [f"{_fmt(d[lv]['share'], 2)} / {_fmt(d[lv]['mislabel_rate'], 2)}" for lv in ("easy", "moderate", "hard")]
        cells += [f"{_fmt(t[lv]['share'], 2)} / {_fmt(t[lv]['mislabel_rate'], 2)}" for lv in ("easy", "moderate", "hard")]
        lines.append(f"| {r['cell']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cl(r: dict[str, Any]) -> tuple[float, float]:
    return r["variants"]["cleanlab"]["auroc"], r["counts"]["cleanlab"]["count_error"]


def grid_markdown(results: Sequence[dict[str, Any]], method: str | None = None) -> str:
    """The evaluation grid: per cell, the library's audit (one run; ``--folds 4``) against cleanlab on the same
    fold models (LiLAW off, each fold model's best checkpoint), then the floors of issue 25."""
    from lilaw_med.audit.core import DEFAULT_METHOD

    method = method or DEFAULT_METHOD
    one, folds = f"one_run/{method}", f"folds/{method}"
    rows = [r for r in results if one in r.get("shipped", {}) and "cleanlab" in r["variants"]]
    lines = [f"Ranking score `{method}`. AUROC of the ranking; count error = |flagged - wrong| / n; interval = the "
             "audit's 95% interval of the share of wrong labels (`covers`: it holds the true share); "
             "`identifiable`: the audit's own verdict.", "",
             "| cell | n (wrong) | true share | one run: AUROC | estimate [95% interval] | covers | identifiable | "
             "count error | --folds 4: AUROC | count error | cleanlab: AUROC | count error | one run - cleanlab | "
             "folds - cleanlab |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        o, f = r["shipped"][one], r["shipped"].get(folds)
        cl_auroc, cl_err = _cl(r)
        lines.append(
            f"| {r['cell']} | {r['n']} ({r['n_wrong']}) | {o['true_rate']:.3f} | {_fmt(o['auroc'])} | "
            f"{o['estimate']:.3f} [{o['interval'][0]:.3f}, {o['interval'][1]:.3f}] | {'yes' if o['covers'] else '**no**'} | "
            f"{'yes' if o['identifiable'] else 'no'} | {_fmt(o['count_error'])} | "
            f"{_fmt(f['auroc']) if f else 'n/a'} | {_fmt(f['count_error']) if f else 'n/a'} | {_fmt(cl_auroc)} | "
            f"{_fmt(cl_err)} | {o['auroc'] - cl_auroc:+.3f} | {(f['auroc'] - cl_auroc) if f else math.nan:+.3f} |")
    if not rows:
        return "\n".join(lines)
    one_a = np.array([r["shipped"][one]["auroc"] for r in rows])
    fold_a = np.array([r["shipped"][folds]["auroc"] if folds in r["shipped"] else np.nan for r in rows])
    cl_a = np.array([_cl(r)[0] for r in rows])
    covers = [r["shipped"][one]["covers"] for r in rows]
    ident = [r for r in rows if r["shipped"][one]["identifiable"]]
    ident_ok = [r for r in ident if r["shipped"][one]["count_error"] <= 0.10]
    lines += ["", "| floor (issue 25) | figure | met |", "|---|---|---|",
              f"| 95% interval holds the true share in >= 90% of cells | {sum(covers)} of {len(rows)} "
              f"({100 * np.mean(covers):.0f}%) | {'yes' if np.mean(covers) >= 0.9 else 'no'} |",
              f"| count error <= 0.10 where the audit says identifiable | {len(ident_ok)} of {len(ident)} identifiable "
              f"cells ({len(rows) - len(ident)} said not identifiable) | {'yes' if len(ident_ok) == len(ident) else 'no'} |",
              f"| one-run mean AUROC >= cleanlab's | {one_a.mean():.3f} vs {cl_a.mean():.3f} | "
              f"{'yes' if one_a.mean() >= cl_a.mean() else 'no'} |",
              f"| no cell more than 0.02 below cleanlab | worst {np.min(one_a - cl_a):+.3f} | "
              f"{'yes' if np.min(one_a - cl_a) >= -0.02 else 'no'} |",
              f"| --folds 4 >= cleanlab in every cell | {int(np.sum(fold_a >= cl_a))} of {len(rows)}, worst "
              f"{np.nanmin(fold_a - cl_a):+.3f} | {'yes' if np.all(fold_a >= cl_a) else 'no'} |"]
    by_cell: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if "-asymmetric" in r["cell"]:
            by_cell.setdefault(r["cell"].rsplit("-seed", 1)[0], []).append(r)
    for name, group in sorted(by_cell.items()):
        d = np.array([r["shipped"][one]["auroc"] - _cl(r)[0] for r in group])
        lines.append(f"| asymmetric {name}: one-run mean >= cleanlab's over >= 3 seeds, no seed < -0.02 | "
                     f"{len(group)} seeds, mean {d.mean():+.3f}, worst {d.min():+.3f} | "
                     f"{'yes' if len(group) >= 3 and d.mean() >= 0 and d.min() >= -0.02 else 'no'} |")
    return "\n".join(lines)


def round7_report(results: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Round 7's rule (``audit_selection_rule.md``) over the development cells evaluated so far."""
    kinds = ("symmetric", "asymmetric", "instance")
    table: dict[str, dict[str, float]] = {}
    for m in ROUND7_METHODS:
        vals = [(r["cell"], r["shipped"][f"one_run/{m}"]["auroc"]) for r in results if f"one_run/{m}" in r.get("shipped", {})]
        table[m] = {"all": float(np.nanmean([v for _, v in vals])), "cells": len(vals)}
        for k in kinds:
            table[m][k] = float(np.nanmean([v for c, v in vals if f"-{k}" in c]))
    inc = table[ROUND7_METHODS[0]]
    eligible = [m for m in ROUND7_METHODS
                if all(table[m][k] >= inc[k] - 0.01 for k in ("symmetric", "instance"))]
    top = max(table[m]["all"] for m in eligible)
    chosen = next(m for m in ROUND7_METHODS if m in eligible and table[m]["all"] >= top - 0.005)
    md = ["| method | cells | mean AUROC (one run) | symmetric | asymmetric | instance | eligible |", "|---|---|---|---|---|---|---|"]
    for m in ROUND7_METHODS:
        t = table[m]
        md.append(f"| {m} | {t['cells']} | {t['all']:.3f} | {t['symmetric']:.3f} | {t['asymmetric']:.3f} | "
                  f"{t['instance']:.3f} | {'yes' if m in eligible else 'no'} |")
    md.append(f"\nChosen by the rule: **{chosen}**")
    return {"table": table, "chosen": chosen, "markdown": "\n".join(md)}


def grid_report(results: Sequence[dict[str, Any]]) -> str:
    """The grid section of ``benchmarks/RESULTS.md``: how it was made, then the tables."""
    import platform

    import monai
    import sklearn
    import torch

    try:
        import cleanlab

        cl = cleanlab.__version__
    except ImportError:
        cl = "not installed"
    done = {r["cell"] for r in results}
    missing = [c.name for c in GRID_CELLS if c.name not in done]
    head = [
        "- Command: `python -m benchmarks.audit_grid --stage grid` (train and cross-fit what is not cached), then "
        "`python -m benchmarks.audit_grid --stage grid --evaluate`.",
        f"- Machine: {platform.platform()}, {os.cpu_count()} CPUs shared with other work; date "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, monai {monai.__version__}, "
        f"scikit-learn {sklearn.__version__}, cleanlab {cl}.",
        "- Each cell through the CLI: `import-npz`, `add-noise --splits training,validation` (30%; the npz validation split "
        "dropped; add-noise splits 15% of the training items off as validation and noises both), `train` with the preset's default network (`small_cnn`) "
        "at the data's native size (radiology_2d for PneumoniaMNIST, pathology for PathMNIST and RetinaMNIST (RGB), "
        "radiology_3d for AdrenalMNIST3D), LiLAW on; `audit` with the shipped defaults (RetinaMNIST with `--ordinal`: its classes are grades). "
        "cleanlab gets 4-fold "
        "out-of-fold probabilities of the same preset with LiLAW off, each fold model's best checkpoint by the noisy "
        "validation key metric (the model `lilaw-med predict` uses), which `--folds 4` shares.",
        f"- Cells done: {len(done)} of {len(GRID_CELLS)}" + (f"; not yet run: {', '.join(missing)}" if missing else "") + ".",
    ]
    return ("\n".join(head) + "\n\n" + grid_markdown(results) + "\n\nDifficulty (share / true mislabel rate):\n\n"
            + difficulty_markdown(results) + "\n")


def cells_for(stage: str, only: Iterable[str] | None) -> list[Cell]:
    if only:
        return [Cell.parse(c) for c in only]
    return {"dev": DEV_CELLS, "count_dev": COUNT_DEV_CELLS, "grid": GRID_CELLS, "refine": REFINE_CELLS,
            "refine_dev": REFINE_DEV_CELLS, "round7": COUNT_DEV_CELLS + DEV_CELLS, "holdout": HOLDOUT_CELLS}[stage]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stage", choices=("dev", "count_dev", "grid", "holdout", "refine", "refine_dev", "round7"),
                        default="dev",
                        help="holdout: a third seed of the grid's cells, the out-of-sample check of rounds 8-9; "
                        "round7: the ranking score's development cells (count_dev + dev) and its rule; "
                        "refine_dev: a refine round's cells, its incumbent and candidate, and its rule")
    parser.add_argument("--refine-variant", choices=tuple(REFINE_VARIANTS), default="default",
                        help="refine stage: which refine (default: the library's defaults)")
    parser.add_argument("--round", type=int, choices=tuple(REFINE_ROUNDS), default=max(REFINE_ROUNDS),
                        help="refine_dev stage: the round (default %(default)s)")
    parser.add_argument("--cells", nargs="*", help="DATASET:KIND:RATE:SEED cells instead of the stage's")
    parser.add_argument("--train-only", action="store_true", help="train the one-run audits only (no cross-fitting)")
    parser.add_argument("--fold-models", choices=("ce", "lilaw", "both"), default="ce",
                        help="which fold models to cross-fit: LiLAW off (the --folds default and cleanlab's "
                        "baseline), LiLAW on, or both (default %(default)s)")
    parser.add_argument("--folds", type=int, default=4)
    parser.add_argument("--evaluate", action="store_true", help="score the cached runs (no training)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.stage in ("refine", "refine_dev"):
        from lilaw_med.utils import atomic_write

        variants = REFINE_ROUNDS[args.round] if args.stage == "refine_dev" else (args.refine_variant,)
        rows: dict[str, list[dict[str, Any]]] = {v: [] for v in variants}
        for cell in cells_for(args.stage, args.cells):
            for v in variants:
                if not args.evaluate:
                    refine(cell, v)
                if (run_dir(cell, refine_folder(v)) / "refine.json").is_file():
                    rows[v].append(evaluate_refine(cell, v))
        if args.evaluate and args.stage == "refine" and rows[args.refine_variant]:
            validation, flagged = REFINE_VARIANTS[args.refine_variant]
            md = (f"`--refine-validation {validation} --refine-flagged {flagged}`\n\n"
                  + refine_markdown(rows[args.refine_variant]))
            name = "audit_refine" if args.refine_variant == "default" else f"audit_refine_{args.refine_variant}"
            atomic_write(REPO / "benchmarks" / f"{name}.md", md + "\n")
            print(md)
        if args.evaluate and args.stage == "refine_dev":
            md = refine_round_markdown(rows[variants[0]], rows[variants[1]], variants)
            atomic_write(cache_root() / f"eval_round{args.round}.md", md + "\n")
            print(md)
        return 0
    if args.evaluate:
        results = []
        for cell in cells_for(args.stage, args.cells):
            done = run_dir(cell, "lilaw").parent / f"crossfit{args.folds}_ce" / "oof_probs.npy"
            if (run_dir(cell, "lilaw") / "summary.json").is_file() and (done.is_file() or args.stage not in ("grid", "holdout")):
                results.append(evaluate_cell(cell, args.folds))
        out = cache_root() / f"eval_{args.stage}.json"
        out.write_text(json.dumps(results, indent=1, default=float), encoding="utf-8")
        for row in variant_table(results):
            print(f"{row['variant']:55s} cells {row['cells']:2d}  AUROC mean {row['mean_auroc']:.3f} min {row['min_auroc']:.3f}"
                  f"  worst margin vs last-epoch {row['worst_margin']:+.3f}  AP {row['mean_ap']:.3f}")
        for row in count_table(results):
            print(f"{row['counts']:30s} cells {row['cells']:2d}  count error {row['count_error']:.3f} (max "
                  f"{row['max_count_error']:.3f})  precision {row['precision']:.3f} recall {row['recall']:.3f} F1 {row['f1']:.3f}")
        md = cache_root() / f"eval_{args.stage}.md"
        md.write_text(dev_markdown(results) + "\n\n" + difficulty_markdown(results) + "\n\n" + grid_markdown(results) + "\n",
                      encoding="utf-8")
        if args.stage == "round7":
            rep = round7_report(results)
            (cache_root() / "eval_round7.md").write_text(rep["markdown"] + "\n", encoding="utf-8")
            print(rep["markdown"])
        if args.stage == "grid":
            from lilaw_med.utils import atomic_write

            atomic_write(REPO / "benchmarks" / "audit_grid.md", grid_report(results))
        print(out, md)
        return 0
    for cell in cells_for(args.stage, args.cells):
        try:
            train(cell, True)
            if not args.train_only:
                if args.fold_models in ("ce", "both"):
                    crossfit(cell, lilaw_on=False, folds=args.folds)
                if args.fold_models in ("lilaw", "both"):
                    crossfit(cell, lilaw_on=True, folds=args.folds)
        except FileNotFoundError as e:
            logger.warning("skipped %s: %s", cell.name, e)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
