"""The review page in a real headless browser (Chromium from the OS packages, driven by selenium).

Skipped, with a message that says how to get the browser, where none is installed (see
:mod:`tests.audit.browser`). The page's speed is measured by ``benchmarks/review_page.py``.
"""

from __future__ import annotations

import csv
import time
from pathlib import Path

import pytest

from lilaw_med.audit.review import write_review_page
from lilaw_med.workflows.audit import run_audit
from tests.audit.browser import browser_missing, start_chromium
from tests.audit.conftest import make_run_folder, train_with_decisions

pytestmark = pytest.mark.skipif(browser_missing() is not None, reason=str(browser_missing()))

MARKUP = "<img src=x onerror=alert(1)>"


@pytest.fixture
def downloads(tmp_path: Path) -> Path:
    d = tmp_path / "downloads"
    d.mkdir()
    return d


@pytest.fixture
def browser(downloads: Path):
    driver = start_chromium(downloads)
    yield driver
    driver.quit()


@pytest.fixture
def page(tmp_path: Path) -> Path:
    """The review page of the audit fixture's run: its 3 flagged items, then the other 13 training items."""
    run = make_run_folder(tmp_path)
    run_audit(run, thumbnails=False, final_model_baseline=False)
    return write_review_page(run, include_splits=["training"])


def _open(driver, path: Path) -> None:
    driver.get(path.as_uri())
    _wait(lambda: driver.execute_script("return window.__review && window.__review.ready_ms !== null"))


def _wait(condition, timeout: float = 10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the page")


def _reopen(driver, path: Path, tries: int = 5) -> None:
    """Closes the page and opens it again, once the browser's localStorage holds what the page wrote.

    Headless Chromium, under load, now and then shows a file:// page (an opaque origin) opened
    within milliseconds of another's writes an empty localStorage, while a blank page beside it
    already sees them (a reader takes seconds between closing and reopening, a test milliseconds;
    the page writes nothing when it opens, so the stored state survives). The tab therefore leaves
    the page for a blank one beside it, waits there until the storage holds the writes, and opens
    the page again until it sees them too.
    """
    script = "return JSON.stringify(Object.entries(localStorage).sort())"
    written = driver.execute_script(script)
    probe = path.with_name("_storage_probe.html")
    probe.write_text("<!doctype html><title>probe</title>", encoding="utf-8")
    for _ in range(tries):
        driver.get(probe.as_uri())
        _wait(lambda: driver.execute_script(script) == written)
        _open(driver, path)
        try:
            _wait(lambda: driver.execute_script(script) == written, timeout=3.0)
            return
        except AssertionError:
            continue
    raise AssertionError(f"the reopened page never saw the stored progress in {tries} tries")


def _keys(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _text(driver, element_id: str) -> str:
    return driver.execute_script("return document.getElementById(arguments[0]).textContent", element_id)


def _current(driver) -> dict:
    return driver.execute_script(
        "var D = JSON.parse(document.getElementById('review-data').textContent);"
        "return D.items[JSON.parse(localStorage.getItem('lilaw-med-review:' + D.run_key) || '{\"pos\":0}').pos || 0];")


def test_ten_keyboard_decisions_persist_save_as_csv_and_train_the_next_run(browser, page, downloads, tmp_path):
    from selenium.webdriver.common.keys import Keys

    _open(browser, page)
    queue = browser.execute_script("return JSON.parse(document.getElementById('review-data').textContent).items")
    assert [it["id"] for it in queue[:3]] == ["img-01", "img-06", "img-11"] and len(queue) == 16
    names = ["normal", "pneumonia"]
    plan: dict[str, tuple[str, str]] = {}  # id -> (decision, new_label)
    for n, item in enumerate(queue[:10]):
        assert _current(browser)["id"] == item["id"]
        if n < 3:  # the three flagged items: relabel as the other class (number keys 1, 2)
            other = 1 - item["given"]
            _keys(browser, str(other + 1))
            plan[item["id"]] = ("relabel", names[other])
        elif n < 5:
            if n == 3:  # a mistaken keep, undone
                _keys(browser, "k")
                assert _text(browser, "n-decided") == "4"
                _keys(browser, "u")
                assert _current(browser)["id"] == item["id"] and _text(browser, "n-decided") == "3"
                _keys(browser, "n")  # a note, typed into the note field
                _keys(browser, "motion blur, not gradable" + Keys.ESCAPE)
            _keys(browser, "x")
            plan[item["id"]] = ("exclude", "")
        else:
            _keys(browser, "k")
            plan[item["id"]] = ("keep", "")
    assert (_text(browser, "n-decided"), _text(browser, "n-left")) == ("10", "6")
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []  # no script error, no CSP refusal

    _reopen(browser, page)  # the reader closes the page and comes back
    assert (_text(browser, "n-decided"), _text(browser, "n-left")) == ("10", "6")
    assert _current(browser)["id"] == queue[10]["id"]
    dots = browser.execute_script("return Array.from(document.querySelectorAll('#queue .dot')).map(d => d.className)")
    assert dots[:10] == ["dot " + plan[it["id"]][0] for it in queue[:10]] and set(dots[10:]) == {"dot"}
    _keys(browser, Keys.ARROW_LEFT * 7)  # back to the 4th item: its decision and note are shown
    assert _current(browser)["id"] == queue[3]["id"]
    assert browser.find_element("id", "note").get_attribute("value") == "motion blur, not gradable"
    assert _text(browser, "status").startswith("Exclude")

    browser.find_element("id", "reviewer").send_keys("Dr. Ann")
    browser.find_element("id", "save").click()
    saved = _wait(lambda: [p for p in downloads.glob("*.csv")])
    with saved[0].open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert saved[0].name.startswith("decisions_run_Dr._Ann_")
    assert {r["id"]: (r["decision"], r["new_label"]) for r in rows} == plan
    assert {r["reviewer"] for r in rows} == {"Dr. Ann"} and all(r["time"].endswith("Z") for r in rows)
    assert next(r["note"] for r in rows if r["id"] == queue[3]["id"]) == "motion blur, not gradable"

    used = train_with_decisions(page.parent.parent / "datalist.json", tmp_path / "next", saved[0])
    kept = {it["id"]: it for s in ("training", "validation") for it in used[s]}
    excluded = {i for i, (d, _) in plan.items() if d == "exclude"}
    assert excluded and not excluded & set(kept) and len(kept) == 20 - len(excluded)
    relabelled = {i: (it["label_before_relabel"], it["label"]) for i, it in kept.items() if "label_before_relabel" in it}
    assert relabelled == {i: (next(q["given"] for q in queue if q["id"] == i), names.index(label))
                          for i, (d, label) in plan.items() if d == "relabel"}


def test_markup_typed_into_a_note_is_shown_as_text(browser, page):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.common.keys import Keys

    _open(browser, page)
    _keys(browser, "n")
    _wait(lambda: browser.execute_script("return document.activeElement.id") == "note")
    _keys(browser, MARKUP + Keys.ESCAPE)
    _wait(lambda: browser.find_element("id", "note").get_attribute("value") == MARKUP)
    _keys(browser, "k")  # decided, moved on
    _wait(lambda: _text(browser, "n-decided") == "1")
    _keys(browser, Keys.ARROW_LEFT)
    _wait(lambda: _current(browser)["id"] == "img-01")
    _reopen(browser, page)
    assert browser.find_element("id", "note").get_attribute("value") == MARKUP
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], img[onerror]').length") == 0
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it raises when no alert opened
    assert f"\nimg-01,keep,,{MARKUP},," in browser.execute_script("return window.__review.csv()")  # saved as typed
    # a script that reaches the page some other way does not run: the policy runs the page's own script only
    browser.execute_script("var s = document.createElement('script'); s.textContent = 'window.injected = 1';"
                           "document.body.appendChild(s);")
    assert browser.execute_script("return window.injected === undefined")
    # the id with markup in it (the fixture's 'img-<b>&"x') is shown as text in the queue
    ids = browser.execute_script("return Array.from(document.querySelectorAll('#queue .id')).map(e => e.textContent)")
    assert 'img-<b>&"x' in ids and browser.execute_script("return document.querySelectorAll('#queue b').length") == 0
