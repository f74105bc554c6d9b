"""The audit grid's round-10 verdict (benchmarks/audit_grid.py): ``exclude`` replaces ``keep`` only when every
development cell is done and its mean refined best-checkpoint AUROC is higher."""

from __future__ import annotations

from benchmarks.audit_grid import REFINE_DEV_CELLS, round10_markdown


def _rows(aurocs: list[float]) -> list[dict]:
    return [{"cell": c.name, "refined_best_auroc": a, "refined_final_auroc": a - 0.05, "val_n": 36, "val_n_wrong": 14,
             "val_n_excluded": 8, "val_excluded_wrong": 4} for c, a in zip(REFINE_DEV_CELLS, aurocs, strict=False)]


def test_round10_picks_exclude_only_when_its_mean_is_higher_over_every_cell():
    n = len(REFINE_DEV_CELLS)
    keep = _rows([0.70] * n)
    # exclude ahead in one cell by 0.05, level elsewhere: mean 0.700 + 0.05 / n, higher
    md = round10_markdown(keep, _rows([0.75] + [0.70] * (n - 1)))
    assert "exclude ahead in 1 of 10" in md and md.endswith("Chosen by the rule: **exclude**")
    assert round10_markdown(keep, _rows([0.70] * n)).endswith("Chosen by the rule: **keep**")  # a tie keeps
    assert round10_markdown(keep, _rows([0.69] * n)).endswith("Chosen by the rule: **keep**")
    # a higher mean over fewer cells than the rule's keeps the incumbent and says why
    partial = round10_markdown(keep[:3], _rows([0.80] * 3))
    assert "over 3 cells" in partial and partial.endswith("(not every cell is done: the incumbent stays)")
