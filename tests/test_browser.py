"""The committed HTML report in a real browser (Debian's headless Chromium): every image
loads, the chart and the results table are on screen, no network request, no console error.
The freshly built report gets the same check in test_notebook.py; a page with each fault shows
that the checks see them."""
from pathlib import Path

import browser

COMMITTED = Path(__file__).resolve().parents[1] / "reports" / "cifar10-quick.html"


def test_committed_report_renders_offline(tmp_path):
    shot = tmp_path / "cifar10-quick.png"
    state = browser.inspect(COMMITTED, shot, browser.REPORT_SECTIONS)
    assert browser.problems(state, browser.REPORT_SECTIONS) == []
    assert len(state["images"]) >= 5  # samples, graphs, chart, curves, confusion matrix
    assert state["chart"]["natural_width"] >= 600 and state["results table"]["rows"] >= 10
    assert shot.stat().st_size > 20000


def test_the_checks_see_each_fault(tmp_path):
    page = tmp_path / "faulty.html"
    page.write_text("""<!doctype html><html><body>
<h2>4. Результаты</h2><table style="display:none"><tr><th>эксперимент</th></tr></table>
<h3>Сравнительная диаграмма</h3><img src="missing.png" width="400" height="300">
<img src="http://127.0.0.1:9/remote.png">
<script>console.error("broken cell output")</script>
</body></html>""", encoding="utf-8")
    state = browser.inspect(page, tmp_path / "faulty.png", browser.REPORT_SECTIONS)
    found = "\n".join(browser.problems(state, browser.REPORT_SECTIONS))
    assert "image did not load: file://" in found and "missing.png" in found
    assert "network request: http://127.0.0.1:9/remote.png" in found
    assert "results table is not visible" in found
    assert "console SEVERE" in found and "broken cell output" in found
