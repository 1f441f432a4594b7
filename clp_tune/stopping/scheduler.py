"""TrajectoryScheduler: the trajectory stopping rule as a Ray Tune scheduler.

The rule lives in :mod:`clp_tune.stopping.policy` (pure, tested without Ray), the prediction in
:mod:`clp_tune.stopping.predictor` and the state that survives ``Tuner.restore`` in
:mod:`clp_tune.stopping.persistence`. This module only connects them to Ray: it records each result in the
trial's state, asks the policy, keeps the decision, builds the default predictor (its prior fitted on a given
bank, else on every shipped bank), and keeps the pickle Ray saves small (the predictor is rebuilt, the state
reloaded from the run directory).

Freeze-thaw, in Ray's terms: a trial the policy pauses gets ``PAUSE`` (Tune saves its latest checkpoint and
frees its slot; the searcher's limit, :mod:`clp_tune.stopping.slots`, stops counting it). Whenever a trial
finishes, every paused trial is judged again (:meth:`~clp_tune.stopping.policy.TrajectoryPolicy.rejudge`): one
whose chance is back to ``delta`` is queued to thaw, a hopeless one is ended with ``stop_trial``.
``choose_trial_to_run`` (the only way a paused trial runs again) gives a free slot to the queued thaws first
(likeliest first), then to new trials, and, when no new trial is waiting and a slot would idle, to the likeliest
paused trial that has not had such an epoch yet: it runs one more epoch and is judged again. Once one epoch has
not lifted its chance to ``delta``, another would only spend a slot on the same verdict (it did: a loop of such
epochs ran paused trials to the end one epoch at a time), so each paused trial gets one. When the search is over
-- the searcher has nothing left, nothing runs, nothing waits to thaw and every paused trial has had its epoch --
the paused trials are stopped for good, and the search ends. A restored search gets its paused trials back as
PENDING; they are set to PAUSED again before anything runs.

Under a concurrency limit that counts paused trials (Ray's ``ConcurrencyLimiter``, the basic variant generator's
``max_concurrent``, which ``TuneConfig(max_concurrent_trials=...)`` sets), a search whose slots all hold paused
trials could never start another: there, when the searcher has more but nothing waits, the least likely paused
trial is stopped for good to free its slot.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import pandas as pd
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from clp_tune.stopping.bank_library import SUITE, load_bank
from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.features import History, Trajectory, planned_epochs
from clp_tune.stopping.persistence import SchedulerState, StateStore
from clp_tune.stopping.policy import PAUSED, Decision, TrajectoryPolicy, TrialState
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, Predictor, ScoredPredictor, ask
from clp_tune.stopping.prior import pooled
from clp_tune.stopping.user_banks import load_user_banks
from clp_tune.vocabulary import IDLE_THAW_REASON, SEARCH_OVER_REASON, SLOT_NEEDED_REASON, TRAJECTORY_OPTIONS

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController


def _scalar_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _searcher_done(tune_controller: TuneController) -> bool:
    """Whether the searcher will suggest no more trials (a search without a searcher that says: done)."""
    finished = getattr(getattr(tune_controller, "search_alg", None), "is_finished", None)
    return True if finished is None else bool(finished())


def _slots(tune_controller: TuneController | None) -> Any:
    """The search's limit that leaves frozen trials out (:mod:`clp_tune.stopping.slots`), if it has one."""
    search = getattr(tune_controller, "search_alg", None)
    for candidate in (search, getattr(search, "searcher", None)):
        if hasattr(candidate, "frozen"):
            return candidate
    return None


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
    where curves cross late. ``noise_grace`` is off by default: on the leave-task-out suite benchmark, lengthening
    noisy trials' grace spent more epochs and kept no best trial that was lost without it.

    Args:
        metric: must be ``val_acc`` (the predictor models validation accuracy); may be set by ``TuneConfig``.
        mode: must be ``max``; may be set by ``TuneConfig``.
        budget: planned epochs per trial (a trial's ``epochs`` config key overrides it).
        k: see :class:`~clp_tune.stopping.policy.TrajectoryPolicy`, as are ``delta``, ``min_fraction``,
            ``max_fraction``, ``detector``, ``noise_grace``, ``noise_factor``, ``freeze_thaw`` and ``hopeless``;
            read back as the scheduler's own attributes (``scheduler.k``).
        state_dir: run directory for ``scheduler_state.json``, its journal and ``decisions.parquet``;
            None keeps everything in memory. State found there is loaded (a resumed search).
        predictor: a :class:`~clp_tune.stopping.predictor.Predictor`; default: a ``FinalAccuracyPredictor`` fitted
            on ``bank``.
        bank: bank Parquet for the default predictor's prior; default: every shipped suite bank
            (``clp_tune.stopping.bank_library.SUITE``), for any dataset: the prior reads each trial's standing in
            its own search, which transfers between tasks.
        user_banks: banks of the user's library (:mod:`clp_tune.stopping.user_banks`) of this search's dataset
            and model, fitted on together with the shipped banks when no ``bank`` is given.
        snapshot_every: the least number of journaled events before they are folded into a snapshot.
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
        freeze_thaw: bool = TRAJECTORY_OPTIONS["freeze_thaw"].default,
        hopeless: float = TRAJECTORY_OPTIONS["hopeless"].default,
        state_dir: str | None = None,
        predictor: Predictor | None = None,
        bank: str | None = None,
        user_banks: Sequence[str] = (),
        snapshot_every: int = 500,
    ):
        if not budget > 0:
            raise ValueError(f"need budget > 0, got budget={budget}")
        self.policy = TrajectoryPolicy(
            k, delta, min_fraction, max_fraction, detector, noise_grace, noise_factor, freeze_thaw, hopeless
        )
        super().__init__()
        self._metric = metric
        self._mode = mode
        self.budget = budget
        self.bank = bank
        self.user_banks = tuple(user_banks)
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
        if state.status == PAUSED:  # frozen before an interruption and run again by Ray: frozen it stays
            return TrialScheduler.PAUSE
        if state.status != "running":  # stopped by us before an interruption: stays stopped after a restore
            return TrialScheduler.STOP
        state.observe(result, self.budget)
        decision = self.policy.decide(trial.trial_id, self._state.trials, result, _OnDemandPredictor(self))
        self._keep(decision)  # in the journal, as is the trial's end
        if decision.action == "pause":
            self._freeze_slots(tune_controller)  # at once: the next step's searcher may use the slot
            return TrialScheduler.PAUSE
        return TrialScheduler.STOP if decision.action == "stop" else TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: TuneController) -> Trial | None:
        """Queued thaws first, then new trials, then (a slot would idle) the likeliest paused trial not yet given
        an epoch that way; once the search is over, the paused trials end (module docstring). Idempotent: a second
        call without a change in between returns the same trial.

        A resumed trial that Tune is starting (PENDING with epochs recorded) holds its slot but is not returned
        again: Tune starts every PENDING trial itself, and returning it until its actor is up (Ray's FIFO habit)
        would resume paused trials one actor start at a time, however many slots are free."""
        pending, thaws, frozen, running, paused_ids = None, [], [], 0, set()
        for trial in tune_controller.get_trials():  # one pass: Tune calls this at every step of its loop
            state = self._state.trials.get(trial.trial_id)
            if state is not None and state.status == PAUSED:
                paused_ids.add(trial.trial_id)
                if trial.status == Trial.PENDING:  # restored searches bring paused trials back PENDING
                    tune_controller._set_trial_status(trial, Trial.PAUSED)
            if trial.status == Trial.PENDING:
                if state is not None and state.status == "running" and state.epochs:
                    running += 1  # resumed (thawed, or restored) and starting: Tune starts every PENDING trial
                else:
                    pending = pending or trial
            elif trial.status == Trial.RUNNING:
                running += 1
            elif trial.status == Trial.PAUSED and state is not None:
                (thaws if state.status == "running" else frozen).append(trial)
        self._freeze_slots(tune_controller, paused_ids)
        if thaws:
            return max(thaws, key=self._chance)
        if pending is not None:
            return pending
        slots = _slots(tune_controller)
        limit = getattr(slots, "max_concurrent", 0) or None
        if not frozen or (limit is not None and running >= limit):
            return None
        unprobed = [t for t in frozen if not self._state.trials[t.trial_id].probed]
        if not unprobed:
            searcher_done = _searcher_done(tune_controller)
            if running == 0 and searcher_done:
                self._end_paused(tune_controller, frozen)
            elif slots is None and not searcher_done:
                self._free_slot(tune_controller, frozen)
            return None
        chosen = max(unprobed, key=self._chance)
        state = self._state.trials[chosen.trial_id]
        state.probed = True
        self._keep(Decision(chosen.trial_id, state.epochs[-1], "thaw", f"{IDLE_THAW_REASON}: the likeliest paused "
                            "trial runs one more epoch", p_beat=self._chance(chosen)))  # fmt: skip
        self._freeze_slots(tune_controller, paused_ids - {chosen.trial_id})
        return chosen

    def _end_paused(self, tune_controller: TuneController, paused: Sequence[Trial]) -> None:
        """The search is over: stop the paused trials for good (each had its epoch for an idle slot)."""
        reason = f"{SEARCH_OVER_REASON}: nothing runs or waits, and one more epoch did not lift its chance to delta"
        for trial in paused:
            self._stop_paused(tune_controller, trial, reason)
        self._freeze_slots(tune_controller)

    def _free_slot(self, tune_controller: TuneController, paused: Sequence[Trial]) -> None:
        """The searcher has more to suggest but nothing waits: its concurrency limit counts the paused trials
        (Ray's own ``ConcurrencyLimiter`` and the basic variant generator's ``max_concurrent`` do; the limits of
        :mod:`clp_tune.stopping.slots` do not). Left so, the search would wait for ever on trials nothing thaws;
        the least likely paused trial is stopped for good instead, so that a new trial can take its slot."""
        reason = (f"{SLOT_NEEDED_REASON}: the search's concurrency limit counts paused trials (clp_tune.stopping.slots "
                  "has limits that do not), and this one was the least likely of them")  # fmt: skip
        self._stop_paused(tune_controller, min(paused, key=self._chance), reason)

    def _stop_paused(self, tune_controller: TuneController, trial: Trial, reason: str) -> None:
        """Stop a paused trial for good, at its last epoch and latest chance, for ``reason``."""
        epoch = self._state.trials[trial.trial_id].epochs[-1]
        self._keep(Decision(trial.trial_id, epoch, "stop", reason, status="stopped", p_beat=self._chance(trial)))
        tune_controller.stop_trial(trial)

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        state = self._state.trials.get(trial.trial_id)
        if state is None or state.status != "running":
            return
        epochs = state.epochs[-1] if state.epochs else 0
        finals = state.history.get("val_acc", [])
        if epochs >= state.budget and finals and finals[-1] is not None:
            state.status, state.final = "finished", float(finals[-1])
            predictor = self.predictor  # up to date with the trials finished before this one
            if isinstance(predictor, ScoredPredictor):  # scored in the search as it stands: its decisions' context
                finished = Trajectory(state.series(), state.config, state.budget)
                context = self.policy.context(trial.trial_id, self._state.trials)
                state.scores = predictor.finished_scores(finished, context)
            self._state.finished_order.append(trial.trial_id)
            self._store.journal(self._state, trial.trial_id, None)
            self._rejudge_paused(tune_controller, trial.trial_id, full=state.fell_short())
        else:
            state.status = "stopped"  # ended early by something else (a stopper, the user)
            self._store.journal(self._state, trial.trial_id, None)

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        if trial.trial_id in self._state.trials:
            self._state.trials[trial.trial_id].status = "error"
            self._store.journal(self._state, trial.trial_id, None)

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        state = self._state.trials.get(trial.trial_id)
        if state is not None and state.status == "running":
            state.status = "removed"
            self._store.journal(self._state, trial.trial_id, None)

    def _keep(self, decision: Decision) -> None:
        """Apply a decision to its trial's state and record it (decisions table, journal)."""
        self._state.trials[decision.trial_id].apply(decision)
        row = decision.row()
        self._state.decisions.append(row)
        self._store.journal(self._state, decision.trial_id, row)

    def _chance(self, trial: Trial) -> float:
        p_beat = self._state.trials[trial.trial_id].p_beat
        return -1.0 if p_beat is None else p_beat

    def _freeze_slots(self, tune_controller: TuneController | None, paused: set[str] | None = None) -> None:
        """Tell the search's limit which trials are frozen (``paused``, when the caller has just gathered them),
        so their slots go to new trials."""
        slots = _slots(tune_controller)
        if slots is not None:
            if paused is None:
                paused = {tid for tid, s in self._state.trials.items() if s.status == PAUSED}
            slots.frozen = frozenset(paused)

    def _rejudge_paused(self, tune_controller: TuneController | None, finished: str, full: bool) -> None:
        """A trial finished: judge every paused trial again, queueing the likely ones to thaw and ending the
        hopeless. ``full`` (it fell short of its prediction: new evidence) asks the predictor again; else only
        the bar rose, and each paused trial's latest prediction is scored against it (no predictor call)."""
        paused = [tid for tid, s in self._state.trials.items() if s.status == PAUSED]
        if not paused:
            return
        by_id = {t.trial_id: t for t in tune_controller.get_trials()} if tune_controller is not None else {}
        predictor = _OnDemandPredictor(self)
        for trial_id in paused:
            if full:
                why = f"trial {finished} finished below its prediction"
                decision = self.policy.rejudge(trial_id, self._state.trials, predictor, why)
            else:
                decision = self.policy.rescore(trial_id, self._state.trials, f"trial {finished} raised the bar")
            if decision.action == "pause":  # no change but its chance: not a row of the decisions table
                self._state.trials[trial_id].apply(decision)
                continue
            self._keep(decision)
            if decision.action == "stop" and trial_id in by_id:
                tune_controller.stop_trial(by_id[trial_id])
        self._freeze_slots(tune_controller)

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
                self._predictor = FinalAccuracyPredictor(load_bank(self.bank))
            else:
                own = load_user_banks(self.user_banks)
                self._predictor = FinalAccuracyPredictor(pooled(own) if own else None, tasks=tuple(SUITE))
            self._predictor_seen = 0
        for trial_id in self._state.finished_order[self._predictor_seen :]:
            state = self._state.trials[trial_id]
            finished = [Trajectory(state.series(), state.config, state.budget)]
            if state.scores is not None and isinstance(self._predictor, ScoredPredictor):
                self._predictor.observe_finished(finished, scores=[state.scores])
            else:
                self._predictor.observe_finished(finished)
        self._predictor_seen = len(self._state.finished_order)
        return self._predictor
