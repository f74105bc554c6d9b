"""Pictures for the audit report, as PNG bytes (matplotlib's Agg backend; nothing is shown).

Each function returns the PNG's bytes; :func:`data_uri` embeds them in the self-contained HTML.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence

import numpy as np
from PIL import Image

__all__ = ["curves_png", "data_uri", "histogram_png", "lines_png", "thumbnail_png", "to_display"]


def data_uri(png: bytes) -> str:
    """``data:image/png;base64,...`` for an ``<img src>``."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _figure(width: float = 5.0, height: float = 3.2):  # noqa: ANN202 - matplotlib types
    # matplotlib (about half a second) loads only when a figure is drawn
    import matplotlib

    matplotlib.use("Agg", force=False)
    # matplotlib (about half a second) loads only when a figure is drawn
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=90)
    return plt, fig, ax


def _png(plt, fig) -> bytes:  # noqa: ANN001
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", bbox_inches="tight")  # keeps a legend placed outside the axes
    plt.close(fig)
    return buf.getvalue()


def to_display(image: np.ndarray, channel_first: bool = True) -> np.ndarray:
    """An image as (H, W) or (H, W, 3) uint8 for display: middle slice for 3D, min-max scaled.

    Args:
        image: the transformed image in MONAI's axis order: (C, W, H) for 2D or (C, W, H, D) for
            3D when ``channel_first``; else (W, H) / (W, H, D).
        channel_first: whether the first axis is the channel.

    Returns:
        uint8 (H, W) for one channel, (H, W, 3) for three.
    """
    a = np.asarray(image, dtype=np.float32)
    if not channel_first:
        a = a[None]
    if a.ndim == 4:  # 3D: the middle slice along the last spatial axis
        a = a[..., a.shape[-1] // 2]
    if a.ndim != 3:
        raise ValueError(f"expected a (C, W, H) or (C, W, H, D) image but got shape {np.shape(image)}.")
    a = np.transpose(a, (0, 2, 1))  # MONAI's x-first (W, H) -> (H, W)
    a = a[:3] if a.shape[0] >= 3 else a[:1]
    finite = np.isfinite(a)
    lo, hi = (float(a[finite].min()), float(a[finite].max())) if finite.any() else (0.0, 1.0)
    a = np.where(finite, (a - lo) / (hi - lo) if hi > lo else 0.0, 0.0)
    out = (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return out[0] if out.shape[0] == 1 else np.transpose(out, (1, 2, 0))


def thumbnail_png(display: np.ndarray, size: int = 112) -> bytes:
    """A PNG thumbnail (longest side ``size`` pixels) of an image from :func:`to_display`."""

    img = Image.fromarray(display)
    scale = size / max(img.size)
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def lines_png(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str,
              span: tuple[float, float, str] | None = None) -> bytes:
    """One line per series over ``x`` (e.g. alpha, beta, delta over iterations).

    Args:
        x: the x values.
        series: name -> y values.
        title: the title.
        xlabel: the x axis label.
        span: ``(x0, x1, label)``: a shaded band (e.g. the audit's scoring window).
    """
    plt, fig, _ = _lines_figure(x, series, title, xlabel, span)
    return _png(plt, fig)


def _lines_figure(x: Sequence[float], series: Mapping[str, Sequence[float]], title: str, xlabel: str,
                  span: tuple[float, float, str] | None = None):  # noqa: ANN202 - matplotlib types
    """The figure of :func:`lines_png`: the legend sits below the axes, where it covers no curve."""
    plt, fig, ax = _figure()
    if span is not None:
        ax.axvspan(span[0], span[1], color="tab:green", alpha=0.12, label=span[2])
    for name, y in series.items():
        ax.plot(np.asarray(x), np.asarray(y, dtype=float), label=name)
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=1, fontsize=7, frameon=False)
    return plt, fig, ax


def histogram_png(groups: Mapping[str, np.ndarray], title: str, xlabel: str, bins: int | np.ndarray = 30) -> bytes:
    """Overlaid histograms, one per group (e.g. mean LiLAW weight of flagged vs other items)."""
    plt, fig, ax = _figure()
    finite = [np.asarray(v, dtype=float)[np.isfinite(np.asarray(v, dtype=float))] for v in groups.values()]
    allv = np.concatenate(finite) if finite else np.zeros(0)
    edges = np.histogram_bin_edges(allv, bins=bins) if allv.size else np.linspace(0, 1, 11)
    for (name, _), v in zip(groups.items(), finite, strict=True):
        if v.size:
            ax.hist(v, bins=edges, alpha=0.55, label=f"{name} ({v.size})")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("items")
    ax.legend()
    return _png(plt, fig)


def curves_png(curves: Mapping[str, Mapping[str, np.ndarray]], aurocs: Mapping[str, float] | None = None) -> bytes:
    """ROC (left) and precision-recall (right) curves, one line per score."""
    plt, fig, ax = _figure(9.0, 3.6)
    fig.clf()
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for name, c in curves.items():
        label = f"{name} (AUROC {aurocs[name]:.3f})" if aurocs and name in aurocs else name
        left.plot(c["fpr"], c["tpr"], label=label)
        right.plot(c["recall"], c["precision"], label=name)
    left.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    left.set(title="ROC: finding wrong labels", xlabel="false positive rate", ylabel="true positive rate")
    right.set(title="Precision-recall", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    left.grid(alpha=0.3)
    right.grid(alpha=0.3)
    return _png(plt, fig)
