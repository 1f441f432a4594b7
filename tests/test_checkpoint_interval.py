"""Checkpointing every N epochs (``checkpoint_every``) with real Ray Tune trials: a trial whose worker is SIGKILLed,
and one its scheduler pauses, resume from their last checkpoint, train the epochs since again from the exactly
restored state, re-report the same rows, and end where the uninterrupted trial ends."""

from __future__ import annotations

import math
import os
import signal
from pathlib import Path
from typing import Any

import torch
from conftest import tiny_spec
from ray import tune
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from clp_tune.spec import parse_spec
from clp_tune.trial.recipe import run_trial
from clp_tune.trial.trainable import train_trial

EVERY = 3
EPOCHS = 7
INTERRUPT_AT = 4  # after this epoch's report: the last checkpoint is epoch 3, so epoch 4 (at least) runs twice
VOLATILE = {"epoch_seconds"}  # the one column of the trial's own that differs between two runs of an epoch


def config() -> dict[str, Any]:
    spec = tiny_spec(
        name="every", epochs=EPOCHS, num_samples=1, checkpoint_every=EVERY, statistics=["tse", "grad_norm"]
    )
    spec["params"] = {"lr": 0.003, "batch_size": 16, "seed": 5, "dropout": 0.2, "mixup_alpha": 0.4}
    return parse_spec(spec).fixed_config()


def uninterrupted(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """The same trial trained straight through in this process, on the one thread Ray gives it."""
    rows: list[dict[str, Any]] = []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run_trial(cfg, lambda row, state: rows.append(row))
    finally:
        torch.set_num_threads(threads)
    return rows


def same(a: dict[str, Any], b: dict[str, Any], keys: set[str]) -> bool:
    """``a`` and ``b`` agree on ``keys`` (NaN equal to NaN)."""
    return all(a[k] == b[k] or (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) for k in keys)


class Recorder(tune.Callback):
    """Every result of each trial (by seed) in the order the driver received it: a repeated epoch appears twice.
    (Read on the driver, not from result.json, which a restored trial's logger may have rewritten.)"""

    def __init__(self) -> None:
        self.rows: dict[int, list[dict[str, Any]]] = {}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.rows.setdefault(trial.config["seed"], []).append(dict(result))


KILLED_SEED, PAUSED_SEED = 5, 6  # one trial of each interruption, side by side in one search


class KillWorkerOnce(tune.Callback):
    """SIGKILLs the worker process of the trial with ``KILLED_SEED`` once, as soon as its ``INTERRUPT_AT`` result
    arrives."""

    def __init__(self) -> None:
        self.killed = False

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not self.killed and trial.config["seed"] == KILLED_SEED and result["epoch"] == INTERRUPT_AT:
            self.killed = True
            os.kill(result["pid"], signal.SIGKILL)


class PauseOnce(FIFOScheduler):
    """Pauses the trial with ``PAUSED_SEED`` once after its ``INTERRUPT_AT`` result; FIFO resumes it when nothing
    else is pending."""

    def __init__(self) -> None:
        super().__init__()
        self.paused = False

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if not self.paused and trial.config["seed"] == PAUSED_SEED and result["epoch"] == INTERRUPT_AT:
            self.paused = True
            return TrialScheduler.PAUSE
        return TrialScheduler.CONTINUE


def test_trials_checkpointing_every_3_epochs_killed_or_paused_end_as_uninterrupted(ray_local, tmp_path: Path) -> None:
    cfg = config()
    killer, scheduler, recorder = KillWorkerOnce(), PauseOnce(), Recorder()
    tuner = tune.Tuner(
        tune.with_resources(train_trial, {"cpu": 1}),
        param_space=cfg | {"seed": tune.grid_search([KILLED_SEED, PAUSED_SEED])},
        tune_config=tune.TuneConfig(num_samples=1, scheduler=scheduler, max_concurrent_trials=2),
        run_config=tune.RunConfig(
            name="r", storage_path=str(tmp_path), callbacks=[recorder, killer], verbose=0,
            failure_config=tune.FailureConfig(max_failures=1),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )  # fmt: skip
    results = tuner.fit()
    assert [result.error for result in results] == [None, None]
    assert killer.killed and scheduler.paused

    assert sorted(recorder.rows) == [KILLED_SEED, PAUSED_SEED]
    for seed, rows in recorder.rows.items():
        epochs = [row["epoch"] for row in rows]
        restart = next(i for i in range(1, len(epochs)) if epochs[i] <= epochs[i - 1])
        assert epochs[restart] == EVERY + 1, f"seed {seed} not resumed from the epoch-{EVERY} checkpoint: {epochs}"
        assert epochs[restart:] == list(range(EVERY + 1, EPOCHS + 1)), epochs
        # The repeated epochs come out exactly as the first time, and the whole trial as if never interrupted.
        straight = {row["epoch"]: row for row in uninterrupted(cfg | {"seed": seed})}
        # Compared on the trial's own columns (Ray adds times, pid, iteration counters to what it writes).
        keys = {epoch: set(row) - VOLATILE for epoch, row in straight.items()}
        first = {row["epoch"]: row for row in rows[:restart]}
        repeated = [row for row in rows[restart:] if row["epoch"] in first]
        assert repeated and all(same(row, first[row["epoch"]], keys[row["epoch"]]) for row in repeated)
        last = {row["epoch"]: row for row in rows}  # a re-reported epoch replaces the earlier one, as clp_tune.store
        assert sorted(last) == sorted(straight)
        differing = [e for e in last if not same(straight[e], last[e], keys[e])]
        assert not differing, f"seed {seed}: the resumed trial differs from the uninterrupted one at epochs {differing}"
        assert math.isfinite(last[EPOCHS]["test_acc"])
