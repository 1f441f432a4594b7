"""Shared test setup: Ray without auth or dashboard, and tiny search specs that train real models fast."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import select
import signal
import subprocess
import tempfile
import time
from base64 import b64decode
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from clp_tune.stopping.fit_cache import CACHE_ENV, OFF
from clp_tune.vocabulary import DECISIONS_FILE, SPEC_FILE, TRAJECTORIES_FILE, TRIALS_FILE

# A token file left in ~/.ray silently switches Ray's token auth on; tests choose explicitly.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# No test reads or grows the user's bank library unless it names one: searches stay independent of each other.
os.environ["CLP_TUNE_BANKS"] = "off"
# Fitted priors are kept for this session only (its searches, and their drivers in subprocesses, share them): the
# user's cache is neither read nor grown. Tests of the fits themselves turn it off (no_fit_cache).
_FIT_CACHE = tempfile.TemporaryDirectory(prefix="clp-tune-fit-cache-")
os.environ[CACHE_ENV] = _FIT_CACHE.name

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_fit_cache(monkeypatch):
    """Every fit made afresh: a test of what fitting does must not read the session's earlier fits."""
    monkeypatch.setenv(CACHE_ENV, OFF)


@pytest.fixture(scope="module")
def ray_local():
    """An embedded Ray for one test module (2 CPUs, no dashboard), shut down afterwards."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def ray_pids(ray_tmpdir: str) -> list[int]:
    """Processes of one test's own Ray: they carry its private RAY_TMPDIR (environment or command line).

    Tests that start Ray in subprocesses or as a multi-node cluster clean up by these pids, never with
    ``ray stop``, which would kill every Ray on the machine.
    """
    marker_env = f"RAY_TMPDIR={ray_tmpdir}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker_env in environ or ray_tmpdir.encode() in cmdline:
            pids.append(int(entry))
    return pids


def reap_ray(ray_tmpdir: str, grace_s: float) -> list[int]:
    """Wait up to ``grace_s`` for one test's Ray processes to exit on their own, then SIGKILL the survivors;
    returns the pids that had to be killed."""
    deadline = time.monotonic() + grace_s
    while ray_pids(ray_tmpdir) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = ray_pids(ray_tmpdir)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return survivors


def tiny_spec(**overrides) -> dict:
    """A real but tiny search: digits + MLP, a few epochs, random search, FIFO."""
    spec = {
        "name": "tiny",
        "dataset": "digits",
        "model": "mlp",
        "epochs": 3,
        "num_samples": 3,
        "searcher": "random",
        "scheduler": "fifo",
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1},
        "statistics": ["grad_norm", "layer_rotation", "tse"],
        "params": {"lr": {"loguniform": [0.001, 0.01]}, "batch_size": 64, "dropout": {"uniform": [0.0, 0.3]}},
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


# --- a synthetic run directory for the report tests (test_report.py, test_report_browser.py) ---------------

EPOCHS = 10
SPEC_TEXT = """\
# synthetic search; this comment must stay inert: <script>alert("spec")</script>
name: synthetic
description: a <b>synthetic</b> search
dataset: mnist1d
model: mlp
epochs: 10
num_samples: 12
scheduler: trajectory
params:
  lr: {loguniform: [0.001, 0.1]}
  batch_size: {choice: [32, 64]}
  mixup_off: {choice: [0, 2, 0.2]}
  seed: {choice: [0, 1, 2, 3]}
  dropout: 0.1
"""
MIXUP_EFFECT = {"0": 0.0, "2": 0.02, "0.2": -0.01}
STATISTICS = ("grad_norm", "layer_rotation", "grad_cosine_distance", "fisher_trace", "weight_distance")
ERROR_TEXT = 'RuntimeError: CUDA <script>alert("error")</script> out of memory'


def write_synthetic_run(
    run_dir: Path, *, scheduler: str = "trajectory", statistics: bool = True, pretrain: bool = False
) -> Path:
    """Write a run directory in the contract's schema without running Ray: 12 trials x 10 epochs, Mixup-off window
    in {0, 2, 0.2} x 4 seeds; the spec, trajectories and trials (and decisions for the trajectory scheduler).

    Trials 3 and 7 are stopped (epochs 4 and 6), trial 10 diverges at epoch 1, trial 11 errors before reporting.
    ``pretrain`` alternates pretrain "none"/"stacked" and adds a pretrain_recon_error column.
    """
    rng = np.random.default_rng(0)
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = SPEC_TEXT if scheduler == "trajectory" else SPEC_TEXT.replace("scheduler: trajectory", "scheduler: fifo")
    (run_dir / SPEC_FILE).write_text(spec, encoding="utf-8")
    stop_at = {3: 4, 7: 6}
    trials, rows, decisions = [], [], []
    for index in range(12):
        mixup_off = list(MIXUP_EFFECT)[index // 4]
        trial_id = f"t{index:02d}"
        config = {
            "config/dataset": "mnist1d",
            "config/model": "mlp",
            "config/epochs": EPOCHS,
            "config/lr": float(10 ** rng.uniform(-3, -1)),
            "config/batch_size": int(rng.choice([32, 64])),
            "config/mixup_off": mixup_off,
            "config/seed": index % 4,
            "config/dropout": 0.1,
            "config/mixup_alpha": 1.0,
            "config/statistics": str(list(STATISTICS) if statistics else []),
            "config/pretrain": ("none", "stacked")[index % 2] if pretrain else "none",
        }
        final = 0.7 + MIXUP_EFFECT[mixup_off] + rng.normal(0, 0.01)
        status = (
            "stopped" if index in stop_at else "diverged" if index == 10 else "error" if index == 11 else "finished"
        )
        epochs = {"stopped": stop_at.get(index), "diverged": 1, "error": 0}.get(status, EPOCHS)
        curve = [final * (1 - np.exp(-e / 3)) + rng.normal(0, 0.005) for e in range(1, epochs + 1)]
        if status == "diverged":
            curve = [0.1]
        for epoch, val_acc in enumerate(curve, start=1):
            row = {"trial_id": trial_id, "epoch": epoch, "train_loss": 1.0 / epoch, "train_acc": val_acc + 0.02}
            row.update(val_loss=1.1 / epoch, val_acc=val_acc, lr=config["config/lr"], epoch_seconds=0.5)
            row.update(diverged=int(status == "diverged"), test_loss=np.nan, test_acc=np.nan)
            if statistics:
                row.update({name: float(np.exp(-epoch / 4) + rng.normal(0, 0.01)) for name in STATISTICS})
                row["cp_end_acc50"] = 3.0 if epoch >= 3 else np.nan
                row["cp_end_layer_rotation"] = 4.0 if epoch >= 4 else np.nan
            if pretrain:
                row["pretrain_recon_error"] = 0.2 if config["config/pretrain"] == "stacked" else np.nan
            if status == "finished" and epoch == epochs:
                row.update(test_loss=1.2 / epoch, test_acc=val_acc - 0.01)
            rows.append({**row, **config})
            if scheduler == "trajectory" and epoch >= 2:
                stop = status == "stopped" and epoch == epochs
                decisions.append(
                    {"trial_id": trial_id, "epoch": epoch, "pred_mean": final + rng.normal(0, 0.03 / epoch),
                     "pred_std": 0.05 / epoch, "threshold": 0.7, "p_beat": 0.01 if stop else 0.5,
                     "action": "stop" if stop else "continue", "reason": "p_beat < 0.05" if stop else ""}
                )  # fmt: skip
        trial = {"trial_id": trial_id, "status": status, "error": ERROR_TEXT if status == "error" else None}
        trial.update(epochs=epochs, val_acc=curve[-1] if curve else np.nan, best_val_acc=max(curve, default=np.nan))
        trial.update(test_acc=curve[-1] - 0.01 if status == "finished" else np.nan, time_total_s=0.5 * epochs + 1)
        if statistics:
            trial.update(
                cp_end_acc50=3.0 if epochs >= 3 else np.nan, cp_end_layer_rotation=4.0 if epochs >= 4 else np.nan
            )
        if pretrain:
            trial["pretrain_recon_error"] = 0.2 + 0.01 * index if config["config/pretrain"] == "stacked" else np.nan
        trials.append({**trial, **config})
    pd.DataFrame(rows).to_parquet(run_dir / TRAJECTORIES_FILE)
    pd.DataFrame(trials).to_parquet(run_dir / TRIALS_FILE)
    if scheduler == "trajectory":
        pd.DataFrame(decisions).to_parquet(run_dir / DECISIONS_FILE)
    return run_dir


def write_large_synthetic_run(run_dir: Path, n_trials: int = 500, finished_every: int = 12) -> Path:
    """A trajectory-scheduler search of ``n_trials`` trials x EPOCHS epochs, most of them stopped (every
    ``finished_every``-th finishes, the rest stop between epochs 2 and 6 with a prediction on every epoch from 2):
    the report must stay legible, quick to open and small at that size."""
    rng = np.random.default_rng(1)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / SPEC_FILE).write_text(SPEC_TEXT.replace("num_samples: 12", f"num_samples: {n_trials}"), encoding="utf-8")
    ids = [f"t{index:03d}" for index in range(n_trials)]
    config = pd.DataFrame({"trial_id": ids, "config/epochs": EPOCHS, "config/dropout": 0.1, "config/mixup_alpha": 1.0})
    config["config/lr"] = 10 ** rng.uniform(-3, -1, n_trials)
    config["config/batch_size"] = rng.choice([32, 64], n_trials)
    config["config/mixup_off"] = rng.choice(list(MIXUP_EFFECT), n_trials)
    config["config/seed"] = rng.integers(0, 4, n_trials)
    finals = 0.7 + config["config/mixup_off"].map(MIXUP_EFFECT) - 0.03 * (np.log10(config["config/lr"]) + 2) ** 2
    finals += rng.normal(0, 0.01, n_trials)
    finished = np.arange(n_trials) % finished_every == 0
    epochs = np.where(finished, EPOCHS, rng.integers(2, 7, n_trials))
    rows = config.loc[config.index.repeat(epochs)].assign(epoch=np.concatenate([np.arange(1, e + 1) for e in epochs]))
    val_acc = finals.loc[rows.index].to_numpy() * (1 - np.exp(-rows["epoch"] / 3)) + rng.normal(0, 0.005, len(rows))
    rows = rows.assign(val_acc=val_acc, train_acc=val_acc + 0.02, train_loss=1.0 / rows["epoch"])
    rows = rows.assign(val_loss=1.1 / rows["epoch"], diverged=0).reset_index(drop=True)
    rows.to_parquet(run_dir / TRAJECTORIES_FILE)
    last = rows.groupby("trial_id").tail(1).set_index("trial_id")
    trials = config.assign(status=np.where(finished, "finished", "stopped"), error=None, epochs=epochs)
    trials = trials.assign(val_acc=last["val_acc"].reindex(ids).to_numpy(), time_total_s=0.5 * epochs + 1)
    trials.assign(best_val_acc=trials["val_acc"], test_acc=trials["val_acc"] - 0.01).to_parquet(run_dir / TRIALS_FILE)
    judged = rows.loc[rows["epoch"] >= 2, ["trial_id", "epoch"]]
    stop = (judged["epoch"] == judged["trial_id"].map(last["epoch"])) & ~judged["trial_id"].isin(ids[::finished_every])
    noise = rng.normal(0, 0.03 / judged["epoch"])
    decisions = judged.assign(pred_mean=judged["trial_id"].map(dict(zip(ids, finals, strict=True))) + noise)
    decisions = decisions.assign(pred_std=0.05 / judged["epoch"], threshold=0.7, p_beat=np.where(stop, 0.01, 0.5))
    decisions = decisions.assign(action=np.where(stop, "stop", "continue"), reason=np.where(stop, "p_beat < 0.05", ""))
    decisions.to_parquet(run_dir / DECISIONS_FILE)
    return run_dir


# --- a real browser for the report: headless Chromium over the DevTools protocol on a pipe ---------------------

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
    """A missing browser fails the test: a skip would let a report that draws nothing pass unnoticed."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: the browser test needs it (install with apt-get install chromium)")


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
