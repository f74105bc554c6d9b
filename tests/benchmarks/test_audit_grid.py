"""A refine development round's verdict (benchmarks/audit_grid.py, rounds 10 and 11): the candidate replaces the
incumbent only when every development cell is done and its mean refined best-checkpoint AUROC is higher."""

from __future__ import annotations

from benchmarks.audit_grid import REFINE_DEV_CELLS, refine_round_markdown

NAMES = ("default", "relabel")


def _rows(aurocs: list[float]) -> list[dict]:
    return [{"cell": c.name, "refined_best_auroc": a, "refined_final_auroc": a - 0.05, "val_n": 36, "val_n_wrong": 14,
             "val_n_excluded": 8, "val_excluded_wrong": 4, "n_relabelled": 5, "relabelled_right": 4}
            for c, a in zip(REFINE_DEV_CELLS, aurocs, strict=False)]


def test_a_refine_round_picks_the_candidate_only_when_its_mean_is_higher_over_every_cell():
    n = len(REFINE_DEV_CELLS)
    keep = _rows([0.70] * n)
    # the candidate ahead in one cell by 0.05, level elsewhere: mean 0.700 + 0.05 / n, higher
    md = refine_round_markdown(keep, _rows([0.75] + [0.70] * (n - 1)), NAMES)
    assert "relabel ahead in 1 of 10" in md and md.endswith("Chosen by the rule: **relabel**")
    assert refine_round_markdown(keep, _rows([0.70] * n), NAMES).endswith("Chosen by the rule: **default**")  # a tie keeps
    assert refine_round_markdown(keep, _rows([0.69] * n), NAMES).endswith("Chosen by the rule: **default**")
    # a higher mean over fewer cells than the rule's keeps the incumbent and says why
    partial = refine_round_markdown(keep[:3], _rows([0.80] * 3), NAMES)
    assert "over 3 cells" in partial and partial.endswith("(not every cell is done: the incumbent stays)")
