"""A headless Chromium for the review page's tests and benchmark, driven by selenium.

The browser comes from the OS packages (Debian/Ubuntu: ``chromium`` and ``chromium-driver``;
``.ci/run`` installs them), selenium from PyPI (the ``dev`` extra). selenium, not playwright:
playwright drives only the browser builds it downloads itself, and this project's machines reach
package registries only; selenium drives the distribution's Chromium through its chromedriver.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

__all__ = ["HOW_TO_INSTALL", "browser_missing", "start_chromium"]

HOW_TO_INSTALL = ("install a headless browser: `apt-get install chromium chromium-driver` (Debian/Ubuntu; "
                  "`.ci/run` does it) and `pip install -e .[dev]` (selenium)")
_BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
_DRIVERS = ("chromedriver",)


def _which(names: tuple[str, ...], env: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env] if os.path.isfile(os.environ[env]) else None
    return next((p for p in map(shutil.which, names) if p), None)


def browser_missing() -> str | None:
    """Why no headless Chromium can be started here (``None``: it can)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return f"selenium is not installed: {HOW_TO_INSTALL}"
    if _which(_BINARIES, "LILAW_MED_CHROMIUM") is None:
        return f"no Chromium found (chromium, google-chrome; or set LILAW_MED_CHROMIUM): {HOW_TO_INSTALL}"
    if _which(_DRIVERS, "LILAW_MED_CHROMEDRIVER") is None:
        return f"no chromedriver found (or set LILAW_MED_CHROMEDRIVER): {HOW_TO_INSTALL}"
    return None


def start_chromium(download_dir: Path | None = None, width: int = 1400, height: int = 900) -> Any:
    """A headless Chromium WebDriver whose downloads go to ``download_dir`` without a prompt.

    Raises:
        RuntimeError: when :func:`browser_missing` gives a reason.
    """
    reason = browser_missing()
    if reason:
        raise RuntimeError(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    options.binary_location = _which(_BINARIES, "LILAW_MED_CHROMIUM")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors (CSP violations)
    if download_dir is not None:
        options.add_experimental_option("prefs", {
            "download.default_directory": str(download_dir), "download.prompt_for_download": False,
            "download.directory_upgrade": True, "safebrowsing.enabled": False,
        })
    driver = webdriver.Chrome(options=options, service=Service(_which(_DRIVERS, "LILAW_MED_CHROMEDRIVER")))
    if download_dir is not None:  # headless Chromium also needs the behaviour set through DevTools
        driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(download_dir)})
    return driver
