"""LiLAW against plain training in the presets, through ``lilaw-med train`` (issue 24).

Every run is the real command a user types (a subprocess, one at a time), on MedMNIST images
written as files by ``lilaw-med import-npz`` and noised by ``lilaw-med add-noise`` (the data
preparation of :mod:`benchmarks.audit_grid`)::

    lilaw-med train --config configs/PRESET.yaml --set data.datalist=NOISY --set train.seed=S
                    [--set VARIANT ...] -o RUN

Two stages:

* ``dev``: the development cells (BreastMNIST and the held-out val + test images of PathMNIST-1000
  and RetinaMNIST, images no evaluation cell holds) x the candidate schedules of the meta step x 3
  seeds. The rule that picks the default reads noisy-validation figures only and was committed
  before any figure existed (``benchmarks/preset_gain_rule.md``).
* ``eval``: the evaluation cells (PneumoniaMNIST-balanced, RetinaMNIST, PathMNIST-1000 x noise
  levels) x {CE, the chosen LiLAW} x 10 seeds; clean-test AUROC and calibrated accuracy of the final
  and the best checkpoint, and the scalars' end points.

Usage::

    python -m benchmarks.preset_gain --stage dev --round 1    # round 1 (the schedule): train what is missing, report
    python -m benchmarks.preset_gain --stage dev              # round 2 (the meta objective, against round 1's choice)
    python -m benchmarks.preset_gain --stage eval --seeds 10
    python -m benchmarks.preset_gain --stage eval --report    # report from the cache only
    python -m benchmarks.preset_gain --stage refine           # train --refine at 40%: the share won back
    python -m benchmarks.preset_gain --stage resnet           # model.network=resnet18, PathMNIST-1000 40%, 5 seeds

Runs are cached under ``$LILAW_BENCH_CACHE/preset_gain`` (a run with a ``summary.json`` is never
trained again). Set ``PYTHONPATH`` to a frozen copy of the tree to keep a long queue on one code
version while the tree changes.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.audit_grid import (
    DATASETS,
    REFINE_VARIANTS,
    REPO,
    Cell,
    _run,
    cache_root,
    clean_datalist,
    lilaw,
    noisy_datalist,
    reads_datalist,
)
from benchmarks.harness import mean_ci, paired_difference
from lilaw_med.utils import atomic_write

logger = logging.getLogger("benchmarks.preset_gain")

LILAW_COMMON = ["lilaw.enabled=true", "lilaw.warmup_epochs=1", "lilaw.meta_every=1", "lilaw.val_mode=train"]
VARIANTS: dict[str, list[str]] = {
    "ce": ["lilaw.enabled=false"],
    "spec": [*LILAW_COMMON, "lilaw.epoch_budget=null"],
    "budget16": [*LILAW_COMMON, "lilaw.epoch_budget=16"],
    "budget32": [*LILAW_COMMON, "lilaw.epoch_budget=32"],
    "budget64": [*LILAW_COMMON, "lilaw.epoch_budget=64"],
    "budget32_eval": [*LILAW_COMMON, "lilaw.epoch_budget=32", "lilaw.val_mode=eval"],
    "norm32": [*LILAW_COMMON, "lilaw.epoch_budget=32", "lilaw.meta_objective=normalized"],
    "norm32_lr0.1": [*LILAW_COMMON, "lilaw.epoch_budget=32", "lilaw.meta_objective=normalized", "lilaw.lr=0.1"],
}
"""Variant -> ``--set`` overrides. Every LiLAW variant has the prototype's one-epoch warm-up."""
CANDIDATES = ("spec", "budget16", "budget32", "budget64", "budget32_eval")
"""Round 1 (``preset_gain_rule.md``): the meta step's schedule."""
ROUND2 = ("norm32", "norm32_lr0.1")
"""Round 2: the normalised meta objective, against round 1's choice ``budget32``."""
INCUMBENT = "budget32"

DEV_CELLS = [
    Cell(d, "symmetric", r, s)
    for s in (0, 1, 2)
    for d, r in (("breastmnist", 0.2), ("breastmnist", 0.4), ("pathmnist_heldout", 0.4),
                 ("pathmnist_heldout", 0.6), ("retinamnist_heldout", 0.4))
]
EVAL_LEVELS = {
    "pneumoniamnist_balanced": (0.0, 0.2, 0.4),
    "retinamnist": (0.0, 0.2, 0.4, 0.6),
    "pathmnist_1000": (0.0, 0.2, 0.4, 0.6),
}


REFINE_DATASETS = ("pneumoniamnist_balanced", "pathmnist_1000")
"""``train --refine`` with LiLAW at 40% noise, against CE with clean and with noisy labels."""


def eval_cells(seeds: int) -> list[Cell]:
    """Seed-major: a queue stopped half-way leaves whole seeds of every cell."""
    return [Cell(d, "symmetric" if r > 0 else "none", r, s)
            for s in range(seeds) for d, levels in EVAL_LEVELS.items() for r in levels]


def datalist_of(cell: Cell) -> Path:
    return clean_datalist(cell.dataset) if cell.kind == "none" else noisy_datalist(cell)


def run_path(cell: Cell, variant: str) -> Path:
    return cache_root() / "preset_gain" / cell.name / variant


RESNET_CELLS = [Cell("pathmnist_1000", "symmetric", 0.4, s) for s in range(5)]
"""The presets' GPU-class network (``model.network: resnet18``) on the cheapest noisy multi-class cell."""


def refine_name(variant: str, refine_variant: str) -> str:
    """The folder name of a ``train --refine`` run.

    Args:
        variant: the LiLAW variant (a key of :data:`VARIANTS`).
        refine_variant: the refine variant (a key of :data:`benchmarks.audit_grid.REFINE_VARIANTS`).

    Returns:
        ``refine_<variant>`` for the refine defaults (the runs made before the refine options existed),
        else ``refine_<refine_variant>_<variant>``.
    """
    return f"refine_{variant}" if refine_variant == "default" else f"refine_{refine_variant}_{variant}"


def train(cell: Cell, variant: str, refine: bool = False, network: str | None = None,
          refine_variant: str = "default") -> Path:
    """Trains one (cell, variant) through ``lilaw-med train`` once (cached by ``summary.json``;
    ``refine``: ``train --refine`` with ``refine_variant``'s flags, cached by ``refine.json``;
    ``network``: another ``model.network``)."""
    name = refine_name(variant, refine_variant) if refine else variant
    rd = run_path(cell, f"{network}_{name}" if network else name)
    if (rd / ("refine.json" if refine else "summary.json")).is_file() and reads_datalist(rd, datalist_of(cell)):
        return rd
    if rd.exists():
        shutil.rmtree(rd)
    spec = DATASETS[cell.dataset]
    preset = "pathology_patch" if spec["preset"] == "pathology" else spec["preset"]
    sets = [f"data.datalist={datalist_of(cell)}", "data.sample_data=false", f"train.seed={cell.seed}",
            "train.progress=false", *spec["set"], *VARIANTS[variant]]
    if network:
        sets.append(f"model.network={network}")
    args = ["train", "--config", str(REPO / "configs" / f"{preset}.yaml")]
    for s in sets:
        args += ["--set", s]
    if refine:
        validation, flagged = REFINE_VARIANTS[refine_variant]
        args += ["--refine", "--refine-validation", validation, "--refine-flagged", flagged]
    _run(lilaw(*args, "-o", str(rd)), rd.parent / f"train_{rd.name}.log")
    return rd


@dataclass
class Figures:
    """What the tables read from one run's ``summary.json``."""

    val_auroc_final: float
    val_auroc_best: float
    test: dict[str, dict[str, float]]
    scalars: dict[str, float]
    seconds: float


def _auroc(section: dict[str, Any] | None) -> float:
    if not section or section.get("auroc") is None:
        return math.nan
    return float(section["auroc"])


def read(rd: Path) -> Figures:
    s = json.loads((rd / "summary.json").read_text(encoding="utf-8"))
    test: dict[str, dict[str, float]] = {}
    for ckpt in ("final", "best"):
        sec = s.get(ckpt) or {}
        cal = sec.get("test_calibrated") or {}
        test[ckpt] = {"auroc": _auroc(sec.get("test")), "accuracy_calibrated": float(cal.get("accuracy", math.nan))}
    lil = s.get("lilaw") or {}
    scalars = {k: float(lil[k]) for k in ("alpha", "beta", "delta") if isinstance(lil.get(k), (int, float))}
    return Figures(_auroc((s.get("final") or {}).get("validation")), _auroc((s.get("best") or {}).get("validation")),
                   test, scalars, float(s.get("seconds", math.nan)))


def _pct(d: dict[str, float]) -> str:
    if not math.isfinite(d.get("mean", math.nan)):
        return "n/a"
    if not math.isfinite(d.get("ci_low", math.nan)):
        return f"{100 * d['mean']:+.1f}"
    return f"{100 * d['mean']:+.1f} [{100 * d['ci_low']:+.1f}, {100 * d['ci_high']:+.1f}]"


def dev_report(seeds: Sequence[int] = (0, 1, 2), round_: int = 1) -> dict[str, Any]:
    """The rule of ``preset_gain_rule.md`` (``round_`` 1 or 2) over the development cells that are complete."""
    candidates = CANDIDATES if round_ == 1 else (INCUMBENT, *ROUND2)
    cells: dict[tuple[str, float], list[Cell]] = {}
    for c in DEV_CELLS:
        if c.seed in seeds:
            cells.setdefault((c.dataset, c.rate), []).append(c)
    rows, qualifying = [], []
    for key, group in cells.items():
        done = [c for c in group if all((run_path(c, v) / "summary.json").is_file() for v in ("ce", *candidates))]
        if len(done) < len(group):
            rows.append({"cell": f"{key[0]} {key[1]:g}", "complete": False})
            continue
        ce = [read(run_path(c, "ce")) for c in done]
        ce_val = mean_ci([f.val_auroc_final for f in ce])
        row: dict[str, Any] = {"cell": f"{key[0]} {key[1]:g}", "complete": True, "ce_val_auroc_final": ce_val["mean"]}
        row["qualifies"] = bool(ce_val["mean"] >= 0.65)
        for v in candidates:
            lil = [read(run_path(c, v)) for c in done]
            row[v] = {
                "final": paired_difference([f.val_auroc_final for f in lil], [f.val_auroc_final for f in ce]),
                "best": paired_difference([f.val_auroc_best for f in lil], [f.val_auroc_best for f in ce]),
                "alpha": mean_ci([f.scalars.get("alpha", math.nan) for f in lil])["mean"],
                "beta": mean_ci([f.scalars.get("beta", math.nan) for f in lil])["mean"],
                "delta": mean_ci([f.scalars.get("delta", math.nan) for f in lil])["mean"],
            }
        rows.append(row)
        if row["qualifies"]:
            qualifying.append(row)
    scores = {v: (sum(r[v]["final"]["mean"] + r[v]["best"]["mean"] for r in qualifying) / (2 * len(qualifying))
                  if qualifying else math.nan) for v in candidates}
    md = ["| cell | CE noisy-val AUROC | qualifies | " + " | ".join(candidates) + " |",
          "|---|---|---|" + "---|" * len(candidates)]
    for r in rows:
        if not r["complete"]:
            md.append(f"| {r['cell']} | (incomplete) | | " + " | ".join("" for _ in candidates) + " |")
            continue
        cells_md = [f"final {_pct(r[v]['final'])}, best {_pct(r[v]['best'])}; a/b/d {r[v]['alpha']:.2f}/"
                    f"{r[v]['beta']:.2f}/{r[v]['delta']:.2f}" for v in candidates]
        md.append(f"| {r['cell']} | {r['ce_val_auroc_final']:.3f} | {'yes' if r['qualifies'] else 'no'} | "
                  + " | ".join(cells_md) + " |")
    md.append("")
    md.append("Score (mean paired LiLAW - CE noisy-validation AUROC, final and best averaged, qualifying cells): "
              + ", ".join(f"{v} {100 * scores[v]:+.2f}" for v in candidates))
    finite = {v: s for v, s in scores.items() if math.isfinite(s)}
    chosen = None
    if finite and all(r["complete"] for r in rows):
        if round_ == 1:
            best = max(finite.values())
            # tie rule of preset_gain_rule.md: within 0.2 points of the best, the smallest budget, then train mode
            order = ["budget16", "budget32", "budget32_eval", "budget64", "spec"]
            chosen = next(v for v in order if v in finite and finite[v] >= best - 0.002)
        else:
            # round 2: the best new candidate (ties within 0.2 points to the first of ROUND2) replaces the
            # incumbent only if it leads it by more than 0.2 points
            new_best = max(finite[v] for v in ROUND2 if v in finite)
            challenger = next(v for v in ROUND2 if v in finite and finite[v] >= new_best - 0.002)
            chosen = challenger if new_best > finite.get(INCUMBENT, -math.inf) + 0.002 else INCUMBENT
        md.append(f"Chosen by the rule: **{chosen}**")
    return {"rows": rows, "scores": scores, "chosen": chosen, "markdown": "\n".join(md)}


def eval_report(variant: str, seeds: int, network: str | None = None) -> dict[str, Any]:
    """CE against ``variant`` on every evaluation cell (``network``: the ResNet cells), paired by seed."""
    md = [f"LiLAW ({variant}) - CE, clean-test figures in points, mean [95% CI] over paired seeds",
          "", "| data set | noise | seeds | final AUROC | best AUROC | final cal. acc. | best cal. acc. | "
          "CE final / best AUROC | alpha / beta / delta |", "|---|---|---|---|---|---|---|---|---|"]
    out = []
    pre = f"{network}_" if network else ""
    levels_of = {"pathmnist_1000": (0.4,)} if network else EVAL_LEVELS
    cells = RESNET_CELLS if network else eval_cells(seeds)
    for dataset, levels in levels_of.items():
        for rate in levels:
            group = [c for c in cells if c.dataset == dataset and c.rate == rate]
            done = [c for c in group
                    if all((run_path(c, pre + v) / "summary.json").is_file() for v in ("ce", variant))]
            if not done:
                continue
            ce = [read(run_path(c, pre + "ce")) for c in done]
            li = [read(run_path(c, pre + variant)) for c in done]
            row = {"dataset": dataset, "rate": rate, "seeds": len(done)}
            for ckpt in ("final", "best"):
                for m in ("auroc", "accuracy_calibrated"):
                    row[f"{ckpt}_{m}"] = paired_difference([f.test[ckpt][m] for f in li], [f.test[ckpt][m] for f in ce])
            row["ce_auroc"] = {k: mean_ci([f.test[k]["auroc"] for f in ce])["mean"] for k in ("final", "best")}
            row["scalars"] = {k: mean_ci([f.scalars.get(k, math.nan) for f in li])["mean"] for k in ("alpha", "beta", "delta")}
            out.append(row)
            md.append(f"| {dataset} | {rate:g} | {len(done)} | {_pct(row['final_auroc'])} | {_pct(row['best_auroc'])} | "
                      f"{_pct(row['final_accuracy_calibrated'])} | {_pct(row['best_accuracy_calibrated'])} | "
                      f"{row['ce_auroc']['final']:.3f} / {row['ce_auroc']['best']:.3f} | "
                      + "/".join(f"{row['scalars'][k]:.2f}" for k in ("alpha", "beta", "delta")) + " |")
    return {"rows": out, "markdown": "\n".join(md)}


def refine_report(variant: str, seeds: int, refine_variant: str = "default") -> dict[str, Any]:
    """The share of the clean-test AUROC that 40% noise costs CE which ``train --refine`` wins back."""
    validation, flagged = REFINE_VARIANTS[refine_variant]
    md = [f"`train --refine --refine-validation {validation} --refine-flagged {flagged}` with LiLAW ({variant}) at 40% "
          "symmetric noise: "
          "clean-test AUROC (best checkpoint / "
          "final), and the share of CE's noise cost won back, (refined - CE noisy) / (CE clean - CE noisy)",
          "", "| data set | seeds | CE clean | CE 40% | refined | won back (best) | won back (final) |",
          "|---|---|---|---|---|---|---|"]
    rows = []
    for dataset in REFINE_DATASETS:
        per_seed = []
        for seed in range(seeds):
            clean, noisy = Cell(dataset, "none", 0.0, seed), Cell(dataset, "symmetric", 0.4, seed)
            paths = (run_path(clean, "ce") / "summary.json", run_path(noisy, "ce") / "summary.json",
                     run_path(noisy, refine_name(variant, refine_variant)) / "refine.json")
            if not all(p.is_file() for p in paths):
                continue
            info = json.loads(paths[2].read_text(encoding="utf-8"))
            refined = {k: float(info["refined"][k]["test"]["auroc"]) for k in ("best", "final")}
            per_seed.append((read(paths[0].parent).test, read(paths[1].parent).test, refined))
        if not per_seed:
            continue
        row: dict[str, Any] = {"dataset": dataset, "seeds": len(per_seed)}
        for k in ("best", "final"):
            c = [p[0][k]["auroc"] for p in per_seed]
            n = [p[1][k]["auroc"] for p in per_seed]
            r = [p[2][k] for p in per_seed]
            cost = sum(c) / len(c) - sum(n) / len(n)
            row[k] = {"ce_clean": mean_ci(c), "ce_noisy": mean_ci(n), "refined": mean_ci(r),
                      "won_back": (sum(r) / len(r) - sum(n) / len(n)) / cost if cost > 0 else math.nan}
        rows.append(row)
        b = row["best"]
        md.append(f"| {dataset} | {len(per_seed)} | {b['ce_clean']['mean']:.3f} / {row['final']['ce_clean']['mean']:.3f} | "
                  f"{b['ce_noisy']['mean']:.3f} / {row['final']['ce_noisy']['mean']:.3f} | "
                  f"{b['refined']['mean']:.3f} / {row['final']['refined']['mean']:.3f} | {b['won_back']:.2f} | "
                  f"{row['final']['won_back']:.2f} |")
    return {"rows": rows, "markdown": "\n".join(md)}


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--stage", choices=("dev", "eval", "refine", "resnet"), required=True)
    p.add_argument("--seeds", type=int, default=10, help="eval stage: seeds 0..N-1")
    p.add_argument("--round", type=int, choices=(1, 2), default=2,
                   help="dev stage: the rule's round (1: the schedule; 2: the normalised meta objective)")
    p.add_argument("--variant", default=None, help="eval stage: the LiLAW variant (default: the dev stage's choice)")
    p.add_argument("--report", action="store_true", help="report from the cache, train nothing")
    p.add_argument("--refine-variant", choices=tuple(REFINE_VARIANTS), default="default",
                   help="refine stage: which refine (benchmarks.audit_grid.REFINE_VARIANTS; default: the library's "
                   "defaults)")
    p.add_argument("--budget", type=float, default=None, help="minutes after which no new run starts")
    args = p.parse_args(argv)
    t0 = time.time()

    def out_of_time() -> bool:
        return args.budget is not None and time.time() - t0 > 60 * args.budget

    out = cache_root() / "preset_gain"
    if args.stage == "dev":
        candidates = CANDIDATES if args.round == 1 else (INCUMBENT, *ROUND2)
        if not args.report:
            for cell in DEV_CELLS:
                for v in ("ce", *candidates):
                    if out_of_time():
                        break
                    train(cell, v)
        rep = dev_report(round_=args.round)
        name = "dev" if args.round == 1 else f"dev_round{args.round}"
        atomic_write(out / f"{name}.md", rep["markdown"] + "\n")
        atomic_write(out / f"{name}.json", json.dumps({k: rep[k] for k in ("rows", "scores", "chosen")}, indent=1,
                                                      default=float))
        print(rep["markdown"])
        return 0
    variant = args.variant
    if variant is None:
        latest = out / "dev_round2.json" if (out / "dev_round2.json").is_file() else out / "dev.json"
        chosen = json.loads(latest.read_text(encoding="utf-8")).get("chosen") if latest.is_file() else None
        if chosen is None:
            print("no variant: run the dev stage to the end first or pass --variant", file=sys.stderr)
            return 2
        variant = chosen
    if args.stage == "resnet":
        if not args.report:
            for cell in RESNET_CELLS:
                for v in ("ce", variant):
                    if out_of_time():
                        break
                    train(cell, v, network="resnet18")
        rep = eval_report(variant, 5, network="resnet18")
        atomic_write(out / f"resnet18_{variant}.md", rep["markdown"] + "\n")
        print(rep["markdown"])
        return 0
    if args.stage == "refine":
        seeds = min(args.seeds, 5)
        if not args.report:
            for seed in range(seeds):
                for dataset in REFINE_DATASETS:
                    if out_of_time():
                        break
                    train(Cell(dataset, "none", 0.0, seed), "ce")
                    train(Cell(dataset, "symmetric", 0.4, seed), "ce")
                    train(Cell(dataset, "symmetric", 0.4, seed), variant, refine=True,
                          refine_variant=args.refine_variant)
        rep = refine_report(variant, seeds, args.refine_variant)
        atomic_write(out / f"{refine_name(variant, args.refine_variant)}.md", rep["markdown"] + "\n")
        print(rep["markdown"])
        return 0
    if not args.report:
        for cell in eval_cells(args.seeds):
            for v in ("ce", variant):
                if out_of_time():
                    break
                train(cell, v)
    rep = eval_report(variant, args.seeds)
    atomic_write(out / f"eval_{variant}.md", rep["markdown"] + "\n")
    atomic_write(out / f"eval_{variant}.json", json.dumps(rep["rows"], indent=1, default=float))
    print(rep["markdown"])
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    raise SystemExit(main())
