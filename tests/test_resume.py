"""`clp-tune resume` after the driver of a real search was SIGKILLed mid-search.

The search runs in a subprocess with its own embedded Ray, whose processes are told apart from any other Ray on
this machine by a private ``RAY_TMPDIR``. The first wave holds a fast trial (batch 64) and a slow one (batch 4),
so one trial finishes while another is mid-way. The whole process group is frozen (SIGSTOP) while the run's files
are read, so the kill lands on a consistent experiment state, then SIGKILLed; `clp-tune resume` must keep the
finished trial untouched, continue the other from its checkpoint and run the trials that never started.
"""

from __future__ import annotations

import glob
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
from conftest import REPO, reap_ray, tiny_spec, write_spec

EPOCHS = 8
TRIALS = 4  # 2 samples x batch_size grid [64, 4]
RUN_TIMEOUT_S = 150  # to reach the kill point (Ray alone takes ~30 s to start on the busy 2-core machine)
RESUME_TIMEOUT_S = 200
# Columns that legitimately differ between two reports of the same epoch.
TIMING = {"epoch_seconds", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp", "date", "pid"}


def _cli_env(ray_tmpdir: str) -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmpdir)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _clp_tune(*args: str) -> list[str]:
    return [sys.executable, "-m", "clp_tune.cli", *args]


def _wait_stopped(pid: int, timeout_s: float = 5.0) -> None:
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


def _result_rows(run_dir: Path) -> dict[str, list[dict]] | None:
    """Every trial's rows from its result.json; None while any file is caught half-written."""
    rows = {}
    for path in run_dir.glob("*/result.json"):
        try:
            text = path.read_text()
            parsed = [json.loads(line) for line in text.splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError):
            return None
        if text and not text.endswith("\n"):
            return None
        if parsed:
            rows[parsed[0]["trial_id"]] = parsed
    return rows


def _experiment_state(run_dir: Path) -> dict[str, tuple[str, int]] | None:
    """Ray's own view of each trial in the saved experiment state: (status, epoch of its last result)."""
    files = sorted(run_dir.glob("experiment_state-*.json"))
    if not files:
        return None
    try:
        state = json.loads(files[-1].read_text())
        trials = {}
        for trial_json, metadata_json in state["trial_data"]:
            trial, metadata = json.loads(trial_json), json.loads(metadata_json)
            last = metadata.get("last_result") or {}
            trials[trial["trial_id"]] = (trial["status"], int(last.get("epoch", 0)))
        return trials
    except (OSError, KeyError, TypeError, ValueError):  # JSONDecodeError is a ValueError
        return None


def _kill_point(state: dict[str, tuple[str, int]], rows: dict[str, list[dict]]) -> bool:
    """One trial finished and checkpointed its last epoch, another checkpointed >= 2 epochs and is not done.

    Also requires every result.json to hold at least the epochs the saved state claims (no sync half-done).
    """
    if any(len(rows.get(t, [])) < epoch for t, (_, epoch) in state.items()):
        return False
    finished = [t for t, (_, epoch) in state.items() if epoch == EPOCHS and len(rows[t]) == EPOCHS]
    midway = [t for t, (_, epoch) in state.items() if 2 <= epoch < EPOCHS]
    return bool(finished) and bool(midway)


def _log_tail(path: Path, lines: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else "(no log)"


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _rows_equal(a: list[dict], b: list[dict]) -> bool:
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(_same(x[k], y[k]) for k in x) for x, y in zip(a, b, strict=True)
    )


def _run_until_midway(spec_path: Path, root: Path, env: dict[str, str], log: Path) -> dict[str, tuple[str, int]]:
    """Start `clp-tune run`, SIGKILL its process group at the kill point; returns Ray's saved trial states."""
    run_dir = root / "runs" / "r"
    command = _clp_tune("run", str(spec_path), "--storage-path", str(root / "runs"), "--run-name", "r",
                        "--num-cpus", "2", "--reports-dir", str(root / "reports"))  # fmt: skip
    with log.open("w") as out:
        driver = subprocess.Popen(command, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)  # fmt: skip
    rows, state = None, None
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while time.monotonic() < deadline:
            if driver.poll() is not None:
                raise AssertionError(
                    f"`clp-tune run` ended (exit {driver.returncode}) before one trial finished while another was "
                    f"mid-way; trials too fast?\n{_log_tail(log)}"
                )
            rows, state = _result_rows(run_dir), _experiment_state(run_dir)
            if rows is None or state is None or not _kill_point(state, rows):
                time.sleep(0.2)
                continue
            # Freeze the driver (and its Ray) and re-read: the files must be whole and still at the kill point.
            os.killpg(driver.pid, signal.SIGSTOP)
            _wait_stopped(driver.pid)
            rows, state = _result_rows(run_dir), _experiment_state(run_dir)
            if rows is not None and state is not None and _kill_point(state, rows):
                os.killpg(driver.pid, signal.SIGKILL)
                driver.wait(timeout=30)
                return state
            os.killpg(driver.pid, signal.SIGCONT)
            time.sleep(0.1)
        raise AssertionError(
            f"no kill point within {RUN_TIMEOUT_S} s; epochs in result.json: "
            f"{ {t: len(r) for t, r in (rows or {}).items()} }, in Ray's saved experiment state (status, epoch): "
            f"{state if state is not None else 'unreadable'}\n{_log_tail(log)}"
        )
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)


def test_resume_after_driver_killed_keeps_finished_and_continues_unfinished(tmp_path: Path) -> None:
    spec = tiny_spec(
        name="resume", epochs=EPOCHS, num_samples=2, statistics=["tse"],
        params={"lr": {"loguniform": [0.001, 0.01]}, "batch_size": {"grid": [64, 4]}},
    )  # fmt: skip
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    # A short private RAY_TMPDIR (socket paths must stay < 108 bytes) marks this test's Ray processes.
    ray_tmpdir = tempfile.mkdtemp(prefix="clp-rs-", dir="/tmp")
    env = _cli_env(ray_tmpdir)
    run_dir = tmp_path / "runs" / "r"
    try:
        state = _run_until_midway(spec_path, tmp_path, env, tmp_path / "run.log")
        reap_ray(ray_tmpdir, grace_s=20.0)
        before = _result_rows(run_dir)
        assert before is not None, "a result.json was left half-written at the kill"
        finished = {t for t, (_, epoch) in state.items() if epoch == EPOCHS}
        midway = {t: epoch for t, (_, epoch) in state.items() if 0 < epoch < EPOCHS}
        assert finished and midway, state

        log = tmp_path / "resume.log"
        with log.open("w") as out:
            resumed = subprocess.run(
                _clp_tune("resume", str(run_dir), "--num-cpus", "2", "--reports-dir", str(tmp_path / "reports")),
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RESUME_TIMEOUT_S,
            )  # fmt: skip
        assert resumed.returncode == 0, f"`clp-tune resume` exited {resumed.returncode}\n{_log_tail(log)}"
    finally:
        reap_ray(ray_tmpdir, grace_s=10.0)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)

    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == TRIALS, f"expected the planned {TRIALS} trials:\n{trials[['trial_id', 'status']]}"
    assert (trials.status == "finished").all(), trials[["trial_id", "status", "epochs", "error"]]
    trajectories = pd.read_parquet(run_dir / "trajectories.parquet")
    epochs = trajectories.groupby("trial_id").epoch.apply(list).to_dict()
    assert epochs == {t: list(range(1, EPOCHS + 1)) for t in trials.trial_id}, epochs
    after = _result_rows(run_dir)
    assert after is not None

    for trial_id, old_rows in before.items():
        # Nothing reported before the kill is rewritten: result.json only grows.
        assert _rows_equal(after[trial_id][: len(old_rows)], old_rows), f"{trial_id}: rows from before the kill changed"

    for trial_id in finished:
        # Finished before the kill: not run again, its rows in trajectories.parquet are the ones it reported.
        assert len(after[trial_id]) == EPOCHS, f"{trial_id} finished before the kill but was run again"
        table = trajectories[trajectories.trial_id == trial_id].sort_values("epoch")
        for row, old in zip(table.to_dict("records"), before[trial_id], strict=True):
            for column in old.keys() & row.keys():
                assert _same(row[column], old[column]), (trial_id, old["epoch"], column, old[column], row[column])

    for trial_id, checkpointed in midway.items():
        # Unfinished: continued from its checkpoint, not from epoch 1.
        new_epochs = [row["epoch"] for row in after[trial_id][len(before[trial_id]) :]]
        old_epochs = [row["epoch"] for row in before[trial_id]]
        assert new_epochs, f"{trial_id} was unfinished at the kill but reported nothing after resume"
        assert new_epochs[0] == checkpointed + 1 > 1, (
            f"{trial_id}: checkpointed epoch {checkpointed}, first epoch after resume {new_epochs[0]} "
            f"(before the kill: {old_epochs}, after: {new_epochs})"
        )
        assert new_epochs == list(range(checkpointed + 1, EPOCHS + 1)), new_epochs
        # The epochs up to the checkpoint keep the values reported before the kill.
        table = trajectories[trajectories.trial_id == trial_id].set_index("epoch")
        for old in before[trial_id][:checkpointed]:
            compared = (old.keys() & set(table.columns)) - TIMING
            assert "val_acc" in compared, (trial_id, old["epoch"], sorted(compared))
            for column in compared:
                assert _same(table.at[old["epoch"], column], old[column]), (trial_id, old["epoch"], column)
