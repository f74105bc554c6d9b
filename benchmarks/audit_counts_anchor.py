"""Count round 5 (issue 12): anchor-point noise-rate estimates against the confident joint, on cached runs.

The anchor-point estimate of the noise transition matrix (Patrini et al., CVPR 2017): for each class i, the
items whose probability of i is at or above its q-quantile are i's anchors; ``T[i]`` is their mean probability
vector; the clean prior solves ``T^T pi = noisy prior``; class i's noise rate is
``1 - T[i, i] pi[i] / noisy_prior[i]``. Reads the runs ``benchmarks/audit_grid.py`` trained (no training)::

    python -m benchmarks.audit_counts_anchor dev     # the development cells: choose (rule 3)
    python -m benchmarks.audit_counts_anchor grid    # the evaluation grid: report

Prints, per variant, the worst and mean absolute count error ``|estimated - wrong| / n`` and the signed error per
cell, and writes ``count_anchor_<stage>.json`` to the benchmark cache. The outcome is in
``benchmarks/audit_selection_rule.md`` (round 5): the development winner did not carry over to the grid, so it is
not shipped.
"""

from __future__ import annotations

import json
import sys

import numpy as np

from benchmarks.audit_grid import DEV_CELLS, GRID_CELLS, cache_root, read_run, run_dir, window_of
from lilaw_med.audit.counts import estimate_noise
from lilaw_med.audit.window import ScoringWindow, window_pred_probs


def anchor_rates(labels: np.ndarray, probs: np.ndarray, num_classes: int, q: float = 0.97) -> np.ndarray:
    """Per-class noise rates ``P(true != i | given = i)`` from anchor points (see the module docstring)."""
    t = np.zeros((num_classes, num_classes))
    for i in range(num_classes):
        t[i] = probs[probs[:, i] >= np.quantile(probs[:, i], q)].mean(0)
    t /= t.sum(1, keepdims=True)
    noisy_prior = np.bincount(labels, minlength=num_classes) / len(labels)
    try:
        prior = np.linalg.solve(t.T, noisy_prior)
    except np.linalg.LinAlgError:
        prior = noisy_prior.copy()
    prior = np.clip(prior, 0, None)
    prior /= prior.sum()
    return np.clip(1 - np.diag(t) * prior / np.maximum(noisy_prior, 1e-12), 0, 1)


def main(stage: str) -> int:
    res = {}
    for cell in DEV_CELLS if stage == "dev" else GRID_CELLS:
        rd = run_dir(cell)
        if not (rd / "summary.json").is_file():
            continue
        run = read_run(rd)
        c = run.num_classes
        wrong = run.true != run.labels
        per_class = np.bincount(run.labels, minlength=c)
        row = {}
        for w in ("best_val_loss", "best_meta_loss", "all", "fraction"):
            win = window_of(run, w)
            p = window_pred_probs(run.dynamics, run.labels, win, c)
            p_last = window_pred_probs(run.dynamics, run.labels, ScoringWindow(win.stop - 1, win.stop, "at", ""), c)
            for q in (0.9, 0.97):
                row[f"anch{q}/{w}"] = float((anchor_rates(run.labels, p, c, q) * per_class).sum())
                row[f"anch{q}/at_{w}"] = float((anchor_rates(run.labels, p_last, c, q) * per_class).sum())
            if run.val_labels is not None:
                vw = ScoringWindow(win.start, min(win.stop, run.val_dynamics["probs"].shape[0]), win.rule, "")
                vp = window_pred_probs(run.val_dynamics, run.val_labels, vw, c)
                for q in (0.9, 0.97):
                    row[f"anch{q}_val/{w}"] = float((anchor_rates(run.val_labels, vp, c, q) * per_class).sum())
            row[f"cj/{w}"] = float(estimate_noise(run.labels, p, n_bootstrap=0).n_wrong.sum())
        res[cell.name] = {k: (v - wrong.sum()) / wrong.size for k, v in row.items()}
    if not res:
        print(f"no cached runs for stage {stage}: run `python -m benchmarks.audit_grid --stage {stage}` first")
        return 1
    (cache_root() / f"count_anchor_{stage}.json").write_text(json.dumps(res, indent=1), encoding="utf-8")
    keys = list(next(iter(res.values())))
    errs = {k: [abs(r[k]) for r in res.values()] for k in keys}
    for k in sorted(keys, key=lambda k: np.mean(errs[k])):
        print(f"{k:28s} mean {np.mean(errs[k]):.3f} worst {max(errs[k]):.3f}  signed "
              + " ".join(f"{r[k]:+.2f}" for r in res.values()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "dev"))
