"""`clp-tune resume` after the driver of a real search was SIGKILLed mid-search.

The search runs in a subprocess with its own embedded Ray, killed at a consistent point (:mod:`driver_kill`). The
first wave holds a fast trial (batch 64) and a slow one (batch 4), so one trial finishes while another is mid-way;
`clp-tune resume` must keep the finished trial untouched, continue the other from its checkpoint and run the trials
that never started. (A trajectory-scheduled search, resumed from S3 with the same decisions as an uninterrupted
one, is ``tests/test_s3.py``.)
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import tempfile
from pathlib import Path

import pandas as pd
from conftest import reap_ray, tiny_spec, write_spec
from driver_kill import cli_env, clp_tune, kill_at, log_tail, trial_states

EPOCHS = 8
TRIALS = 4  # 2 samples x batch_size grid [64, 4]
RUN_TIMEOUT_S = 150  # to reach the kill point (Ray alone takes ~30 s to start on the busy 2-core machine)
RESUME_TIMEOUT_S = 200
# Columns that legitimately differ between two reports of the same epoch.
TIMING = {"epoch_seconds", "time_total_s", "time_this_iter_s", "time_since_restore", "timestamp", "date", "pid"}


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
    """Ray's own view of each trial in the saved experiment state: (status, epoch of its latest checkpoint)."""
    files = sorted(run_dir.glob("experiment_state-*.json"))
    try:
        return trial_states(files[-1].read_text()) if files else None
    except OSError:
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
    command = clp_tune("run", str(spec_path), "--storage-path", str(root / "runs"), "--run-name", "r",
                       "--num-cpus", "2", "--reports-dir", str(root / "reports"))  # fmt: skip

    def probe() -> dict[str, tuple[str, int]] | None:
        rows, state = _result_rows(run_dir), _experiment_state(run_dir)
        return state if rows is not None and state is not None and _kill_point(state, rows) else None

    def describe() -> str:
        rows, state = _result_rows(run_dir), _experiment_state(run_dir)
        return (f"epochs in result.json: { {t: len(r) for t, r in (rows or {}).items()} }, in Ray's saved experiment "
                f"state (status, epoch): {state if state is not None else 'unreadable'}")  # fmt: skip

    return kill_at(command, root, env, log, probe, RUN_TIMEOUT_S, describe)


def test_resume_after_driver_killed_keeps_finished_and_continues_unfinished(tmp_path: Path) -> None:
    spec = tiny_spec(
        name="resume", epochs=EPOCHS, num_samples=2, statistics=["tse"],
        params={"lr": {"loguniform": [0.001, 0.01]}, "batch_size": {"grid": [64, 4]}},
    )  # fmt: skip
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    # A short private RAY_TMPDIR (socket paths must stay < 108 bytes) marks this test's Ray processes.
    ray_tmpdir = tempfile.mkdtemp(prefix="clp-rs-", dir="/tmp")
    env = cli_env(ray_tmpdir)
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
                clp_tune("resume", str(run_dir), "--num-cpus", "2", "--reports-dir", str(tmp_path / "reports")),
                cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RESUME_TIMEOUT_S,
            )  # fmt: skip
        assert resumed.returncode == 0, f"`clp-tune resume` exited {resumed.returncode}\n{log_tail(log)}"
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
