"""Tissue, pen ink and background on a slide thumbnail: colour rules in HSV (numpy only).

Each pixel of an RGB thumbnail gets one of three classes (:func:`tissue_classes`):

* **background**: glass is bright and unstained, so its HSV saturation is low; a pixel whose
  saturation is at most Otsu's threshold of the slide's saturations (clipped to
  ``[min_saturation, max_saturation]``: an all-tissue or an empty slide stays right) is
  background;
* **pen**: marker ink that pathologists draw on the glass. Blue and green ink have hues H&E never
  has: eosin is pink-red and haematoxylin purple, both with red above green, while blue and green
  ink have green above red (hue in ``pen_hues``, 75-250 degrees) and are saturated; black ink is
  very dark (HSV value below ``black_value``), darker than any stained tissue at thumbnail scale.
  Ink pixels are grown by ``pen_margin`` pixels, since the blurred edge of a stroke blends into
  the neighbouring colour;
* **tissue**: the rest (saturated, with an H&E hue).

Otsu's threshold is computed without the ink, so a slide with heavy marking keeps its tissue
threshold. The rules and their pictures are in docs/pipelines.md (``docs/img/tissue_mask.png``).
"""

from __future__ import annotations

import numpy as np

__all__ = ["BACKGROUND", "PEN", "TISSUE", "rgb_to_hsv", "tissue_classes", "tissue_mask"]

BACKGROUND, TISSUE, PEN = 0, 1, 2
"""The class values of :func:`tissue_classes`."""


def rgb_to_hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """HSV of an RGB image.

    Args:
        rgb: (H, W, 3) uint8 (0-255) or float in [0, 1].

    Returns:
        ``(hue, saturation, value)``, each (H, W) float32: hue in degrees [0, 360), the others in [0, 1].
    """
    x = np.asarray(rgb, dtype=np.float32)
    if np.asarray(rgb).dtype == np.uint8 or x.max(initial=0.0) > 1.0:
        x = x / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    mx, mn = x.max(axis=-1), x.min(axis=-1)
    delta = mx - mn
    sat = np.where(mx > 0, delta / np.maximum(mx, 1e-12), 0.0).astype(np.float32)
    safe = np.maximum(delta, 1e-12)
    hue = np.where(
        mx == r, ((g - b) / safe) % 6.0, np.where(mx == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0)
    )
    hue = np.where(delta > 0, hue * 60.0, 0.0).astype(np.float32)
    return hue, sat, mx.astype(np.float32)


def _otsu(values: np.ndarray) -> float:
    """Otsu's threshold of values in [0, 1] (256 bins)."""
    hist, edges = np.histogram(values, bins=256, range=(0.0, 1.0))
    p = hist.astype(np.float64) / max(hist.sum(), 1)
    omega = np.cumsum(p)
    mu = np.cumsum(p * (edges[:-1] + edges[1:]) / 2)
    between = (mu[-1] * omega - mu) ** 2 / np.maximum(omega * (1 - omega), 1e-12)
    return float(edges[int(np.argmax(between)) + 1])


def _grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """Binary dilation by a (2 * pixels + 1)^2 square, with shifts (no scipy)."""
    out = mask.copy()
    for _ in range(pixels):
        grown = out.copy()
        grown[1:] |= out[:-1]
        grown[:-1] |= out[1:]
        grown[:, 1:] |= grown[:, :-1].copy()
        grown[:, :-1] |= grown[:, 1:].copy()
        out = grown
    return out


def tissue_classes(
    rgb: np.ndarray,
    min_saturation: float = 0.05,
    max_saturation: float = 0.15,
    pen_hues: tuple[float, float] = (75.0, 250.0),
    pen_saturation: float = 0.15,
    black_value: float = 0.25,
    pen_margin: int = 1,
) -> np.ndarray:
    """Background, tissue or pen ink for every pixel of an RGB thumbnail (see the module docstring).

    Args:
        rgb: (H, W, 3) uint8 or float in [0, 1].
        min_saturation: floor of the background/tissue saturation threshold.
        max_saturation: ceiling of that threshold.
        pen_hues: hue band (degrees) of blue and green ink.
        pen_saturation: minimum saturation of blue and green ink.
        black_value: HSV value below which a pixel is black ink.
        pen_margin: pixels by which ink is grown.

    Returns:
        (H, W) uint8: :data:`BACKGROUND` (0), :data:`TISSUE` (1) or :data:`PEN` (2).
    """
    hue, sat, val = rgb_to_hsv(rgb)
    pen = ((hue >= pen_hues[0]) & (hue <= pen_hues[1]) & (sat >= pen_saturation)) | (val < black_value)
    if pen_margin > 0 and pen.any():
        pen = _grow(pen, pen_margin)
    rest = sat[~pen]
    threshold = float(np.clip(_otsu(rest) if rest.size else max_saturation, min_saturation, max_saturation))
    out = np.where(sat > threshold, TISSUE, BACKGROUND).astype(np.uint8)
    out[pen] = PEN
    return out


def tissue_mask(rgb: np.ndarray, min_saturation: float = 0.05, max_saturation: float = 0.15) -> np.ndarray:
    """The tissue pixels of an RGB thumbnail: neither background nor pen ink (:func:`tissue_classes`).

    Args:
        rgb: (H, W, 3) uint8 or float in [0, 1].
        min_saturation: floor of the saturation threshold.
        max_saturation: ceiling of the saturation threshold.

    Returns:
        (H, W) bool mask.
    """
    return tissue_classes(rgb, min_saturation, max_saturation) == TISSUE
