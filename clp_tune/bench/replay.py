"""The scheduler benchmark's reference backend: replay a bank through real Ray Tune, one trial at a time.

The benchmark itself runs on :mod:`clp_tune.bench.simulator` (fast, deterministic, any number of workers); this
backend exists to check it: with ``max_concurrent_trials=1`` real Tune and the simulator must take the same
decisions (``tests/test_replay.py``), and ``clp-tune bench schedulers --ray`` runs a whole benchmark this way.
A replay trainable reports the recorded rows of its trial epoch by epoch (the same rows the simulator sends,
:func:`~clp_tune.bench.simulator.result_rows`), without sleeping, each with a checkpoint holding its position, so
a trial the scheduler pauses resumes at its next row. The trials are the grid of a
:class:`~clp_tune.stopping.slots.FrozenSlotsVariantGenerator` limited to one at a time, frozen ones not counted,
as a search's are.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clp_tune.bench.simulator import Completion, Rows
from clp_tune.environment import environment

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler


def make_replay_trainable() -> Callable[..., None]:
    """The replay trainable: reports the recorded rows of ``config["trial_id"]``, one per epoch, no sleeping.

    It is built inside a function so that cloudpickle ships it by value: the trial actor then never imports
    this module (pandas, scipy, the predictor), which would cost seconds per replay on a small machine.
    """

    def replay(config: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> None:
        import tempfile

        from ray import tune

        checkpoint = tune.get_checkpoint()
        start = 0
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                start = int(Path(directory, "row").read_text())
        for index, row in enumerate(rows[config["trial_id"]][start:], start + 1):
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "row").write_text(str(index))
                tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))

    return replay


@contextlib.contextmanager
def _quiet_tune() -> Iterator[None]:
    """A replay without Tune's console output and its CSV and TensorBoard loggers (~40 % of a replay's time).

    Tune prints banners even at verbose=0, and warns about "slow" scheduler calls when the predictor refits;
    the trials' result.json files are kept.
    """
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    tune_logger.setLevel(logging.ERROR)
    try:
        with (
            environment(TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"),
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
        ):
            yield
    finally:
        tune_logger.setLevel(level)


@contextlib.contextmanager
def ray_session() -> Iterator[None]:
    """Ray for the replays: the running one, else a local one (2 CPUs, no dashboard, no auth) shut down after."""
    import ray

    own = not ray.is_initialized()
    if own:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        yield
    finally:
        if own:
            ray.shutdown()


class RayReplay:
    """Replays of one bank's rows through real Ray Tune (inside :func:`ray_session`); the rows go to Ray's
    object store once, for every replay."""

    def __init__(self, rows: Rows):
        from ray import tune

        self._trainable = tune.with_parameters(make_replay_trainable(), rows=dict(rows))

    def run(self, scheduler: TrialScheduler, order: Sequence[str], run_dir: Path) -> list[Completion]:
        """The trials of ``order`` under ``scheduler``, one at a time: their completions, in order (time is the
        epochs spent, as the simulator's clock is with one worker)."""
        from ray import tune
        from ray.tune.logger import JsonLoggerCallback

        from clp_tune.stopping.slots import FrozenSlotsVariantGenerator

        reported: dict[str, int] = {}
        started: list[str] = []

        class Recorder(tune.Callback):
            def on_trial_start(self, iteration, trials, trial, **info):
                if trial.config["trial_id"] not in started:  # a thawed trial starts again
                    started.append(trial.config["trial_id"])

            def on_trial_result(self, iteration, trials, trial, result, **info):
                reported[trial.config["trial_id"]] = reported.get(trial.config["trial_id"], 0) + 1

        tuner = tune.Tuner(
            self._trainable,
            param_space={"trial_id": tune.grid_search(list(order))},
            tune_config=tune.TuneConfig(
                metric="val_acc", mode="max", scheduler=scheduler, reuse_actors=True,
                search_alg=FrozenSlotsVariantGenerator(max_concurrent=1),
            ),
            run_config=tune.RunConfig(
                name=run_dir.name, storage_path=str(run_dir.parent), verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                callbacks=[Recorder(), JsonLoggerCallback()],
            ),
        )  # fmt: skip
        with _quiet_tune():
            results = tuner.fit()
        if results.errors:
            raise RuntimeError(f"replay under {type(scheduler).__name__} failed: {results.errors[0]}")
        if started != list(order):
            raise RuntimeError(f"Ray Tune ran the trials out of order under {type(scheduler).__name__}")
        completions, spent = [], 0
        for trial_id in started:
            spent += reported.get(trial_id, 0)
            completions.append(Completion(trial_id, reported.get(trial_id, 0), spent, float(spent)))
        return completions
