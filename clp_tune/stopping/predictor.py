"""Predict a trial's final validation accuracy, with an honest spread, from its partial trajectory.

Early curves cross: trials slowed by strong regularization (dropout, label noise, a small learning rate) rise
late (Shalova et al., arXiv 2404.12293), and a cosine schedule lifts every curve near its end. The last value is
therefore a biased guess, and a scheduler that stops trials needs a *distribution* of the final value, not a
point. Four ingredients, from cheapest to most informed:

* a parametric learning-curve extrapolation (:mod:`clp_tune.stopping.curves`): needs nothing else, from its
  third epoch on (before it, a trial's final is anywhere between its level and 1);
* trees fitted on trajectories (a bank, one row per trial-epoch, see
  :data:`~clp_tune.stopping.features.BANK_DOC`, and the search's finished trials): they map features of the
  partial trajectory at budget fraction f (:mod:`clp_tune.stopping.features`) to the gain still to come, and a
  second model maps the same features to the size of its out-of-fold errors, one fold per task of the bank (the
  errors on a task the trees have not seen, which is how a prior is used), widened until the worst task left out
  is covered in the tails (:func:`~clp_tune.stopping.boosting.error_model`); refitted with the search's own
  trials every few finished trials. Their absolute levels tie them to the bank's task;
* the in-context model (:mod:`clp_tune.stopping.incontext`), fitted on the bank's tasks: the trial's position
  among the other trials of its search at the same epoch maps to its final in units of that search, so a prior
  fitted on other tasks applies to a new one. Used whenever the search has enough trials at the trial's epoch;
* the search's own evidence (:mod:`clp_tune.stopping.search_line`): once a few trials of this search have
  finished, a line from their level at epoch t to their final, in log-odds. Pooled with the models above by
  :func:`pool`, it weighs more with every trial the search finishes, so what a prior of other tasks gets wrong
  about this one stops mattering;
* online recalibration from the trials this search has finished (:mod:`clp_tune.stopping.calibration`): each is
  a fresh out-of-sample test of the model that would have judged it, at each fraction. In two stages once the
  line exists: the prior is recalibrated on every finished trial before it is pooled, the pool on those finished
  since; a new task finishes few trials, and the prior must not keep the spread the bank gave it.

No prediction is sharper than the measurement it predicts: a final is one epoch's val_acc, which moves from epoch to
epoch by the trial's own jitter, so that jitter floors the spread (:func:`measurement_noise`).

Each tree model is fitted (and cached) for the set of feature columns a trial actually has.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd
from scipy.special import ndtr, ndtri

from clp_tune.stopping.boosting import ErrorModel, TreesWithError, error_model, fitted_together, target_trees
from clp_tune.stopping.calibration import MIN_STD, ConformalCalibration
from clp_tune.stopping.context import SearchContext, context_features, expit, level_at, logit
from clp_tune.stopping.curves import MIN_EPOCHS, curve_extrapolation
from clp_tune.stopping.features import (
    FEATURES,
    History,
    Trajectory,
    cut_epochs,
    is_complete,
    jitter,
    planned_epochs,
    trajectories_from_frame,
    trajectory_features,
)
from clp_tune.stopping.incontext import InContextModel, spread_at
from clp_tune.stopping.prior import USER_TASK_PREFIX, fold_labels, pooled, suite_banks, task_of
from clp_tune.stopping.search_line import LinePrediction, SearchLine

#: The prior's weight in :func:`pool`, in finished trials of the search: after this many, the search's own line
#: weighs as much as the models fitted on other tasks.
PRIOR_TRIALS = 10


@dataclass(frozen=True)
class Prediction:
    """Predictive distribution of the final validation accuracy: a normal of ``mean`` and ``std`` censored at 1.

    No accuracy exceeds 1: the normal's mass above 1 is the chance of a perfect score (several tasks have trials
    that end at 1.0). So a perfect bar cannot be beaten, and a bar just below 1 is beaten by a perfect score. (A
    normal *cut off* at 1 instead spreads that mass over the whole range below: a wide prediction then all but
    never beats a bar near 1, whatever the trial.) scipy.special's normal functions: ``scipy.stats`` takes ~50 us
    a call to read its arguments, and the scheduler asks at every result.
    """

    mean: float
    std: float

    def prob_above(self, threshold: float) -> float:
        """P(final > threshold)."""
        if threshold >= 1.0:
            return 0.0
        return float(ndtr((self.mean - threshold) / max(self.std, MIN_STD)))

    def quantile(self, q: float) -> float:
        return min(1.0, self.mean + max(self.std, MIN_STD) * float(ndtri(q)))

    def log_odds(self) -> tuple[float, float]:
        """The mean and variance of logit(final), the inverse of :meth:`from_log_odds`: the half-width h whose
        interval logit(mean) +- h maps back to mean +- std (expit(m + h) - expit(m - h) = sinh h / (cosh m + cosh h),
        a quadratic in e^h)."""
        centre = float(logit(self.mean))
        width, stretch = min(2 * max(self.std, MIN_STD), 0.999), math.cosh(centre)
        half = math.log((width * stretch + math.sqrt((width * stretch) ** 2 + 1 - width**2)) / (1 - width))
        return centre, half**2

    @classmethod
    def from_log_odds(cls, mean: float, variance: float) -> Prediction:
        """The prediction whose logit(final) has ``mean`` and ``variance``: its spread is the half-width of the
        one-sigma interval mapped back to accuracies."""
        half = math.sqrt(variance)
        return cls(expit(mean), max((expit(mean + half) - expit(mean - half)) / 2, MIN_STD))


def pool(prior: Prediction, line: LinePrediction) -> Prediction:
    """The prior's prediction and the search's line, pooled in log-odds (a log-linear pool: precisions weighted by
    the prior's share 1 - w and the line's w = n / (n + :data:`PRIOR_TRIALS`), which sum to 1): never sharper than
    the sharper of the two, and moving from the prior to the line as the search finishes trials."""
    weight = line.trials / (line.trials + PRIOR_TRIALS)
    mean, variance = prior.log_odds()
    precision = (1 - weight) / variance + weight / line.variance
    centre = ((1 - weight) * mean / variance + weight * line.mean / line.variance) / precision
    return Prediction.from_log_odds(centre, 1 / precision)


def measurement_noise(val_acc: Sequence[float]) -> float:
    """The noise of one epoch's val_acc: the curve's recent :func:`~clp_tune.stopping.features.jitter` over sqrt(2)
    (a change is the difference of two such values)."""
    return jitter(val_acc) / math.sqrt(2)


class Predictor(Protocol):
    """What the scheduler needs from a predictor."""

    def predict(self, history: History, config: Mapping[str, Any], budget: int) -> Prediction: ...

    def observe_finished(self, rows: pd.DataFrame | Sequence[Trajectory]) -> None: ...


@runtime_checkable
class InContextPredictor(Protocol):
    """A predictor that also reads the other trials of the search (the policy hands them to those that can)."""

    def predict_in_context(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext
    ) -> Prediction: ...


#: A finished trial's calibration score at one cut epoch: [model, budget fraction, final - predicted mean, predicted
#: std] of one model's prediction before its own recalibration (a list: it is kept in the scheduler's JSON state as
#: it is).
Score = list


@runtime_checkable
class ScoredPredictor(Protocol):
    """A predictor whose online recalibration can take a finished trial's scores from the caller, who scores it in
    the search as that search stood when it finished (:meth:`FinalAccuracyPredictor.finished_scores`)."""

    def finished_scores(self, trajectory: Trajectory, context: SearchContext) -> list[Score]: ...

    def observe_finished(
        self, rows: pd.DataFrame | Sequence[Trajectory], scores: Sequence[Sequence[Score]] | None = None
    ) -> None: ...


def ask(
    predictor: Predictor, history: History, config: Mapping[str, Any], budget: int, context: SearchContext
) -> Prediction:
    """The predictor's prediction, in the search's context when it reads one (a predictor written for trials
    alone, such as a benchmark's wrapper, is asked without)."""
    if isinstance(predictor, InContextPredictor):
        return predictor.predict_in_context(history, config, budget, context)
    return predictor.predict(history, config, budget)


def _own_context(trajectories: Sequence[Trajectory]) -> SearchContext:
    """Finished trials as a search context: whole curves, finals known."""
    return SearchContext({str(i): t.history["val_acc"] for i, t in enumerate(trajectories)},
                         {str(i): t.final for i, t in enumerate(trajectories)})  # fmt: skip


class FinalAccuracyPredictor:
    """Predictive distribution of a trial's final val_acc from its partial trajectory and its search.

    Fits are deterministic functions of (bank, the finished trials of the search in order): the gain trees for a
    feature set are fitted on the bank plus the search's trials up to the last refit point, the error trees on
    the data of the first point with enough trials, the in-context model on the bank alone; the recalibration
    reads each finished trial's scores (given, or taken among the trials finished before it). So a predictor fed
    the same finished trials and scores in the same order predicts the same, whenever its lazy fits happen (a
    resumed search relies on this: the scheduler keeps each trial's scores in its state).

    Args:
        bank: trajectory bank (frame in the bank schema) to fit the prior on; None for none. Trial ids
            ``<task>/<id>`` group a pooled bank's trials into tasks (:mod:`clp_tune.stopping.prior`).
        refit_every: refit the gain trees after this many newly finished trials of the search (0: never).
        own_weight: weight of this search's finished trials relative to bank trials when refitting.
        min_trials: fewest complete trajectories before trees are fitted (below: curve extrapolation only).
        seed: seed of the trees' subsampling.
        tasks: shipped suite tasks (``clp_tune.stopping.bank_library.SUITE`` names) whose banks join the prior;
            a benchmark leaves out the task it evaluates. Missing bank files are skipped with a warning.
    """

    def __init__(
        self,
        bank: pd.DataFrame | None = None,
        refit_every: int = 10,
        own_weight: float = 2.0,
        min_trials: int = 8,
        seed: int = 0,
        tasks: Sequence[str] = (),
    ):
        self.refit_every = refit_every
        self.own_weight = own_weight
        self.min_trials = min_trials
        self.seed = seed
        frames = [] if bank is None else [bank]
        suite = suite_banks(tasks) if tasks else {}
        if suite:
            frames.append(pooled(suite))
        self._bank = [] if not frames else [
            t for t in trajectories_from_frame(pd.concat(frames, ignore_index=True)) if is_complete(t)
        ]  # fmt: skip
        self._own: list[Trajectory] = []
        self._own_at_fit = 0  # the search's trials the gain trees are fitted on: self._own[:self._own_at_fit]
        self._fitted: dict[frozenset[str], TreesWithError | None] = {}
        self._stale: set[frozenset[str]] = set()
        self._examples_cache: dict[int, tuple[list[dict[str, float]], np.ndarray, np.ndarray]] = {}
        self._incontext: InContextModel | None = None
        self._calibration = ConformalCalibration()
        self._line = SearchLine()

    def __deepcopy__(self, memo: dict) -> FinalAccuracyPredictor:
        """A copy with its own online state that shares what never changes after creation: the bank's
        trajectories, cached examples and fitted models (refits replace trees, never modify them)."""
        new = copy.copy(self)
        new._own = list(self._own)
        new._fitted = dict(self._fitted)
        new._stale = set(self._stale)
        new._examples_cache = dict(self._examples_cache)
        new._calibration = copy.deepcopy(self._calibration, memo)
        new._line = copy.deepcopy(self._line, memo)
        return new

    @property
    def prior_trial_ids(self) -> list[str]:
        """The trial ids of the bank trajectories the prior is fitted on (pooled ids carry their task)."""
        return [str(t.config["trial_id"]) for t in self._bank]

    # -- learning -------------------------------------------------------------------------------------------

    def finished_scores(self, trajectory: Trajectory, context: SearchContext | None) -> list[Score]:
        """A finished trial's calibration scores: at each cut epoch, the error of the model that would have judged
        it there, predicting in ``context`` (the other trials of its search, each read at that epoch), and, where
        the search has a line, the error of the prior alone (what recalibrates it before it is pooled)."""
        scores = []
        for epoch in cut_epochs(trajectory.budget):
            fraction = epoch / trajectory.budget
            model, prior, line = self._parts(trajectory.upto(epoch), trajectory.config, trajectory.budget, context)
            scores.append([model, fraction, trajectory.final - prior.mean, prior.std])
            if line is not None:
                pooled_model, with_line = self._with_line(model, fraction, prior, line)
                scores.append([pooled_model, fraction, trajectory.final - with_line.mean, with_line.std])
        return scores

    def observe_finished(
        self, rows: pd.DataFrame | Sequence[Trajectory], scores: Sequence[Sequence[Score]] | None = None
    ) -> None:
        """Learn from trials of this search that ran their whole budget (bank-schema rows or trajectories).

        Each one's out-of-sample errors (:meth:`finished_scores`) recalibrate bias and spread, and it is kept for
        the next refit. ``scores``, one list per trajectory, are those errors as the caller took them in the
        search as it stood when the trial finished -- the context its live decisions saw. Without them a trial is
        scored among the trials finished before it, which are the survivors of the stopping: among them every
        trial stands lower than it stood in the search, so its predictions, and its errors, are not the ones the
        decisions were made with.
        """
        trajectories = trajectories_from_frame(rows) if isinstance(rows, pd.DataFrame) else list(rows)
        if scores is not None and len(scores) != len(trajectories):
            raise ValueError(f"need one list of scores per trajectory, got {len(scores)} for {len(trajectories)}")
        for i, trajectory in enumerate(trajectories):
            if not is_complete(trajectory):
                continue
            taken = scores[i] if scores is not None else self.finished_scores(trajectory, _own_context(self._own))
            for model, fraction, error, std in taken:
                self._calibration.add(model, fraction, error, std)
            self._own.append(trajectory)
            self._line.add(trajectory.history["val_acc"], trajectory.budget)
            if self.refit_every and len(self._own) - self._own_at_fit >= self.refit_every:
                self._own_at_fit = len(self._own)
                self._stale = set(self._fitted)  # refitted lazily, per feature set, on the next prediction

    def _examples_of(
        self, position: int, trajectory: Trajectory
    ) -> tuple[list[dict[str, float]], np.ndarray, np.ndarray]:
        """Feature rows (one per cut), their matrix (columns as FEATURES) and the gain still to come of one
        trajectory; cached by its position in bank + own, which never changes (the bank is fixed, own trials are
        only appended)."""
        if position not in self._examples_cache:
            rows = [
                trajectory_features(trajectory.upto(epoch), trajectory.config, trajectory.budget)
                for epoch in cut_epochs(trajectory.budget)
            ]
            x = np.array([[r[c] for c in FEATURES] for r in rows], dtype=float).reshape(len(rows), len(FEATURES))
            gains = trajectory.final - x[:, FEATURES.index("val_acc_level")]
            self._examples_cache[position] = (rows, x, gains)
        return self._examples_cache[position]

    def _examples(self, columns: list[str], n_own: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Training rows from the bank and the first ``n_own`` finished trials: features, target, weight, group."""
        index = [FEATURES.index(c) for c in columns]
        xs, ys, ws, groups = [], [], [], []
        weighted = [(t, 1.0) for t in self._bank] + [(t, self.own_weight) for t in self._own[:n_own]]
        for position, (trajectory, w) in enumerate(weighted):
            _, x, gains = self._examples_of(position, trajectory)
            xs.append(x[:, index])
            ys.append(gains)
            ws.append(np.full(len(gains), w))
            groups.append(np.full(len(gains), position))
        return np.concatenate(xs), np.concatenate(ys), np.concatenate(ws), np.concatenate(groups)

    def _first_fit_point(self) -> int:
        """Finished search trials in the first fit with at least ``min_trials`` trajectories."""
        missing = max(0, self.min_trials - len(self._bank))
        if missing == 0:
            return 0
        step = self.refit_every or 1
        return math.ceil(missing / step) * step

    def _fit(self, available: frozenset[str]) -> TreesWithError | None:
        """Fit gain trees on the shared features; error trees (from out-of-fold residuals, :meth:`_folds`) once."""
        first = self._first_fit_point()
        if self._own_at_fit < first or len(self._bank) + self._own_at_fit < self.min_trials:
            return None
        columns = [c for c in FEATURES if c in available]
        x, y, w, _ = self._examples(columns, self._own_at_fit)
        keep = ~np.all(np.isnan(x), axis=0)  # a feature the trial has but no trajectory in the data has
        columns = [c for c, k in zip(columns, keep, strict=True) if k]
        x = x[:, keep]
        medians = np.nanmedian(x, axis=0)
        x = np.where(np.isnan(x), medians, x)
        previous = self._fitted.get(available)

        def spread() -> ErrorModel:
            if previous is not None and previous.columns == columns:
                return previous.error
            xe, ye, we, group = self._examples(columns, first)
            xe = np.where(np.isnan(xe), medians, xe)
            return error_model(xe, ye, self._folds(group), self.seed, we, cache=first == 0)

        gain, error = fitted_together(  # fits on the bank alone are kept
            lambda: target_trees(x, y, self.seed, w, cache=self._own_at_fit == 0), spread
        )
        return TreesWithError(columns, medians, gain, error)  # the gain still to come

    def _folds(self, group: np.ndarray) -> np.ndarray:
        """The out-of-fold groups of the error trees' residuals (``group``: each example's position in bank + own):
        one per task of the bank (:func:`~clp_tune.stopping.prior.fold_labels`: the user's runs share a few), the
        search's own trials one more, so that the spread is the trees' error on a task they have not seen, as a
        prior's is on a new search (folds of trials within the same tasks made it several times too narrow there);
        three folds of trials when all are of one task."""
        names = [task_of(str(t.config["trial_id"])) for t in self._bank]
        folds = fold_labels([names[g] if g < len(names) else None for g in group.tolist()])
        return folds if len(np.unique(folds)) > 1 else group % 3

    def _incontext_model(self) -> InContextModel:
        """The in-context model on the bank's tasks, built on first use (it shares the gain trees' examples).

        The user's library runs (:data:`~clp_tune.stopping.prior.USER_TASK_PREFIX`) are left out: the model learns
        where a trial stands among the other trials of its search, and a library run holds only the trials its
        stopper let finish, all near the top. Learned as searches, they taught the model that a trial near the top
        of its search gains little, and the next search of their task stopped far later than without them (see the
        README). The gain trees, which read each trial alone, keep them."""
        if self._incontext is None:
            by_task: dict[str, tuple[list[Trajectory], list[list[dict[str, float]]]]] = {}
            for position, trajectory in enumerate(self._bank):
                task = task_of(str(trajectory.config["trial_id"]))
                if task.startswith(USER_TASK_PREFIX):
                    continue
                trajectories, rows = by_task.setdefault(task, ([], []))
                trajectories.append(trajectory)
                rows.append(self._examples_of(position, trajectory)[0])
            self._incontext = InContextModel(list(by_task.values()), self.seed)
        return self._incontext

    # -- predicting -----------------------------------------------------------------------------------------

    def _raw_predict(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext | None
    ) -> tuple[str, Prediction]:
        """The prediction before its last recalibration and the model that made it: the prior's
        (:meth:`_prior_predict`), or, once the search has a line at this epoch, the prior recalibrated on its own
        scores and pooled with the line (``<model>+line``)."""
        model, prior, line = self._parts(history, config, budget, context)
        if line is None:
            return model, prior
        return self._with_line(model, len(history["val_acc"]) / budget, prior, line)

    def _parts(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext | None
    ) -> tuple[str, Prediction, LinePrediction | None]:
        """The prior's model and uncalibrated prediction, and the search's line at this epoch (None: no line yet)."""
        model, prior = self._prior_predict(history, config, budget, context)
        epoch = len(history["val_acc"])
        return model, prior, self._line.predict(level_at(history["val_acc"], epoch), epoch, budget)

    def _with_line(
        self, model: str, fraction: float, prior: Prediction, line: LinePrediction
    ) -> tuple[str, Prediction]:
        """The prior of ``model`` at ``fraction``, recalibrated on its own scores, pooled with the search's line; and
        the name its own scores are kept under (``<model>+line``)."""
        return f"{model}+line", pool(self._calibrated(model, fraction, prior), line)

    def _calibrated(self, model: str, fraction: float, prediction: Prediction) -> Prediction:
        """``prediction`` of ``model`` at ``fraction``, recalibrated on the search's finished trials."""
        mean, std = self._calibration.correct(model, fraction, prediction.mean, prediction.std)
        return Prediction(float(np.clip(mean, 0, 1)), max(std, MIN_STD))

    def _prior_predict(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext | None
    ) -> tuple[str, Prediction]:
        """The prediction of the models fitted on the bank (and refitted with the search's trials), and which one
        made it: ``context``, ``trees``, ``curve`` or ``level``."""
        feats = trajectory_features(history, config, budget)
        spread = spread_at(len(history["val_acc"]), context)
        if spread is not None and self._bank:
            feats.update(context_features(history["val_acc"], context))
            predicted = self._incontext_model().predict(feats, spread)
            if predicted is not None:
                return "context", Prediction(float(np.clip(predicted[0], 0, 1)), max(predicted[1], MIN_STD))
        available = frozenset(k for k in FEATURES if not math.isnan(feats[k]))  # the columns this trial reports
        if available not in self._fitted or available in self._stale:
            self._fitted[available] = self._fit(available)
            self._stale.discard(available)
        fitted = self._fitted[available]
        remaining = max(0.0, 1.0 - feats["fraction"])
        if fitted is None:
            if len(history["val_acc"]) < MIN_EPOCHS:
                # Nothing to extrapolate yet: the final lies anywhere between the level and a perfect score (a
                # uniform's mean and std). The level with a spread of what is left stopped as hopeless, at epoch 1,
                # best trials that rose from 0.3 to 0.97 (the README's no-prior rows).
                level = feats["val_acc_level"]
                return "level", Prediction(float((1 + level) / 2), max((1 - level) / math.sqrt(12), MIN_STD))
            # Curve extrapolation alone: trust it half-way and keep a spread that shrinks with what is left.
            mean = feats["val_acc_level"] + 0.5 * feats["curve_gain"]
            std = math.hypot(feats["curve_disagreement"] + 0.5 * abs(feats["curve_gain"]), 0.15 * remaining)
            return "curve", Prediction(float(np.clip(mean, 0, 1)), max(std, MIN_STD))
        gain, std = fitted.predict(feats)
        return "trees", Prediction(float(np.clip(feats["val_acc_level"] + gain, 0, 1)), max(std, MIN_STD))

    def predict(
        self,
        history: History,
        config: Mapping[str, Any] | None = None,
        budget: int | None = None,
        context: SearchContext | None = None,
    ) -> Prediction:
        """Predict the final val_acc of a trial seen up to epoch len(history["val_acc"]).

        Args:
            history: column -> per-epoch values (index i is the value after epoch i+1); val_acc is required.
            config: the trial's hyperparameters (plain keys or ``config/<key>``); may be empty.
            budget: the trial's planned epochs (default: config's ``epochs``, else the epochs seen).
            context: the other trials of its search (None: the trial is judged alone).
        """
        config = config or {}
        budget = budget or planned_epochs(config, len(history["val_acc"]))
        model, raw = self._raw_predict(history, config, budget, context)
        calibrated = self._calibrated(model, len(history["val_acc"]) / budget, raw)
        return Prediction(calibrated.mean, max(calibrated.std, measurement_noise(history["val_acc"])))

    def predict_in_context(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext
    ) -> Prediction:
        """:meth:`predict` with the search's other trials (what the policy calls)."""
        return self.predict(history, config, budget, context)


def last_value_prediction(history: History) -> float:
    """Baseline: the final accuracy is the current one."""
    return float(history["val_acc"][-1])


def curve_fit_prediction(history: History, budget: int) -> float:
    """Baseline: the parametric curve extrapolation alone."""
    return curve_extrapolation(history["val_acc"], budget)[0]
