"""The report draws in a real browser: headless Chromium opens it from file://, with the network unused.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated by
NUL bytes on file descriptors 3 and 4), so the test sees console messages with their level and uncaught exceptions
without extra Python packages and without putting test code into the page. ``assert_report_renders`` (in
conftest.py) can be reused on any report (e.g. one made from a real run).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from conftest import (
    ARTIFACTS,
    RENDER_TIMEOUT_S,
    DevTools,
    assert_report_renders,
    write_large_synthetic_run,
    write_synthetic_run,
)

from clp_tune.report.page import write_report


@pytest.fixture
def report_html(tmp_path: Path) -> Path:
    """The report under test; swap this fixture's body to render another run directory."""
    return write_report(write_synthetic_run(tmp_path / "run"), tmp_path / "report")


def test_report_renders_in_chromium(report_html: Path) -> None:
    screenshot = ARTIFACTS / "report-synthetic.png"
    assert_report_renders(report_html, screenshot)
    assert screenshot.stat().st_size > 10_000


def test_console_errors_are_caught(tmp_path: Path) -> None:
    """The check itself works: console errors and uncaught exceptions fail it."""
    page = tmp_path / "index.html"
    script = 'console.error("boom"); null.draw();'
    page.write_text(f'<body data-figure-count="0"><script>{script}</script></body>', encoding="utf-8")
    with pytest.raises(AssertionError, match=r"(?s)console.error: boom.*exception: TypeError"):
        assert_report_renders(page, tmp_path / "shot.png")


#: A page of a 500-trial search must open this fast (navigation start to every figure drawn) and stay this small.
MAX_DRAW_S = 5.0
MAX_PAGE_BYTES = 8_000_000
TIMING_TRIES = 2
SCALE_MARGIN = 1.5
#: Resolves, once every figure has its SVG, with the milliseconds since navigation started (the page's own clock,
#: so Chromium's start-up does not count).
_DRAWN_MS_JS = """new Promise(function (resolve) {
  var wanted = Number(document.body.dataset.figureCount);
  (function poll() {
    var drawn = document.querySelectorAll(".clp-figure .main-svg").length;
    if (drawn >= wanted) { resolve(performance.now()); } else { setTimeout(poll, 20); }
  })();
})"""


def _draw_seconds(html_path: Path) -> float:
    """Seconds from navigation start until every figure of ``html_path`` has drawn, in headless Chromium."""
    with tempfile.TemporaryDirectory(prefix="clp-chromium-") as profile:
        browser = DevTools(profile, 1400, 900)
        try:
            tab = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": tab, "flatten": True})["sessionId"]
            browser.send("Page.enable", session=session)
            browser.send("Page.navigate", {"url": html_path.resolve().as_uri()}, session=session)
            browser.wait_event("Page.loadEventFired", RENDER_TIMEOUT_S)
            params = {"expression": _DRAWN_MS_JS, "awaitPromise": True, "returnByValue": True}
            reply = browser.send("Runtime.evaluate", params, session=session, timeout=RENDER_TIMEOUT_S)
        finally:
            browser.close()
    return float(reply["result"]["value"]) / 1000


def test_500_trial_report_renders_quickly(tmp_path: Path) -> None:
    """Every figure of a 500-trial report draws, quickly; the page stays under MAX_PAGE_BYTES.

    Timings are the best of TIMING_TRIES (a busy machine only ever slows a page down). On a machine so loaded that
    even the 12-trial report misses MAX_DRAW_S, the 500 trials must at least cost little more than the 12 do
    (within SCALE_MARGIN): what the report controls is how it scales, the machine sets the floor.
    """
    report = write_report(write_large_synthetic_run(tmp_path / "run"), tmp_path / "report")
    size = report.stat().st_size
    assert size < MAX_PAGE_BYTES
    screenshot = ARTIFACTS / "report-500-trials.png"
    assert_report_renders(report, screenshot)
    assert screenshot.stat().st_size > 10_000
    seconds = min(_draw_seconds(report) for _ in range(TIMING_TRIES))
    small = write_report(write_synthetic_run(tmp_path / "small"), tmp_path / "small-report")
    reference = min(_draw_seconds(small) for _ in range(TIMING_TRIES))
    print(f"500-trial report: {size / 1e6:.2f} MB, drawn in {seconds:.2f} s (12-trial report: {reference:.2f} s)")
    assert seconds < MAX_DRAW_S or (reference >= MAX_DRAW_S and seconds < SCALE_MARGIN * reference), (
        f"500-trial report drawn in {seconds:.2f} s; the 12-trial report in {reference:.2f} s"
    )
