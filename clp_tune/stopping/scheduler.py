"""TrajectoryScheduler: stop the trials that cannot win, judged on a predicted distribution of their final accuracy.

ASHA and the median rule compare *current* values at fixed times; with crossing learning curves (strong dropout,
label noise or a small learning rate rise late) they stop the late bloomers. This scheduler instead asks the
:mod:`clp_tune.stopping.predictor` for P(final val_acc > the k-th best final) and stops a trial once that falls below
``delta``. The k-th best is taken over the finals of finished trials; while fewer than k have finished, the
predicted finals of running trials past their grace point fill in (at a pessimistic quantile), and with fewer
than k values nothing stops.
A trial is never judged before its grace point:

* ``min_fraction`` of the budget, and no earlier than the epoch the trial's critical-period detector fired
  (the early period says little about the end); a detector that has not fired by ``max_fraction`` of the
  budget no longer holds the trial back (a trial that has not even started learning is not protected);
* under noise injection the grace is lengthened: dropout and label noise regularize on slow time scales
  (Shalova et al., arXiv 2404.12293: their drift along the minimizers shows after ~1/(lr*sigma^2) steps), so
  the grace is multiplied by ``1 + noise_factor * (dropout + label_noise)`` (rounded to an epoch). The rule
  deliberately uses the noise *levels* only: the step count 1/(lr*sigma^2) depends on the optimizer's effective
  step size, which for Adam is not the configured lr, so it cannot be computed reliably from the config.

Diverged trials (``diverged`` == 1, a non-finite loss, or a training loss above 3x its first value) stop at once.
This is the one divergence rule of a trajectory-scheduled search: :func:`stopped_outcomes` hands the outcome the
scheduler judged to the run's tables (``clp_tune.store``), which do not judge a stopped trial again.

Ray Tune does not keep scheduler state across ``Tuner.restore`` (ray-project/ray issue #30838; the scheduler
is unpickled as it was at the start), so the state is kept in ``state_dir``: a snapshot
(``scheduler_state.json``, atomic write whenever a trial ends and every ``snapshot_every`` results) plus a
journal of the results since (``scheduler_state.journal.jsonl``, one flushed line per result, decision
included). Loading replays both, and the predictor relearns from the finished trials in their original order
(its fits are deterministic), so a resumed search decides as an uninterrupted one. The decisions are written to
``decisions.parquet`` (atomically) with each snapshot; those since the last one are in the journal.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from ray.tune.experiment import Trial
from ray.tune.schedulers.trial_scheduler import FIFOScheduler, TrialScheduler

from clp_tune.stopping.bank_library import SHIPPED_BANK, SHIPPED_BANK_DATASET
from clp_tune.stopping.predictor import (
    HISTORY_COLUMNS,
    FinalAccuracyPredictor,
    Prediction,
    Predictor,
    Trajectory,
    planned_epochs,
)
from clp_tune.trial.detectors import DETECTOR_INPUT, DETECTORS

if TYPE_CHECKING:
    from ray.tune.execution.tune_controller import TuneController

logger = logging.getLogger(__name__)

STATE_FILE = "scheduler_state.json"
JOURNAL_FILE = "scheduler_state.journal.jsonl"
DECISIONS_FILE = "decisions.parquet"
DIVERGENCE_LOSS_FACTOR = 3.0
_STATE_VERSION = 1
#: The statuses a decision to stop leaves a trial in (a trial that then fails turns "error", as Ray reports it).
_STOP_OUTCOMES = ("stopped", "diverged")


@dataclass
class _TrialState:
    """What the scheduler knows of one trial (JSON-serializable)."""

    budget: int
    config: dict[str, Any]
    history: dict[str, list[float | None]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)
    status: str = "running"  # running | finished | stopped | diverged | error | removed
    final: float | None = None
    grace: int | None = None
    pred_mean: float | None = None
    pred_std: float | None = None

    def record(self, epoch: int, row: Mapping[str, float | None]) -> None:
        """Store the row of ``epoch``; a re-reported epoch (a resumed trial) replaces the old one."""
        if epoch in self.epochs:
            cut = self.epochs.index(epoch)
            self.epochs = self.epochs[:cut]
            self.history = {c: v[:cut] for c, v in self.history.items()}
        for column in set(self.history) | set(row):
            self.history.setdefault(column, [None] * len(self.epochs)).append(row.get(column))
        self.epochs.append(epoch)

    def series(self) -> dict[str, list[float]]:
        return {c: [math.nan if v is None else v for v in values] for c, values in self.history.items()}


def _clean(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _scalar_config(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if isinstance(v, (str, int, float, bool)) or v is None}


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class TrajectoryScheduler(FIFOScheduler):
    """Early termination on the predicted distribution of each trial's final validation accuracy.

    Defaults come from replays of the shipped mnist1d bank (``clp-tune bench schedulers``): the best trial was
    never lost, and most of the epochs spent go to grace periods. The critical period is taken to be the first
    few percent of training (``max_fraction`` 0.05): on that bank acc50 fires at a median 15 % of the budget, and
    letting it hold trials up to 10 % of the budget costs 0.22x the epochs of no stopping instead of 0.13x,
    with the same (zero) regret. Raise
    ``max_fraction`` (and ``k``) where curves cross late; lower ``noise_factor`` or turn ``noise_grace`` off to save
    an epoch per noisy trial.

    Args:
        metric: must be ``val_acc`` (the predictor models validation accuracy); may be set by ``TuneConfig``.
        mode: must be ``max``; may be set by ``TuneConfig``.
        budget: planned epochs per trial (a trial's ``epochs`` config key overrides it).
        k: a trial must be likely to beat the k-th best final accuracy to go on.
        delta: stop when P(final > k-th best) < delta.
        min_fraction: earliest judgement, as a fraction of the budget.
        max_fraction: a critical-period detector that has not fired by this fraction no longer delays judgement
            (at or below ``min_fraction``: the detector never delays).
        detector: critical-period detector (``clp_tune.detectors.DETECTORS``) whose firing epoch starts judgement;
            read from the result's ``cp_end_<detector>`` when the trainable reports it, else computed on the
            trial's own history; without its input column, ``min_fraction`` alone applies.
        noise_grace: lengthen the grace by ``1 + noise_factor * (dropout + label_noise)``, to the nearest epoch.
        noise_factor: see ``noise_grace``.
        state_dir: run directory for ``scheduler_state.json``, its journal and ``decisions.parquet``;
            None keeps everything in memory. State found there is loaded (a resumed search).
        predictor: a :class:`~clp_tune.predictor.Predictor`; default: a ``FinalAccuracyPredictor`` fitted on ``bank``.
        bank: bank Parquet for the default predictor; default: the shipped mnist1d bank for mnist1d searches,
            else none (the predictor learns from this search's finished trials only).
        snapshot_every: also snapshot after this many results (bounds the journal's length).
    """

    def __init__(
        self,
        metric: str | None = None,
        mode: str | None = None,
        budget: int = 100,
        k: int = 1,
        delta: float = 0.05,
        min_fraction: float = 0.025,
        max_fraction: float = 0.05,
        detector: str = "acc50",
        noise_grace: bool = True,
        noise_factor: float = 0.5,
        state_dir: str | None = None,
        predictor: Predictor | None = None,
        bank: str | None = None,
        snapshot_every: int = 500,
    ):
        if not (budget > 0 and k > 0 and 0 < delta < 1 and 0 < min_fraction <= 1 and 0 < max_fraction <= 1
                and noise_factor >= 0):  # fmt: skip
            raise ValueError(
                "need budget > 0, k > 0, 0 < delta < 1, min_fraction and max_fraction in (0, 1], noise_factor >= 0"
            )
        super().__init__()
        self._metric = metric
        self._mode = mode
        self.budget = budget
        self.k = k
        self.delta = delta
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.detector = detector
        self.noise_grace = noise_grace
        self.noise_factor = noise_factor
        self.state_dir = Path(state_dir) if state_dir else None
        self.bank = bank
        self.snapshot_every = snapshot_every
        self._predictor = predictor
        self._owns_predictor = predictor is None
        self._predictor_seen = 0  # finished trials already fed to the predictor
        self._trials: dict[str, _TrialState] = {}
        self._finished_order: list[str] = []
        self._decisions: list[dict[str, Any]] = []
        self._since_snapshot = 0
        if self.state_dir is not None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- pickling (Ray pickles the scheduler at the start and unpickles that copy on Tuner.restore) -----------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        if self._owns_predictor:  # rebuilt from the bank on demand: keeps tuner.pkl small
            state["_predictor"], state["_predictor_seen"] = None, 0
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load()

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
        if trial.trial_id not in self._trials:
            config = _scalar_config(trial.config)
            self._trials[trial.trial_id] = _TrialState(budget=planned_epochs(config, self.budget), config=config)

    def on_trial_result(self, tune_controller: TuneController, trial: Trial, result: dict) -> str:
        state = self._trials.get(trial.trial_id)
        if state is None:
            self.on_trial_add(tune_controller, trial)
            state = self._trials[trial.trial_id]
        if state.status == "error":  # Ray retries failed trials (FailureConfig, Tuner.restore(restart_errored))
            state.status = "running"
        if state.status != "running":  # stopped by us before an interruption: stays stopped after a restore
            return TrialScheduler.STOP
        decision = self.decide(trial.trial_id, result)
        self._journal(trial.trial_id, decision)  # a stop is in the journal too; on_trial_complete snapshots
        return TrialScheduler.STOP if decision["action"] == "stop" else TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller: TuneController, trial: Trial, result: dict) -> None:
        state = self._trials.get(trial.trial_id)
        if state is None or state.status != "running":
            self._snapshot()
            return
        epochs = state.epochs[-1] if state.epochs else 0
        finals = state.history.get("val_acc", [])
        if epochs >= state.budget and finals and finals[-1] is not None:
            state.status, state.final = "finished", float(finals[-1])
            self._finished_order.append(trial.trial_id)
        else:
            state.status = "stopped"  # ended early by something else (a stopper, the user)
        self._snapshot()

    def on_trial_error(self, tune_controller: TuneController, trial: Trial) -> None:
        if trial.trial_id in self._trials:
            self._trials[trial.trial_id].status = "error"
        self._snapshot()

    def on_trial_remove(self, tune_controller: TuneController, trial: Trial) -> None:
        state = self._trials.get(trial.trial_id)
        if state is not None and state.status == "running":
            state.status = "removed"
        self._snapshot()

    def debug_string(self) -> str:
        counts: dict[str, int] = {}
        for state in self._trials.values():
            counts[state.status] = counts.get(state.status, 0) + 1
        threshold = self._threshold(exclude=None)
        shown = "none yet" if threshold is None else f"{threshold:.4f}"
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        return f"TrajectoryScheduler (k={self.k}, delta={self.delta}): {summary}; k-th best val_acc {shown}"

    # -- the policy -----------------------------------------------------------------------------------------

    @property
    def predictor(self) -> Predictor:
        """The predictor, built on first use and brought up to date with the trials finished so far."""
        if self._predictor is None:
            self._predictor = FinalAccuracyPredictor(self._default_bank())
            self._predictor_seen = 0
        for trial_id in self._finished_order[self._predictor_seen :]:
            state = self._trials[trial_id]
            self._predictor.observe_finished([Trajectory(state.series(), state.config, state.budget)])
        self._predictor_seen = len(self._finished_order)
        return self._predictor

    def _default_bank(self) -> pd.DataFrame | None:
        """``bank`` when given; else the shipped mnist1d bank, but only for mnist1d searches (its curves would
        mislead the prior elsewhere); else none: the predictor then learns from this search alone."""
        if self.bank:
            return pd.read_parquet(self.bank)
        datasets = {s.config.get("dataset") for s in self._trials.values()} - {None}
        if SHIPPED_BANK.is_file() and datasets <= {SHIPPED_BANK_DATASET}:
            return pd.read_parquet(SHIPPED_BANK)
        logger.info("TrajectoryScheduler: no trajectory bank for %s; learning from this search only", datasets)
        return None

    def decide(self, trial_id: str, result: Mapping[str, Any]) -> dict[str, Any]:
        """Record ``result`` in the trial's history and decide continue / stop; returns the decision row."""
        state = self._trials[trial_id]
        epoch = int(result.get("epoch", result.get("training_iteration", len(state.epochs) + 1)))
        for key, value in result.items():  # a replay (or a flattened result) carries config/<key> columns
            name = key[len("config/") :]
            if key.startswith("config/") and name not in state.config and isinstance(value, (str, int, float, bool)):
                state.config[name] = value
        state.budget = planned_epochs(state.config, self.budget)
        state.record(epoch, {c: _clean(result[c]) for c in HISTORY_COLUMNS + ("diverged",) if c in result})
        decision = {"trial_id": trial_id, "epoch": epoch, "pred_mean": math.nan, "pred_std": math.nan,
                    "threshold": math.nan, "p_beat": math.nan}  # fmt: skip

        diverged = self._divergence(state, result)
        if diverged:
            state.status = "diverged"
            return self._decided(decision, "stop", f"diverged: {diverged}")
        if "val_acc" not in result:
            return self._decided(decision, "continue", "no val_acc in this result")
        prediction = self.predictor.predict(state.series(), state.config, state.budget)
        state.pred_mean, state.pred_std = prediction.mean, prediction.std
        decision.update(pred_mean=prediction.mean, pred_std=prediction.std)
        if epoch >= state.budget:
            return self._decided(decision, "continue", "budget reached")
        state.grace = self._grace(state, result)
        if epoch < state.grace:
            return self._decided(decision, "continue", f"grace until epoch {state.grace}")
        threshold = self._threshold(exclude=trial_id)
        if threshold is None:
            return self._decided(decision, "continue", f"fewer than k={self.k} reference trials")
        p_beat = prediction.prob_above(threshold)
        decision.update(threshold=threshold, p_beat=p_beat)
        if p_beat < self.delta:
            state.status = "stopped"
            return self._decided(decision, "stop", f"P(beat k-th best) {p_beat:.3f} < {self.delta}")
        return self._decided(decision, "continue", f"P(beat k-th best) {p_beat:.3f} >= {self.delta}")

    def _decided(self, decision: dict[str, Any], action: str, reason: str) -> dict[str, Any]:
        decision.update(action=action, reason=reason)
        self._decisions.append(decision)
        return decision

    @staticmethod
    def _divergence(state: _TrialState, result: Mapping[str, Any]) -> str | None:
        """Why the trial counts as diverged, or None."""
        if result.get("diverged") == 1:
            return "the trainable reported diverged=1"
        for column in ("train_loss", "val_loss", "val_acc"):
            if column in result and _clean(result[column]) is None:
                return f"{column} is {result[column]}"
        losses = [v for v in state.history.get("train_loss", []) if v is not None]
        if len(losses) >= 2 and losses[-1] > DIVERGENCE_LOSS_FACTOR * losses[0]:
            return f"train_loss {losses[-1]:.3g} > {DIVERGENCE_LOSS_FACTOR:g}x its first value {losses[0]:.3g}"
        return None

    def _grace(self, state: _TrialState, result: Mapping[str, Any]) -> int:
        """Earliest epoch at which the trial may be judged (see the module docstring)."""
        fired = self._detector_epoch(state, result)
        grace = self.min_fraction * state.budget
        if fired is False:  # still in its early period: held back, but only up to max_fraction
            grace = max(grace, self.max_fraction * state.budget)
        elif fired is not None:
            grace = max(grace, min(fired, self.max_fraction * state.budget))
        grace = math.ceil(grace - 1e-9)
        if self.noise_grace:  # to the nearest epoch: weak noise (under half an epoch's worth) adds nothing
            noise = sum(_clean(state.config.get(key)) or 0.0 for key in ("dropout", "label_noise"))
            grace = math.floor(grace * (1.0 + self.noise_factor * noise) + 0.5)
        return min(state.budget, grace)

    def _detector_epoch(self, state: _TrialState, result: Mapping[str, Any]) -> int | bool | None:
        """The epoch the detector fired; False while it has not; None when it cannot be evaluated."""
        reported = f"cp_end_{self.detector}"
        if reported in result:
            value = _clean(result[reported])
            return False if value is None else int(value)
        values = state.history.get(DETECTOR_INPUT[self.detector])
        if not values or all(v is None for v in values):
            return None
        fired = DETECTORS[self.detector]([math.nan if v is None else v for v in values], state.budget)
        return False if fired is None else int(fired)

    def _threshold(self, exclude: str | None) -> float | None:
        """The k-th best final: over observed finals once there are k, else also over running trials past their
        grace, each counted at its pessimistic 10 % quantile (a prior that flatters them must not stop others)."""
        finals = sorted((s.final for s in self._trials.values() if s.final is not None), reverse=True)
        if len(finals) < self.k:
            finals = sorted(
                finals
                + [
                    Prediction(s.pred_mean, s.pred_std).quantile(0.1) for tid, s in self._trials.items()
                    if tid != exclude and s.status == "running" and s.pred_mean is not None and s.pred_std
                    and s.grace is not None and s.epochs and s.epochs[-1] >= s.grace
                ],
                reverse=True,
            )  # fmt: skip
        return finals[self.k - 1] if len(finals) >= self.k else None

    # -- persistence ----------------------------------------------------------------------------------------

    def decisions_frame(self) -> pd.DataFrame:
        """Every decision so far (a re-reported epoch keeps its latest decision)."""
        columns = ["trial_id", "epoch", "pred_mean", "pred_std", "threshold", "p_beat", "action", "reason"]
        frame = pd.DataFrame(self._decisions, columns=columns)
        return frame.drop_duplicates(["trial_id", "epoch"], keep="last").reset_index(drop=True)

    def _journal(self, trial_id: str, decision: Mapping[str, Any]) -> None:
        if self.state_dir is None:
            return
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            self._snapshot()
            return
        state = self._trials[trial_id]
        line = {
            "trial_id": trial_id, "budget": state.budget, "config": state.config,
            "row": {c: v[-1] for c, v in state.history.items()}, "epoch": state.epochs[-1],
            "status": state.status, "grace": state.grace, "pred_mean": state.pred_mean, "pred_std": state.pred_std,
            "decision": {k: _clean(v) if isinstance(v, float) else v for k, v in decision.items()},
        }  # fmt: skip
        with open(self.state_dir / JOURNAL_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def _snapshot(self) -> None:
        """Write the whole state and the decisions atomically, then empty the journal they now contain."""
        if self.state_dir is None:
            return
        state = {
            "version": _STATE_VERSION,
            "trials": {tid: vars(s) for tid, s in self._trials.items()},  # (asdict would deep-copy every list)
            "finished_order": self._finished_order,
        }
        _atomic_write_text(self.state_dir / STATE_FILE, json.dumps(state))
        frame = self.decisions_frame()
        tmp = self.state_dir / f".{DECISIONS_FILE}.{os.getpid()}.tmp"
        frame.to_parquet(tmp, index=False)
        os.replace(tmp, self.state_dir / DECISIONS_FILE)
        (self.state_dir / JOURNAL_FILE).unlink(missing_ok=True)
        self._since_snapshot = 0

    def _load(self) -> None:
        """Restore the snapshot, the decisions and the journal from ``state_dir`` (no-op when absent)."""
        if self.state_dir is None or not (self.state_dir / STATE_FILE).is_file():
            return
        saved = json.loads((self.state_dir / STATE_FILE).read_text())
        self._trials = {tid: _TrialState(**s) for tid, s in saved["trials"].items()}
        self._finished_order = list(saved["finished_order"])
        decisions = self.state_dir / DECISIONS_FILE
        self._decisions = pd.read_parquet(decisions).to_dict("records") if decisions.is_file() else []
        journal = self.state_dir / JOURNAL_FILE
        lines = journal.read_text().splitlines() if journal.is_file() else []
        for text in lines:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:  # a line torn by a crash mid-write: the result will be re-reported
                continue
            state = self._trials.setdefault(line["trial_id"], _TrialState(line["budget"], line["config"]))
            state.config = line["config"]
            state.record(line["epoch"], line["row"])
            state.status, state.grace = line["status"], line["grace"]
            state.pred_mean, state.pred_std = line["pred_mean"], line.get("pred_std")
            self._decisions.append({k: math.nan if v is None else v for k, v in line["decision"].items()})


def stopped_outcomes(state_dir: str | Path) -> dict[str, str]:
    """Trial id -> "stopped" or "diverged" for each trial the scheduler stopped, from the state it left in
    ``state_dir`` (snapshot and journal; empty when there is none).

    The decision is made here, on the results the scheduler saw; the run's tables take it as it is instead of
    judging the trial again by a rule of their own, so a trial has one outcome wherever it is shown.
    """
    if not (Path(state_dir) / STATE_FILE).is_file():
        return {}
    scheduler = TrajectoryScheduler(state_dir=str(state_dir))
    latest = scheduler.decisions_frame().groupby("trial_id").tail(1)
    states = {trial_id: scheduler._trials[trial_id] for trial_id in latest.loc[latest["action"] == "stop", "trial_id"]}
    return {trial_id: state.status for trial_id, state in states.items() if state.status in _STOP_OUTCOMES}
