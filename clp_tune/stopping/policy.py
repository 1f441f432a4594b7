"""The trajectory scheduler's stopping rule, free of Ray: from the trials' recorded states and a predictor of each
trial's final accuracy, continue or stop one trial.

ASHA and the median rule compare *current* values at fixed times; with crossing learning curves (strong dropout,
label noise or a small learning rate rise late) they stop the late bloomers. This rule instead asks the predictor
(:mod:`clp_tune.stopping.predictor`) for P(final val_acc > the k-th best final), handing it the other trials of
the search (:func:`search_context`: a prior fitted on other tasks reads a trial's standing among them), and stops
a trial once that falls below ``delta``: with ``freeze_thaw`` it is *paused* (frozen, resumable from its checkpoint)
rather than stopped, unless the chance is below ``hopeless``. A paused trial is judged again on new evidence
(:meth:`TrajectoryPolicy.rejudge`, whenever a trial finishes): thawed when its chance is back to ``delta``,
stopped for good when it fell below ``hopeless``, else left frozen (the scheduler also gives each paused trial one
more epoch when a slot would idle, and stops those still frozen when the search is over). The k-th best is taken
over the finals of finished trials; while fewer than k have finished, the predicted finals of running trials past
their grace point fill in (at a pessimistic quantile), and with fewer than k values nothing stops.
A trial is never judged before its grace point:

* ``min_fraction`` of the budget, and no earlier than the epoch the trial's critical-period detector fired
  (the early period says little about the end); a detector that has not fired by ``max_fraction`` of the
  budget no longer holds the trial back (a trial that has not even started learning is not protected);
* with ``noise_grace`` (off by default: on the suite benchmark it cost epochs and saved no best trial), the grace
  is lengthened under noise injection: dropout and label noise regularize on slow time scales
  (Shalova et al., arXiv 2404.12293: their drift along the minimizers shows after ~1/(lr*sigma^2) steps), so
  the grace is multiplied by ``1 + noise_factor * (dropout + label_noise)`` (rounded to an epoch). The rule
  deliberately uses the noise *levels* only: the step count 1/(lr*sigma^2) depends on the optimizer's effective
  step size, which for Adam is not the configured lr, so it cannot be computed reliably from the config.

Diverged trials (``diverged`` == 1, a non-finite loss, or a training loss above 3x its first value) stop at once.
This is the one divergence rule of a trajectory-scheduled search: the run's tables take the outcome it judged
(:func:`clp_tune.stopping.persistence.stopped_outcomes`) and do not judge a stopped trial again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from clp_tune.stopping.context import LevelCache, SearchContext
from clp_tune.stopping.features import HISTORY_COLUMNS, planned_epochs
from clp_tune.stopping.predictor import Prediction, Predictor, ask
from clp_tune.trial.detectors import DETECTORS as DETECTOR_RULES
from clp_tune.vocabulary import DETECTOR_INPUT, DETECTORS, TRAJECTORY_OPTIONS

DIVERGENCE_LOSS_FACTOR = 3.0
#: The statuses a decision to stop leaves a trial in (a trial that then fails turns "error", as Ray reports it).
STOP_OUTCOMES = ("stopped", "diverged")
#: The status of a frozen trial: it reports no epochs until thawed; the run's tables count it as stopped.
PAUSED = "paused"
#: The statuses of a trial that reports no more epochs (unless Ray retries an errored one).
ENDED = ("stopped", "diverged", "error", "removed")
#: Quantile at which a running trial's predicted final stands in for a missing final: a prior that flatters the
#: running trials must not stop others.
_STAND_IN_QUANTILE = 0.1


def clean(value: Any) -> float | None:
    """A finite float, or None (JSON has no NaN)."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


@dataclass(frozen=True)
class Decision:
    """Continue or stop one trial after one result, with what the rule saw (a row of ``decisions.parquet``).

    Args:
        trial_id: the trial decided on.
        epoch: the epoch of the result decided on.
        action: "continue", "stop", "pause" (freeze) or "thaw".
        reason: why, in words (the report shows it).
        status: the trial's status after the decision: "running", :data:`PAUSED`, or one of :data:`STOP_OUTCOMES`.
        prediction: the predicted final; None where the rule decided before asking the predictor.
        grace: the trial's grace point; None where the rule decided before computing it.
        threshold: the k-th best final the trial was judged against (NaN: not judged).
        p_beat: P(final > threshold) (NaN: not judged).
    """

    trial_id: str
    epoch: int
    action: str
    reason: str
    status: str = "running"
    prediction: Prediction | None = None
    grace: int | None = None
    threshold: float = math.nan
    p_beat: float = math.nan

    def row(self) -> dict[str, Any]:
        """The decision as a row of ``decisions.parquet``."""
        predicted = self.prediction or Prediction(math.nan, math.nan)
        return {"trial_id": self.trial_id, "epoch": self.epoch, "pred_mean": predicted.mean,
                "pred_std": predicted.std, "threshold": self.threshold, "p_beat": self.p_beat,
                "action": self.action, "reason": self.reason}  # fmt: skip


@dataclass
class TrialState:
    """What the scheduler knows of one trial (JSON-serializable: the snapshot stores it as it is).

    Args:
        budget: the trial's planned epochs.
        config: its scalar hyperparameters.
        history: column -> value per recorded epoch (None: not reported, or not finite).
        epochs: the recorded epochs, in order.
        status: running, paused, finished, stopped, diverged, error or removed.
        final: its final val_acc, once it finished its budget.
        grace: its latest grace point.
        pred_mean: the mean of its latest prediction.
        pred_std: the spread of its latest prediction.
        p_beat: its latest P(final > k-th best) (what thawing orders the paused trials by).
        thawed_at: the epoch it was last thawed at: a trial that checkpoints every few epochs re-runs the epochs
            since its checkpoint, and those are not judged again (they would freeze it where it was).
        judged_mean: the mean predicted when it was first judged against the bar: a trial that finishes below it
            fell short of its prediction, the new evidence on which the paused trials are judged again.
        probed: whether a slot that would have idled already ran it one more epoch (a paused trial gets one such
            epoch: a chance that stays below ``delta`` after it is not worth another).
        scores: once it finished, the predictor's calibration scores of it
            (:meth:`~clp_tune.stopping.predictor.FinalAccuracyPredictor.finished_scores`), taken in the search as
            it stood then; kept, because a restored search cannot see that search again.
    """

    budget: int
    config: dict[str, Any]
    history: dict[str, list[float | None]] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)
    status: str = "running"  # running | paused | finished | stopped | diverged | error | removed
    final: float | None = None
    grace: int | None = None
    pred_mean: float | None = None
    pred_std: float | None = None
    p_beat: float | None = None
    thawed_at: int | None = None
    judged_mean: float | None = None
    scores: list[list] | None = None
    probed: bool = False

    def record(self, epoch: int, row: Mapping[str, float | None]) -> None:
        """Store the row of ``epoch``; a re-reported epoch (a resumed trial) replaces the old one."""
        if epoch in self.epochs:
            cut = self.epochs.index(epoch)
            self.epochs = self.epochs[:cut]
            self.history = {c: v[:cut] for c, v in self.history.items()}
        for column in set(self.history) | set(row):
            self.history.setdefault(column, [None] * len(self.epochs)).append(row.get(column))
        self.epochs.append(epoch)

    def observe(self, result: Mapping[str, Any], default_budget: int) -> int:
        """Record one result (its history columns, and config keys a flattened result carries as ``config/<key>``,
        which may set the budget); returns its epoch."""
        epoch = int(result.get("epoch", result.get("training_iteration", len(self.epochs) + 1)))
        for key, value in result.items():
            name = key[len("config/") :]
            if key.startswith("config/") and name not in self.config and isinstance(value, (str, int, float, bool)):
                self.config[name] = value
        self.budget = planned_epochs(self.config, default_budget)
        self.record(epoch, {c: clean(result[c]) for c in HISTORY_COLUMNS + ("diverged",) if c in result})
        return epoch

    def apply(self, decision: Decision) -> None:
        """Keep what ``decision`` found out: the trial's new status, its prediction and its grace point."""
        self.status = decision.status
        if decision.action == "thaw":
            self.thawed_at = decision.epoch
        if not math.isnan(decision.p_beat):
            self.p_beat = decision.p_beat
            if self.judged_mean is None and decision.prediction is not None:
                self.judged_mean = decision.prediction.mean
        if decision.prediction is not None:
            self.pred_mean, self.pred_std = decision.prediction.mean, decision.prediction.std
        if decision.grace is not None:
            self.grace = decision.grace

    def fell_short(self) -> bool:
        """Whether it finished below the final predicted when it was first judged (True if never judged: nothing
        was expected of it, so its final is news)."""
        return self.final is not None and (self.judged_mean is None or self.final < self.judged_mean)

    def series(self) -> dict[str, list[float]]:
        return {c: [math.nan if v is None else v for v in values] for c, values in self.history.items()}


def search_context(trial_id: str, trials: Mapping[str, TrialState], cache: LevelCache | None = None) -> SearchContext:
    """The other trials of the search as ``trial_id``'s predictor sees them: their val_acc so far, the finals of
    the finished ones, and which have ended. A diverged trial's values say nothing of how the search learns (a
    bank holds no diverged curves either), so it is left out. The lists are the states' own, not copies: the
    context is read at once and never kept; ``cache`` keeps their levels from one context to the next."""
    curves, finals, ended = {}, {}, set()
    for tid, s in trials.items():  # one pass: this runs at every result, over every trial
        if tid == trial_id or s.status == "diverged":
            continue
        curves[tid] = s.history.get("val_acc", [])
        if s.final is not None:
            finals[tid] = s.final
        if s.status in ENDED:
            ended.add(tid)
    return SearchContext(curves, finals, frozenset(ended), cache)


def _default(option: str) -> Any:
    return TRAJECTORY_OPTIONS[option].default


class TrajectoryPolicy:
    """Stop a trial once it is unlikely to beat the k-th best final, never before its grace point (module docstring).

    Args:
        k: a trial must be likely to beat the k-th best final accuracy to go on.
        delta: stop when P(final > k-th best) < delta.
        min_fraction: earliest judgement, as a fraction of the budget.
        max_fraction: a critical-period detector that has not fired by this fraction no longer delays judgement
            (at or below ``min_fraction``: the detector never delays).
        detector: critical-period detector (``clp_tune.vocabulary.DETECTORS``) whose firing epoch starts judgement;
            read from the result's ``cp_end_<detector>`` when the trainable reports it, else computed on the
            trial's own history; without its input column, ``min_fraction`` alone applies.
        noise_grace: lengthen the grace by ``1 + noise_factor * (dropout + label_noise)``, to the nearest epoch.
        noise_factor: see ``noise_grace``.
        freeze_thaw: pause a trial with hopeless <= P < delta instead of stopping it (module docstring).
        hopeless: below this chance a trial is stopped for good, paused or not (at most ``delta``).
    """

    def __init__(
        self,
        k: int = _default("k"),
        delta: float = _default("delta"),
        min_fraction: float = _default("min_fraction"),
        max_fraction: float = _default("max_fraction"),
        detector: str = _default("detector"),
        noise_grace: bool = _default("noise_grace"),
        noise_factor: float = _default("noise_factor"),
        freeze_thaw: bool = _default("freeze_thaw"),
        hopeless: float = _default("hopeless"),
    ):
        if not k > 0:
            raise ValueError(f"need k > 0, got k={k}")
        if not 0 < delta < 1:
            raise ValueError(f"need 0 < delta < 1, got delta={delta}")
        if not 0 < min_fraction <= 1:
            raise ValueError(f"need min_fraction in (0, 1], got min_fraction={min_fraction}")
        if not 0 < max_fraction <= 1:
            raise ValueError(f"need max_fraction in (0, 1], got max_fraction={max_fraction}")
        if detector not in DETECTORS:
            raise ValueError(f"need detector in {DETECTORS}, got detector={detector!r}")
        if not noise_factor >= 0:
            raise ValueError(f"need noise_factor >= 0, got noise_factor={noise_factor}")
        if not 0 < hopeless <= delta:
            raise ValueError(f"need 0 < hopeless <= delta={delta}, got hopeless={hopeless}")
        self.k = k
        self.delta = delta
        self.min_fraction = min_fraction
        self.max_fraction = max_fraction
        self.detector = detector
        self.noise_grace = noise_grace
        self.noise_factor = noise_factor
        self.freeze_thaw = freeze_thaw
        self.hopeless = hopeless
        self._levels = LevelCache()  # the trials' levels, read by every decision's context

    def decide(
        self, trial_id: str, trials: Mapping[str, TrialState], result: Mapping[str, Any], predictor: Predictor
    ) -> Decision:
        """Continue or stop ``trial_id`` after ``result``, already recorded in its state in ``trials``.

        Reads the states and changes none of them: the caller applies the decision (:meth:`TrialState.apply`).
        The predictor is asked only when the rule needs a prediction.
        """
        state = trials[trial_id]
        ruling = {"trial_id": trial_id, "epoch": state.epochs[-1]}
        diverged = self.divergence(state, result)
        if diverged:
            return Decision(**ruling, action="stop", reason=f"diverged: {diverged}", status="diverged")
        if "val_acc" not in result:
            return Decision(**ruling, action="continue", reason="no val_acc in this result")
        prediction = self._predict(trial_id, trials, predictor)
        if state.epochs[-1] >= state.budget:
            return Decision(**ruling, action="continue", reason="budget reached", prediction=prediction)
        if state.thawed_at is not None and state.epochs[-1] <= state.thawed_at:
            return Decision(**ruling, action="continue", reason=f"re-run after its thaw at epoch {state.thawed_at}",
                            prediction=prediction)  # fmt: skip
        grace = self.grace(state, result)
        if state.epochs[-1] < grace:
            return Decision(**ruling, action="continue", reason=f"grace until epoch {grace}", prediction=prediction,
                            grace=grace)  # fmt: skip
        threshold = self.threshold(trials, exclude=trial_id)
        if threshold is None:
            return Decision(**ruling, action="continue", reason=f"fewer than k={self.k} reference trials",
                            prediction=prediction, grace=grace)  # fmt: skip
        p_beat = prediction.prob_above(threshold)
        judged = {**ruling, "prediction": prediction, "grace": grace, "threshold": threshold, "p_beat": p_beat}
        chance = f"P(beat k-th best) {p_beat:.3f}"
        verdict = self._verdict(p_beat)
        if verdict == "go":
            return Decision(**judged, action="continue", reason=f"{chance} >= {self.delta}")
        if verdict == "pause":
            return Decision(**judged, action="pause", reason=f"{chance} < {self.delta}: paused", status=PAUSED)
        hopeless = f" < hopeless {self.hopeless}" if self.freeze_thaw else f" < {self.delta}"
        return Decision(**judged, action="stop", reason=chance + hopeless, status="stopped")

    def rejudge(self, trial_id: str, trials: Mapping[str, TrialState], predictor: Predictor, why: str) -> Decision:
        """A paused trial judged again on new evidence (``why``: what changed): "thaw" when P(beat the k-th best)
        is back to ``delta``, "stop" (for good) below ``hopeless``, else "pause" (stays frozen, its chance
        updated). Like :meth:`decide`, it changes no state."""
        prediction = self._predict(trial_id, trials, predictor)
        threshold = self.threshold(trials, exclude=trial_id)
        return self._judged_paused(trial_id, trials, prediction, threshold, why, may_thaw=True)

    def rescore(self, trial_id: str, trials: Mapping[str, TrialState], why: str) -> Decision:
        """A paused trial's chance against a bar that rose (``why``), from its latest prediction, without asking
        the predictor: "stop" below ``hopeless``, else "pause" (its chance updated). A bar that rises only lowers
        chances, so nothing is thawed here; a trial that fell short of its prediction calls :meth:`rejudge`."""
        state = trials[trial_id]
        threshold = self.threshold(trials, exclude=trial_id)
        if threshold is None or state.pred_mean is None:
            return Decision(trial_id, state.epochs[-1], "pause", f"{why}: nothing to rescore", status=PAUSED)
        prediction = Prediction(state.pred_mean, state.pred_std or 0.0)
        return self._judged_paused(trial_id, trials, prediction, threshold, why, may_thaw=False)

    def _judged_paused(
        self, trial_id: str, trials: Mapping[str, TrialState], prediction: Prediction, threshold: float | None,
        why: str, may_thaw: bool,
    ) -> Decision:  # fmt: skip
        """The decision on a paused trial with ``prediction`` against ``threshold`` (None: no bar, P = 1)."""
        p_beat = 1.0 if threshold is None else prediction.prob_above(threshold)
        judged = {"trial_id": trial_id, "epoch": trials[trial_id].epochs[-1], "prediction": prediction,
                  "threshold": math.nan if threshold is None else threshold, "p_beat": p_beat}  # fmt: skip
        chance = f"{why}: P(beat k-th best) {p_beat:.3f}"
        verdict = self._verdict(p_beat)
        if verdict == "go" and may_thaw:
            return Decision(**judged, action="thaw", reason=f"{chance} >= {self.delta}")
        if (verdict == "stop") if may_thaw else (p_beat < self.hopeless):
            return Decision(**judged, action="stop", reason=f"{chance} < hopeless {self.hopeless}", status="stopped")
        return Decision(**judged, action="pause", reason=f"{chance} < {self.delta}: stays paused", status=PAUSED)

    def context(self, trial_id: str, trials: Mapping[str, TrialState]) -> SearchContext:
        """The other trials of ``trial_id``'s search (:func:`search_context`), their levels kept between calls."""
        return search_context(trial_id, trials, self._levels)

    def _predict(self, trial_id: str, trials: Mapping[str, TrialState], predictor: Predictor) -> Prediction:
        """``trial_id``'s predicted final, in the context of the other trials of its search."""
        state = trials[trial_id]
        return ask(predictor, state.series(), state.config, state.budget, self.context(trial_id, trials))

    def _verdict(self, p_beat: float) -> Literal["go", "pause", "stop"]:
        """The one rule :meth:`decide` and :meth:`rejudge` share: go on at P >= delta; with freeze-thaw, pause at
        hopeless <= P < delta; else stop."""
        if p_beat >= self.delta:
            return "go"
        return "pause" if self.freeze_thaw and p_beat >= self.hopeless else "stop"

    @staticmethod
    def divergence(state: TrialState, result: Mapping[str, Any]) -> str | None:
        """Why the trial counts as diverged, or None."""
        if result.get("diverged") == 1:
            return "the trainable reported diverged=1"
        for column in ("train_loss", "val_loss", "val_acc"):
            if column in result and clean(result[column]) is None:
                return f"{column} is {result[column]}"
        losses = [v for v in state.history.get("train_loss", []) if v is not None]
        if len(losses) >= 2 and losses[-1] > DIVERGENCE_LOSS_FACTOR * losses[0]:
            return f"train_loss {losses[-1]:.3g} > {DIVERGENCE_LOSS_FACTOR:g}x its first value {losses[0]:.3g}"
        return None

    def grace(self, state: TrialState, result: Mapping[str, Any]) -> int:
        """Earliest epoch at which the trial may be judged (see the module docstring)."""
        fired = self.detector_epoch(state, result)
        grace = self.min_fraction * state.budget
        if fired is False:  # still in its early period: held back, but only up to max_fraction
            grace = max(grace, self.max_fraction * state.budget)
        elif fired is not None:
            grace = max(grace, min(fired, self.max_fraction * state.budget))
        grace = math.ceil(grace - 1e-9)
        if self.noise_grace:  # to the nearest epoch: weak noise (under half an epoch's worth) adds nothing
            noise = sum(clean(state.config.get(key)) or 0.0 for key in ("dropout", "label_noise"))
            grace = math.floor(grace * (1.0 + self.noise_factor * noise) + 0.5)
        return min(state.budget, grace)

    def detector_epoch(self, state: TrialState, result: Mapping[str, Any]) -> int | bool | None:
        """The epoch the detector fired; False while it has not; None when it cannot be evaluated."""
        reported = f"cp_end_{self.detector}"
        if reported in result:
            value = clean(result[reported])
            return False if value is None else int(value)
        values = state.history.get(DETECTOR_INPUT[self.detector])
        if not values or all(v is None for v in values):
            return None
        fired = DETECTOR_RULES[self.detector]([math.nan if v is None else v for v in values], state.budget)
        return False if fired is None else int(fired)

    def threshold(self, trials: Mapping[str, TrialState], exclude: str | None) -> float | None:
        """The k-th best final: over observed finals once there are k, else also over running trials past their
        grace (other than ``exclude``), each counted at its pessimistic predicted quantile."""
        finals = sorted((s.final for s in trials.values() if s.final is not None), reverse=True)
        if len(finals) < self.k:
            finals = sorted(
                finals
                + [
                    Prediction(s.pred_mean, s.pred_std).quantile(_STAND_IN_QUANTILE) for tid, s in trials.items()
                    if tid != exclude and s.status == "running" and s.pred_mean is not None and s.pred_std
                    and s.grace is not None and s.epochs and s.epochs[-1] >= s.grace
                ],
                reverse=True,
            )  # fmt: skip
        return finals[self.k - 1] if len(finals) >= self.k else None
