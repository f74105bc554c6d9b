"""How fast the review page opens and records a decision, in a headless Chromium (issue 26's floors).

A synthetic queue of ``--items`` items (default 1,000), each with one ``--image-size`` PNG (smooth
grey-level images like a radiograph's, 24 distinct ones reused: the page embeds one data URI per
item all the same) and class probabilities over ``--epochs`` epochs, is rendered by
:func:`lilaw_med.audit.review.render_review` into one HTML file and opened from a file URL in the
OS's Chromium through selenium (:mod:`tests.audit.browser`). Measured:

* open: from the navigation's start to the end of the page's start-up script (the queue built, the
  first item shown), ``performance.now()`` in the page; and the wall-clock time of WebDriver's
  ``get`` (until the load event); medians of ``--reps`` fresh loads, each with empty storage;
* decision: the page's keydown handler for ``K`` (keep), from the key to the next item shown and
  the progress written to ``localStorage``, over ``--decisions`` keys sent by WebDriver; median and
  95th percentile; and the same plus the next frame (``requestAnimationFrame`` twice after a key
  event dispatched in the page).

Floors (issue 26): open < 2 s for 1,000 items; a decision < 50 ms.

Run::

    nice -n 10 python -m benchmarks.review_page              # 1,000 items of 512 px
    python -m benchmarks.review_page --items 50 --reps 1    # a quick check
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lilaw_med.audit.review import ReviewContext, _png_uri, render_review
from tests.audit.browser import browser_missing, start_chromium


def synthetic_context(n_items: int, image_size: int, epochs: int, seed: int = 0) -> ReviewContext:
    """A queue of ``n_items`` two-class items with smooth images and per-epoch probabilities."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:image_size, 0:image_size] / image_size
    uris = []
    for _ in range(24):
        img = 0.5 + 0.25 * np.sin(6 * xx + rng.uniform(0, 6)) * np.cos(4 * yy + rng.uniform(0, 6))
        for _ in range(6):
            cx, cy, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.15)
            img += 0.3 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        img += rng.normal(0, 0.02, img.shape)
        uris.append(_png_uri((np.clip(img, 0, 1) * 255).astype(np.uint8), image_size))
    items = []
    for i in range(n_items):
        p = 1 / (1 + np.exp(-np.cumsum(rng.normal(0.1, 0.5, epochs))))
        items.append({
            "id": f"case-{i:05d}", "split": "training", "reason": "flagged" if i < n_items // 3 else "hard",
            "given": i % 2, "predicted": 1 - i % 2, "p_given": 0.2, "p_predicted": 0.8, "score": 0.2, "rank": i + 1,
            "flagged": i < n_items // 3, "difficulty": "hard", "path": f"/data/images/case-{i:05d}.png",
            "probs": [[round(float(a), 3), round(float(1 - a), 3)] for a in p], "image_error": None,
            "views": [{"title": "", "image": i}],
        })
    data = {"run_name": "benchmark", "run_key": f"benchmark:{seed}", "class_names": ["normal", "abnormal"],
            "splits": {"training": {"epochs": list(range(1, epochs + 1)), "window": [1, max(1, epochs // 3)]}},
            "split_sizes": {"training": n_items}, "items": items}
    return ReviewContext(data=data, images=[uris[i % len(uris)] for i in range(n_items)])


def measure(page: Path, reps: int, decisions: int) -> dict[str, float]:
    """Open and decision times of one page (see the module docstring), in milliseconds."""
    from selenium.webdriver.common.action_chains import ActionChains

    driver = start_chromium()
    try:
        opens, gets = [], []
        for _ in range(reps):
            driver.get("about:blank")
            t0 = time.perf_counter()
            driver.get(page.as_uri())
            gets.append(1000 * (time.perf_counter() - t0))
            opens.append(float(driver.execute_script("return window.__review.ready_ms")))
            driver.execute_script("localStorage.clear()")
        driver.get(page.as_uri())
        for _ in range(decisions):
            ActionChains(driver).send_keys("k").perform()
        handler = list(driver.execute_script("return window.__review.decision_ms"))
        framed = []
        for _ in range(min(decisions, 30)):
            framed.append(float(driver.execute_async_script(
                "var done = arguments[0], t0 = performance.now();"
                "document.dispatchEvent(new KeyboardEvent('keydown', {key: 'k', bubbles: true}));"
                "requestAnimationFrame(function () { requestAnimationFrame(function () { done(performance.now() - t0); }); });")))
        driver.execute_script("localStorage.clear()")
    finally:
        driver.quit()
    return {"open_ms": statistics.median(opens), "get_ms": statistics.median(gets),
            "decision_ms": statistics.median(handler), "decision_p95_ms": float(np.percentile(handler, 95)),
            "decision_frame_ms": statistics.median(framed)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--decisions", type=int, default=50)
    args = parser.parse_args(argv)
    reason = browser_missing()
    if reason:
        print(f"skipped: {reason}")
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "review.html"
        t0 = time.perf_counter()
        page.write_text(render_review(synthetic_context(args.items, args.image_size, args.epochs)), encoding="utf-8")
        render_s = time.perf_counter() - t0
        size_mb = page.stat().st_size / 1e6
        m = measure(page, args.reps, args.decisions)
    from selenium import __version__ as selenium_version

    print(f"review page: {args.items} items, {args.image_size} px images, {args.epochs} epochs; "
          f"{size_mb:.1f} MB; rendered in {render_s:.1f} s (selenium {selenium_version})")
    print(f"| {'measure':47s} | {'ms':>9s} | floor  |")
    print(f"|{'-' * 49}|{'-' * 11}|--------|")
    rows = [("open: navigation start to page ready (median)", m["open_ms"], "< 2000"),
            ("open: WebDriver get, to the load event (median)", m["get_ms"], ""),
            ("decision: key handler, median", m["decision_ms"], "< 50"),
            ("decision: key handler, 95th percentile", m["decision_p95_ms"], ""),
            ("decision: key to the next frame, median", m["decision_frame_ms"], "")]
    for name, v, floor in rows:
        print(f"| {name:47s} | {v:9.1f} | {floor:6s} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
