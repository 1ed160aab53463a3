"""An HTML report as a reader sees it: Debian's headless Chromium, driven through its own
chromedriver (selenium), reports which images failed, whether the chart and the results table
are on screen, every request the page made and every console message.

Without chromium the browser tests skip, except under CI=true, where they fail: CI installs it
(the Makefile, as root), so a missing browser there is a broken set-up, not a reason to pass.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# Chromium here needs these: without the background-networking ones it makes connections of
# its own (refused offline), which would read as the page's requests
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--window-size=1280,1600"]
LOCAL_SCHEMES = ("file:", "data:", "about:", "blob:")

# Runs in the page: the state of every image, and of the first element matching `what` between
# the heading whose text contains `after` and the next heading of the same or a higher level
_INSPECT = """
const [sections] = arguments;
function visible(el) {
  if (!el) return {found: false};
  el.scrollIntoView({block: "center"});
  const r = el.getBoundingClientRect(), s = getComputedStyle(el);
  const hit = document.elementFromPoint(r.left + r.width / 2, r.top + Math.min(r.height / 2, 200));
  return {found: true, width: r.width, height: r.height,
          shown: s.display !== "none" && s.visibility === "visible" && Number(s.opacity) > 0
                 && el.offsetParent !== null,
          on_top: hit !== null && (hit === el || el.contains(hit) || hit.contains(el)),
          natural_width: el.naturalWidth || 0, rows: el.rows ? el.rows.length : 0};
}
function within(after, what) {
  const heads = [...document.querySelectorAll("h1, h2, h3, h4")];
  const i = heads.findIndex(h => h.textContent.includes(after));
  if (i < 0) return null;
  const level = heads[i].tagName, next = heads.slice(i + 1).find(h => h.tagName <= level);
  return [...document.querySelectorAll(what)].find(el =>
    (heads[i].compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING) &&
    (!next || (next.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_PRECEDING))) || null;
}
const out = {images: [...document.images].map(img => ({
  src: img.src.slice(0, 60), loaded: img.complete && img.naturalWidth > 0}))};
const els = sections.map(([name, after, what]) => within(after, what));
sections.forEach(([name], k) => { out[name] = visible(els[k]); });
if (els[0]) els[0].scrollIntoView({block: "center"});  // for the screenshot
return out;
"""


def chromium() -> tuple[str, str] | None:
    """(browser, driver) if Debian's chromium and chromium-driver are installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


def require_chromium() -> tuple[str, str]:
    found = chromium()
    if found is None:
        why = "chromium and chromedriver are not installed (apt-get install chromium chromium-driver)"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"{why}; CI installs them through the Makefile, so this must not skip")
        pytest.skip(why)
    return found


def inspect(page: Path, screenshot: Path, sections: list[tuple[str, str, str]]) -> dict:
    """Open `page` headless and report: images, each section's element (name, heading text,
    CSS selector), the URLs requested, the console messages; saves a screenshot with the first
    section's element in view."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    browser, driver_path = require_chromium()
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium must never fetch a driver itself
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for flag in FLAGS:
        opts.add_argument(flag)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        opts.add_argument(f"--user-data-dir={profile}")  # a fresh profile for every page
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        driver = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
        try:
            driver.set_page_load_timeout(120)
            uri = Path(page).resolve().as_uri()
            driver.get(uri)
            WebDriverWait(driver, 60).until(lambda d: d.execute_script(
                "return document.readyState === 'complete' && "
                "[...document.images].every(i => i.complete)"))
            state = driver.execute_script(_INSPECT, [list(s) for s in sections])
            driver.save_screenshot(str(screenshot))  # the first section is scrolled into view
            state["requests"] = _requested(driver.get_log("performance"), uri)
            state["console"] = [(e["level"], e["message"]) for e in driver.get_log("browser")]
        finally:
            driver.quit()
    return state


def _requested(perf_log, uri: str) -> list[str]:
    """Every URL the page asked for (the browser's own start page is not the page's)."""
    urls = []
    for entry in perf_log:
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent" and \
                msg["params"].get("documentURL") == uri:
            urls.append(msg["params"]["request"]["url"][:120])
    return urls


def problems(state: dict, sections) -> list[str]:
    """What a reader would notice: broken images, a section not on screen, a network request,
    a console error."""
    out = [f"image did not load: {i['src']}" for i in state["images"] if not i["loaded"]]
    if not state["images"]:
        out.append("the page has no image at all")
    for name, after, what in sections:
        s = state[name]
        if not s["found"]:
            out.append(f"{name}: no {what} after the heading {after!r}")
        elif not (s["shown"] and s["on_top"] and s["width"] > 100 and s["height"] > 50):
            out.append(f"{name} is not visible: {s}")
    out += [f"network request: {u}" for u in state["requests"] if not u.startswith(LOCAL_SCHEMES)]
    out += [f"console {level}: {msg}" for level, msg in state["console"]
            if level in ("SEVERE", "ERROR")]
    return out


# the report's chart and its results table, found by the notebook's own headings
REPORT_SECTIONS = [("chart", "Сравнительная диаграмма", "img"),
                   ("results table", "4. Результаты", "table")]
