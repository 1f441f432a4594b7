"""TrajectoryScheduler: the trajectory stopping rule as a Ray Tune scheduler.

The rule lives in :mod:`clp_tune.stopping.policy` (pure, tested without Ray), the prediction in
:mod:`clp_tune.stopping.predictor` and the state that survives ``Tuner.restore`` in
:mod:`clp_tune.stopping.persistence`. This module only connects them to Ray: it records each result in the
trial's state, asks the policy, keeps the decision, builds the default predictor (its prior fitted on a given
bank, else on every shipped bank), and keeps the pickle Ray saves small (the predictor is rebuilt, the state
reloaded from the run directory).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from clp_tune.stopping.bank_library import SUITE
from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.features import History, Trajectory, planned_epochs
from clp_tune.stopping.persistence import SchedulerState, StateStore
from clp_tune.stopping.policy import TrajectoryPolicy, TrialState
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, Predictor, ask
from clp_tune.vocabulary import TRAJECTORY_OPTIONS

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


def _scalar_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool)) or v is None}


class _OnDemandPredictor:
    """The scheduler's predictor as the policy sees it: built, and brought up to date with the finished trials,
    only when the policy asks for a prediction (a search that stops no trial never fits a prior)."""

    def __init__(self, scheduler: TrajectoryScheduler):
        self._scheduler = scheduler

    def predict(self, history: History, config: Mapping[str, Any], budget: int) -> Prediction:
        return self._scheduler.predictor.predict(history, config, budget)

    def predict_in_context(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext
    ) -> Prediction:
        return ask(self._scheduler.predictor, history, config, budget, context)

    def observe_finished(self, rows: pd.DataFrame | Sequence[Trajectory]) -> None:
        self._scheduler.predictor.observe_finished(rows)


class TrajectoryScheduler(FIFOScheduler):
    """Early termination on the predicted distribution of each trial's final validation accuracy.

    The stopping rule's defaults (``clp_tune.vocabulary.TRAJECTORY_OPTIONS``) were chosen by replaying the shipped
    mnist1d bank (``clp-tune bench schedulers``): they never lost the best trial there, and most of the epochs they
    spend go to grace periods. The critical period is taken to be the first few percent of training: letting the
    detector hold trials back longer cost epochs without lowering the regret. Raise ``max_fraction`` (and ``k``)
    where curves cross late; lower ``noise_factor`` or turn ``noise_grace`` off to save an epoch per noisy trial.

    Args:
        metric: must be ``val_acc`` (the predictor models validation accuracy); may be set by ``TuneConfig``.
        mode: must be ``max``; may be set by ``TuneConfig``.
        budget: planned epochs per trial (a trial's ``epochs`` config key overrides it).
        k: see :class:`~clp_tune.stopping.policy.TrajectoryPolicy`, as are ``delta``, ``min_fraction``,
            ``max_fraction``, ``detector``, ``noise_grace`` and ``noise_factor``; read back as the scheduler's own
            attributes (``scheduler.k``).
        state_dir: run directory for ``scheduler_state.json``, its journal and ``decisions.parquet``;
            None keeps everything in memory. State found there is loaded (a resumed search).
        predictor: a :class:`~clp_tune.stopping.predictor.Predictor`; default: a ``FinalAccuracyPredictor`` fitted
            on ``bank``.
        bank: bank Parquet for the default predictor's prior; default: every shipped suite bank
            (``clp_tune.stopping.bank_library.SUITE``), for any dataset: the prior reads each trial's standing in
            its own search, which transfers between tasks.
        snapshot_every: also snapshot after this many results (bounds the journal's length).
    """

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        budget: int = 100,
        k: int = TRAJECTORY_OPTIONS["k"].default,
        delta: float = TRAJECTORY_OPTIONS["delta"].default,
        min_fraction: float = TRAJECTORY_OPTIONS["min_fraction"].default,
        max_fraction: float = TRAJECTORY_OPTIONS["max_fraction"].default,
        detector: str = TRAJECTORY_OPTIONS["detector"].default,
        noise_grace: bool = TRAJECTORY_OPTIONS["noise_grace"].default,
        noise_factor: float = TRAJECTORY_OPTIONS["noise_factor"].default,
        state_dir: str | None = None,
        predictor: Predictor | None = None,
        bank: str | None = None,
        snapshot_every: int = 500,
    ):
        if not budget > 0:
            raise ValueError(f"need budget > 0, got budget={budget}")
        self.policy = TrajectoryPolicy(k, delta, min_fraction, max_fraction, detector, noise_grace, noise_factor)
        super().__init__()
        self._metric = metric
        self._mode = mode
        self.budget = budget
        self.bank = bank
        self._predictor = predictor
        self._owns_predictor = predictor is None
        self._predictor_seen = 0  # finished trials already fed to the predictor
        self._store = StateStore(state_dir, snapshot_every)
        if self._store.state_dir is not None:
            self._store.state_dir.mkdir(parents=True, exist_ok=True)
        self._state = self._store.load() or SchedulerState()

    def __getattr__(self, name: str) -> Any:
        """The stopping rule's options, read as the scheduler's own (``scheduler.k``): one copy, in the policy."""
        if name in TRAJECTORY_OPTIONS:
            return getattr(self.policy, name)
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    # -- pickling (Ray pickles the scheduler at the start and unpickles that copy on Tuner.restore) -----------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._owns_predictor:  # rebuilt from the bank on demand: keeps tuner.pkl small
            state["_predictor"], state["_predictor_seen"] = None, 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._state = self._store.load() or self._state

    # -- Ray hooks ------------------------------------------------------------------------------------------

    def set_search_properties(self, metric: str | None, mode: str | None, **spec) -> bool:
        if (self._metric and metric and metric != self._metric) or (self._mode and mode and mode != self._mode):
            return False
        self._metric = self._metric or metric
        self._mode = self._mode or mode
        return True

    def on_trial_add(self, tune_controller: TuneController, trial: Trial) -> None:
        metric, mode = self._metric or "val_acc", self._mode or "max"
        if metric != "val_acc" or mode != "max":
            raise ValueError(
                f"TrajectoryScheduler predicts the final val_acc and needs metric='val_acc', mode='max'; "
                f"got metric={metric!r}, mode={mode!r}"
            )
        if trial.trial_id not in self._state.trials:
            config = _scalar_config(trial.config)
            self._state.trials[trial.trial_id] = TrialState(budget=planned_epochs(config, self.budget), config=config)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        state = self._state.trials.get(trial.trial_id)
        if state is None:
            self.on_trial_add(tune_controller, trial)
            state = self._state.trials[trial.trial_id]
        if state.status == "error":  # Ray retries failed trials (FailureConfig, Tuner.restore(restart_errored))
            state.status = "running"
        if state.status != "running":  # stopped by us before an interruption: stays stopped after a restore
            return TrialScheduler.STOP
        state.observe(result, self.budget)
        decision = self.policy.decide(trial.trial_id, self._state.trials, result, _OnDemandPredictor(self))
        state.apply(decision)
        row = decision.row()
        self._state.decisions.append(row)
        self._store.journal(self._state, trial.trial_id, row)  # a stop is in the journal too; completion snapshots
        return TrialScheduler.STOP if decision.action == "stop" else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        state = self._state.trials.get(trial.trial_id)
        if state is None or state.status != "running":
            self._store.snapshot(self._state)
            return
        epochs = state.epochs[-1] if state.epochs else 0
        finals = state.history.get("val_acc", [])
        if epochs >= state.budget and finals and finals[-1] is not None:
            state.status, state.final = "finished", float(finals[-1])
            self._state.finished_order.append(trial.trial_id)
        else:
            state.status = "stopped"  # ended early by something else (a stopper, the user)
        self._store.snapshot(self._state)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        if trial.trial_id in self._state.trials:
            self._state.trials[trial.trial_id].status = "error"
        self._store.snapshot(self._state)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        state = self._state.trials.get(trial.trial_id)
        if state is not None and state.status == "running":
            state.status = "removed"
        self._store.snapshot(self._state)

    def debug_string(self) -> str:
        counts: dict[str, int] = {}
        for state in self._state.trials.values():
            counts[state.status] = counts.get(state.status, 0) + 1
        threshold = self.policy.threshold(self._state.trials, exclude=None)
        shown = "none yet" if threshold is None else f"{threshold:.4f}"
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"TrajectoryScheduler (k={self.k}, delta={self.delta}): {summary}; k-th best val_acc {shown}"

    def decisions_frame(self) -> pd.DataFrame:
        """Every decision so far (a re-reported epoch keeps its latest decision)."""
        return self._state.decisions_frame()

    # -- the predictor --------------------------------------------------------------------------------------

    @property
    def predictor(self) -> Predictor:
        """The predictor, built on first use and brought up to date with the trials finished so far."""
        if self._predictor is None:
            if self.bank:
                self._predictor = FinalAccuracyPredictor(pd.read_parquet(self.bank))
            else:
                self._predictor = FinalAccuracyPredictor(tasks=tuple(SUITE))
            self._predictor_seen = 0
        for trial_id in self._state.finished_order[self._predictor_seen :]:
            state = self._state.trials[trial_id]
            self._predictor.observe_finished([Trajectory(state.series(), state.config, state.budget)])
        self._predictor_seen = len(self._state.finished_order)
        return self._predictor
