"""Killing a search's driver at a chosen point, for the resume tests.

A search runs as ``clp-tune run`` in a subprocess with its own embedded Ray, its processes told apart from any
other Ray on this machine by a private ``RAY_TMPDIR``. A probe reads the run's saved state until it is at the
point wanted; then the whole process group is frozen (SIGSTOP), so that no write is in flight, the probe asked
again on the frozen state, and the group SIGKILLed: the kill lands on a consistent experiment state.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from conftest import REPO

T = TypeVar("T")


def cli_env(ray_tmpdir: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmpdir, **extra)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def clp_tune(*args: str) -> list[str]:
    return [sys.executable, "-m", "clp_tune.cli", *args]


def log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def wait_stopped(pid: int, timeout_s: float = 5.0) -> None:
    """Until every thread of ``pid`` is stopped (state T), so no write of it is in flight."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        states = []
        for stat in glob.glob(f"/proc/{pid}/task/*/stat"):
            try:
                states.append(Path(stat).read_text().rsplit(")", 1)[1].split()[0])
            except (OSError, IndexError):
                continue
        if states and all(state in "tTZX" for state in states):
            return
        time.sleep(0.01)


def trial_states(text: str | None) -> dict[str, tuple[str, int]] | None:
    """Ray's own view of each trial in a saved experiment state (``experiment_state-*.json``'s text): (status, epoch
    of its latest registered checkpoint, the one a resume restores; 0 without one); None when there is none or it
    is caught half-written.

    Not the epoch of its last result: Tune records a result, then asks the trial to save and registers the
    checkpoint when the save returns, so a state written in between is a result ahead of what a resume restores.
    """
    if not text:
        return None
    try:
        trials = {}
        for trial_json, metadata_json in json.loads(text)["trial_data"]:
            trial, metadata = json.loads(trial_json), json.loads(metadata_json)
            trials[trial["trial_id"]] = (trial["status"], _checkpointed_epoch(metadata.get("checkpoint_manager")))
        return trials
    except (KeyError, TypeError, ValueError):  # JSONDecodeError is a ValueError
        return None


def _checkpointed_epoch(manager: dict | None) -> int:
    """The ``epoch`` of the latest checkpoint in a trial's saved checkpoint manager (Tune keeps it cloudpickled)."""
    from ray import cloudpickle

    if not manager:
        return 0
    latest = cloudpickle.loads(bytes.fromhex(manager["value"])).latest_checkpoint_result
    return int(latest.metrics.get("epoch", 0)) if latest is not None else 0


def kill_at(command: list[str], cwd: Path, env: dict[str, str], log: Path, probe: Callable[[], T | None],
            timeout_s: float, describe: Callable[[], str] = lambda: "") -> T:  # fmt: skip
    """Run ``command``; SIGKILL its process group once ``probe()`` returns a value on the frozen group; return it.
    ``describe()`` says where the run was when no kill point came in ``timeout_s``."""
    with log.open("w") as out:
        driver = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    seen = None
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if driver.poll() is not None:
                raise AssertionError(f"`{' '.join(command[2:4])}` ended (exit {driver.returncode}) before the kill "
                                     f"point; trials too fast?\n{log_tail(log)}")  # fmt: skip
            if probe() is None:
                time.sleep(0.2)
                continue
            os.killpg(driver.pid, signal.SIGSTOP)
            wait_stopped(driver.pid)
            seen = probe()
            if seen is not None:
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
                return seen
            os.killpg(driver.pid, signal.SIGCONT)
            time.sleep(0.1)
        raise AssertionError(f"no kill point within {timeout_s} s; {describe()}\n{log_tail(log)}")
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
