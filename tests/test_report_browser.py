"""The report draws in a real browser: headless Chromium opens it from file://, with the network unused.

Chromium is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: JSON messages separated by
NUL bytes on file descriptors 3 and 4), so the test sees console messages with their level and uncaught exceptions
without extra Python packages and without putting test code into the page. ``assert_report_renders`` can be reused
on any report (e.g. one made from a real run).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import subprocess
import tempfile
import time
from base64 import b64decode
from pathlib import Path

import pytest
from test_report import write_synthetic_run

from clp_tune.report.page import write_report

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    # The parallel-coordinates chart needs WebGL; without a GPU that is SwiftShader, which Chromium only uses when
    # asked (the page is our own, trusted content).
    "--enable-unsafe-swiftshader",
    "--remote-debugging-pipe",
)
RENDER_TIMEOUT_S = 30.0


def _require_chromium() -> None:
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{CHROMIUM} is missing in CI: install the Debian package 'chromium'")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium); CI must have it")


class DevTools:
    """A minimal DevTools-protocol client over Chromium's debugging pipe; collects events while it waits."""

    def __init__(self, user_data_dir: str, width: int, height: int):
        to_browser_read, self._write_fd = os.pipe()
        self._read_fd, from_browser_write = os.pipe()

        def wire_pipes() -> None:
            """In the child: Chromium reads commands on fd 3 and writes replies on fd 4. Both ends are first moved
            above 10 so neither is clobbered by the other's dup2; dup2 makes 3 and 4 inheritable across exec."""
            commands, replies = (fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_browser_read, from_browser_write))
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [str(CHROMIUM), *FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=wire_pipes, close_fds=False,
        )  # fmt: skip
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None, timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._write_fd, json.dumps(message).encode() + b"\0")
        reply = self._receive(lambda m: m.get("id") == self._next_id, timeout)
        if "error" in reply:
            raise RuntimeError(f"{method}: {reply['error']}")
        return reply["result"]

    def wait_event(self, method: str, timeout: float) -> dict:
        for event in self.events:
            if event.get("method") == method:
                return event
        return self._receive(lambda m: m.get("method") == method, timeout)

    def _receive(self, wanted, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if "method" in message:
                    self.events.append(message)
                if wanted(message):
                    return message
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._read_fd], [], [], left)[0]:
                raise TimeoutError("no reply from Chromium")
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited (code {self.process.poll()})")
            self._buffer += chunk

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, TimeoutError, OSError):
            self.send("Browser.close", timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._write_fd)
        os.close(self._read_fd)


def _console_problems(events: list[dict]) -> list[str]:
    """Console errors, uncaught exceptions and browser log errors, as readable lines."""
    problems = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append(
                "console.error: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"])
            )
        elif method == "Runtime.exceptionThrown":
            details = params["exceptionDetails"]
            problems.append("exception: " + details.get("exception", {}).get("description", details.get("text", "")))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"log error: {params['entry']['text']} ({params['entry'].get('url', '')})")
    return problems


_COUNT_JS = """JSON.stringify({
  expected: Number(document.body.dataset.figureCount),
  figures: document.querySelectorAll(".clp-figure").length,
  drawn: document.querySelectorAll(".clp-figure .js-plotly-plot").length,
  withSvg: Array.from(document.querySelectorAll(".clp-figure")).filter(f => f.querySelector(".main-svg")).length,
  height: document.documentElement.scrollHeight
})"""


def assert_report_renders(html_path: Path, screenshot_path: Path, width: int = 1400) -> None:
    """Open ``html_path`` from file:// in headless Chromium; assert every figure drew and the console stayed
    free of errors; save a full-page PNG at ``screenshot_path``."""
    _require_chromium()
    with tempfile.TemporaryDirectory(prefix="clp-chromium-") as profile:
        browser = DevTools(profile, width, 4000)
        try:
            target = browser.send("Target.createTarget", {"url": "about:blank"})["targetId"]
            session = browser.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log"):
                browser.send(f"{domain}.enable", session=session)
            browser.send("Page.navigate", {"url": html_path.resolve().as_uri()}, session=session)
            browser.wait_event("Page.loadEventFired", RENDER_TIMEOUT_S)
            deadline = time.monotonic() + RENDER_TIMEOUT_S
            while True:  # Plotly draws after load; poll until every figure has its SVG
                result = browser.send("Runtime.evaluate", {"expression": _COUNT_JS}, session=session)
                counts = json.loads(result["result"]["value"])
                if counts["withSvg"] >= counts["expected"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            browser.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": min(counts["height"], 16000), "deviceScaleFactor": 1, "mobile": False},
                session=session,
            )
            time.sleep(0.5)  # let responsive figures settle after the resize
            shot = browser.send("Page.captureScreenshot", {"format": "png"}, session=session)
            screenshot_path.parent.mkdir(parents=True, exist_ok=True)
            screenshot_path.write_bytes(b64decode(shot["data"]))
            problems = _console_problems(browser.events)
        finally:
            browser.close()
    assert not problems, "browser console:\n" + "\n".join(problems)
    assert counts["expected"] > 0, "the page declares no figures"
    assert counts["figures"] == counts["expected"], counts
    assert counts["drawn"] == counts["expected"], f"not every figure was drawn by plotly: {counts}"
    assert counts["withSvg"] == counts["expected"], f"not every figure has an SVG: {counts}"


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
