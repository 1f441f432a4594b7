"""The report draws in a real browser: headless Chromium opens it from file://, with the network unused.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated by
NUL bytes on file descriptors 3 and 4), so the test sees console messages with their level and uncaught exceptions
without extra Python packages and without putting test code into the page. ``assert_report_renders`` (in
conftest.py) can be reused on any report (e.g. one made from a real run).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import ARTIFACTS, assert_report_renders, write_synthetic_run

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
