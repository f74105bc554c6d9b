"""The audit's self-contained ``report.html``, rendered from ``templates/report.html`` by Jinja2
with automatic escaping: every field that comes from data (ids, paths, class names) is escaped by
the template engine, every picture is an embedded ``data:image/png;base64`` URI, and a
Content-Security-Policy forbids any network request.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from jinja2 import Environment, PackageLoader, select_autoescape

from lilaw_med.audit import plots
from lilaw_med.audit.difficulty import DIFFICULTY_LEVELS
from lilaw_med.errors import one_line
from lilaw_med.run.transforms import evaluation_transforms

if TYPE_CHECKING:
    from lilaw_med.audit.report import AuditResult

__all__ = ["render_html"]

logger = logging.getLogger(__name__)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "n/a"
    return f"{v:.{digits}f}" if isinstance(v, (float, np.floating)) else str(v)


def _interval(pair: Sequence[Any]) -> str:
    return f"[{_fmt(pair[0])}, {_fmt(pair[1])}]"


def _image_loader(result: AuditResult) -> Callable[[Mapping[str, Any]], np.ndarray] | None:
    """item -> uint8 display image through the run's own evaluation transforms (None: thumbnails off)."""
    if not result.options.thumbnails:
        return None
    transforms = None
    try:
        transforms = evaluation_transforms(result.record.config)
    except (KeyError, ValueError, TypeError) as e:  # a config the current version cannot read: plain reader
        logger.info("thumbnails use the plain image reader (%s: %s).", type(e).__name__, e)

    def load(item: Mapping[str, Any]) -> np.ndarray:
        if transforms is not None:
            return plots.to_display(np.asarray(transforms({**item, "label": item.get("label", 0)})["image"]))
        # MONAI loads only when a thumbnail is drawn without the run's own chain
        from monai.transforms import LoadImage

        return plots.to_display(np.asarray(LoadImage(image_only=True, ensure_channel_first=True)(item["image"])))

    return load


def _figures(result: AuditResult, rows: Sequence[Mapping[str, Any]], load: Callable | None) -> list[dict[str, Any]]:
    figs = []
    for r in rows:
        uri, error = None, None
        if load is None:
            error = "thumbnails switched off"
        else:
            try:
                uri = plots.data_uri(plots.thumbnail_png(load(result.record.items[r["id"]][1])))
            except Exception as e:  # noqa: BLE001 - one unreadable image must not stop the report
                error = one_line(e, with_type=True)
        figs.append({"id": r["id"], "uri": uri, "error": error, "given": r["given_class"],
                     "predicted": r["predicted_class"], "score": _fmt(r["label_score"]), "rank": r["rank"],
                     "difficulty": r["difficulty"], "true": r.get("true_class")})
    return figs


def _top_rows(result: AuditResult, audit: Any, mask: np.ndarray, key: np.ndarray) -> list[dict[str, Any]]:
    """The rows of the ``top_k`` items of ``mask`` with the lowest ``key`` (stable), built for those items only."""
    idx = np.nonzero(mask)[0]
    idx = idx[np.argsort(key[idx], kind="stable")][: result.options.top_k]
    return result.item_rows(audit, idx)


def _split_context(result: AuditResult) -> list[dict[str, Any]]:
    out = []
    for split, info in result.summary["splits"].items():
        out.append({
            "title": f"{split.capitalize()} items", "n_items": info["n_items"], "n_flagged": info["n_label_issues"],
            "rate": _fmt(info["estimated_noise_rate"]), "interval": _interval(info["estimated_noise_rate_interval"]),
            "confidence": f"{100 * info['interval_confidence']:.0f}%", "warnings": info["warnings"],
            "identifiable": info["identifiable"], "expected_precision": _fmt(info["expected_precision"]),
            "flag_rule": {"estimate": "the estimated count per class", "noise_rate": "a fixed share per class",
                          "review": f"review budget of {info['review_budget']}"}[info["flag_rule"]],
            "per_class": [{"name": c["class"], "n_items": c["n_items"], "n_wrong": c["estimated_n_wrong"],
                           "rate": _fmt(c["estimated_noise_rate"]), "interval": _interval(c["estimated_noise_rate_interval"]),
                           "n_flagged": c["n_label_issues"], "threshold": _fmt(c["threshold"]), "levels": c["difficulty"]}
                          for c in info["per_class"]],
        })
    return out


def _window_plot(result: AuditResult) -> str | None:
    rec = result.record
    epochs = rec.dynamics["training"].epochs
    loss_name = ("validation loss (meta step's forwards)" if rec.val_loss_source == "meta step"
                 else "validation loss (end-of-epoch evaluation)")
    series = {k: list(v) for k, v in ((loss_name, rec.val_loss),
                                       ("validation accuracy (end-of-epoch evaluation)", rec.val_accuracy))
              if np.isfinite(v).any()}
    if not series:
        return None
    w = result.splits["training"].window
    title = f"noisy validation curve; scoring window: epochs {w.start + 1}-{w.stop}"
    span = (epochs[w.start] - 0.5, epochs[w.stop - 1] + 0.5, "scoring window")
    return plots.data_uri(plots.lines_png(list(epochs), series, title, "epoch", span=span))


def _lilaw_plots(result: AuditResult) -> list[dict[str, str]]:
    out = []
    series = result.record.lilaw_iterations
    if series is not None:
        out.append({"alt": "alpha beta delta", "uri": plots.data_uri(
            plots.lines_png(series[0], series[1], "alpha, beta, delta", "iteration"))})
    train = result.splits["training"]
    w = train.terms["weight"]
    if np.isfinite(w).any():
        flags = train.is_label_issue
        out.append({"alt": "weight histogram", "uri": plots.data_uri(plots.histogram_png(
            {"suspected mislabels": w[flags], "other items": w[~flags]},
            "mean LiLAW weight per item over the scoring window", "weight (0 to 3)"))})
    return out


def _detection_context(result: AuditResult) -> dict[str, Any] | None:
    d = result.detection
    if d is None:
        return None
    aurocs = {k: v["auroc"] for k, v in d["scores"].items() if v["auroc"] is not None}
    return {
        "n_items": d["n_items"], "n_mislabeled": d["n_mislabeled"], "note": d["note"],
        "rows": [{"name": k, "auroc": _fmt(v["auroc"]), "ap": _fmt(v["average_precision"]),
                  "p_at_k": _fmt(v["precision_at_noise_count"])} for k, v in d["scores"].items()],
        "flags": {k: _fmt(v) for k, v in d["is_label_issue"].items()},
        "rates": [{"name": r["class"], "true": _fmt(r["true"]), "estimated": _fmt(r["estimated"]),
                   "interval": _interval(r["interval"])} for r in d["noise_rate"]],
        "levels": [{"name": lv, "n": v["n_items"], "rate": _fmt(v["true_mislabel_rate"])} for lv, v in d["difficulty"].items()],
        "curves_plot": plots.data_uri(plots.curves_png(d["curves"], aurocs)) if d.get("curves") else None,
    }


def render_html(result: AuditResult) -> str:
    """The self-contained report of an audit.

    Args:
        result: what :func:`lilaw_med.audit.report.write_audit` computed.

    Returns:
        The HTML text.
    """

    env = Environment(loader=PackageLoader("lilaw_med.audit", "templates"),
                      autoescape=select_autoescape(default=True, default_for_string=True))
    opts = result.options
    load = _image_loader(result)
    train = result.splits["training"]
    suspects = [
        {"name": result.record.class_name(k), "figs": _figures(
            result, _top_rows(result, train, train.is_label_issue & (train.labels == k), train.rank), load)}
        for k in range(train.num_classes)
    ]
    val = result.splits.get("validation")
    val_flagged = [] if val is None else _top_rows(result, val, val.is_label_issue, val.rank)
    seen = np.isfinite(train.window_probs).all(axis=1)
    p_given = np.where(seen, np.nan_to_num(train.window_probs, nan=0.0)[np.arange(len(train.ids)), train.labels], np.nan)
    hardest = _top_rows(result, train, ~train.is_label_issue & (train.predicted == train.labels) & seen, p_given)
    return env.get_template("report.html").render(
        run_name=result.record.root.name, options=opts, window=train.window, count_window=train.count_window, window_plot=_window_plot(result),
        levels=DIFFICULTY_LEVELS, splits=_split_context(result), top_k=opts.top_k, suspects=suspects,
        val_suspects=_figures(result, val_flagged, load), hardest=_figures(result, hardest, load),
        lilaw_plots=_lilaw_plots(result), detection=_detection_context(result),
    )
