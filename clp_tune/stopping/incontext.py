"""The predictor's transferable model: a trial's final in units of its own search, from where it stands in it.

Features are the trial's position among the other trials of its search at the same epoch
(:mod:`clp_tune.stopping.context`), the scale-free features of its own trajectory (the loss's rise, the
learning-rate progress, the statistics) and its hyperparameters; levels, slopes and gaps in accuracy units are
left out, since they mean different things on different tasks. The target is the gain still to come in units
of the search at the cut epoch, in log-odds: (logit(final) - logit(current level)) / the others' spread, so the
same trees serve a task at 0.6 and one at 0.97, the prediction maps back to an accuracy with that search's own
spread, and where the trees know nothing a trial keeps the rank of its current level (anchoring on the search's
mean instead ranked worse than the last value on some held-out tasks).

The trees' gain is shrunk towards the search's average gain from the trial's last value: early in a budget their
gains on a task they have not seen are noisy, and taken whole they ranked trials worse than the last value on some
held-out tasks. The weight is the one whose out-of-fold predictions rank the finals of the prior's own tasks best
(:func:`shrink_weight`), so it is learned from the banks, never from the search it judges.

Bank trials are compared only with trials of their own task. Which of the others have finished (and so which is
the incumbent) is drawn at random per trial, as a search sees it part-way; the draw is seeded, so fits stay
deterministic. The spread's trees are fitted on out-of-fold errors with one fold per task: a prior's errors on a
task it has not seen, which is how it is used (and widened to the worst such task, :func:`error_model`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from clp_tune.stopping.boosting import (
    ErrorModel,
    TreesWithError,
    error_model,
    fitted_together,
    out_of_fold,
    target_trees,
)
from clp_tune.stopping.context import (
    CONTEXT_FEATURES,
    CONTEXT_MIN,
    SearchContext,
    TaskLevels,
    expit,
    level_at,
    logit,
    search_spread,
    standing,
)
from clp_tune.stopping.features import FEATURES, Trajectory, cut_epochs

#: Features on the task's own accuracy (or loss) scale -- levels, and slopes and gaps in accuracy units -- which do
#: not transfer between tasks (the in-context features carry them in the search's own units).
ABSOLUTE = frozenset({"val_acc_last", "val_acc_level", "val_acc_max", "curve_extrapolation", "val_loss_last",
                      "train_acc_last", "train_loss_last", "train_loss_mean", "val_acc_slope", "val_acc_jitter",
                      "curve_gain", "curve_disagreement", "generalization_gap", "train_acc_slope"})  # fmt: skip
COLUMNS = tuple(c for c in FEATURES if c not in ABSOLUTE) + CONTEXT_FEATURES


def anchor(features: Mapping[str, float], spread: float) -> float:
    """The last value's gap to the level in units of the search (what the shrunk gain starts from)."""
    return (float(logit(features["val_acc_last"])) - float(logit(features["val_acc_level"]))) / spread


def spread_at(epoch: int, context: SearchContext | None) -> float | None:
    """The search's spread of log-odds at ``epoch`` (the target's unit); None when too few others are there."""
    return None if context is None else context.log_odds_at(epoch)[2]


def spread_of(values: np.ndarray) -> float | None:
    """The spread of log-odds of the other trials' levels ``values``; None when they are too few."""
    return search_spread(logit(values))


#: The shrink weights :func:`shrink_weight` chooses from: 0 is the last value plus the average gain, 1 the trees.
SHRINK_WEIGHTS = tuple(np.linspace(0.0, 1.0, 11))


def shrunk(
    trees: np.ndarray | float, anchor: np.ndarray | float, centre: np.ndarray | float, weight: float
) -> np.ndarray | float:
    """The model's gain in units of the search: the trees' gain ``trees`` shrunk by ``weight`` towards ``centre``
    (the average gain) from the last value (``anchor``: the last value's gap to the level, in the same units)."""
    return (1 - weight) * (anchor + centre) + weight * trees


def shrink_weight(
    predicted: np.ndarray, y: np.ndarray, anchor: np.ndarray, centre: np.ndarray, level: np.ndarray,
    spread: np.ndarray, groups: np.ndarray,
) -> float:  # fmt: skip
    """The weight of :data:`SHRINK_WEIGHTS` whose gains, from out-of-fold trees ``predicted``, rank the finals best:
    the mean Spearman correlation, over ``groups`` (a task at one cut epoch), of the predicted and the true final
    log-odds (``level`` + ``spread`` x gain). Ties go to the larger weight (the trees' own gain)."""
    from scipy.stats import spearmanr

    truth = level + spread * y
    members = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    members = [rows for rows in members if len(rows) > CONTEXT_MIN]
    best, chosen = -math.inf, 1.0
    for weight in sorted(SHRINK_WEIGHTS, reverse=True):
        guess = level + spread * shrunk(predicted, anchor, centre, weight)
        rhos = [spearmanr(guess[rows], truth[rows]).statistic for rows in members]
        score = float(np.nanmean(rhos)) if rhos else math.nan
        if score > best + 1e-12:
            best, chosen = score, float(weight)
    return chosen


class InContextModel:
    """Trees from in-context features to the final in units of the search, fitted on the banks' tasks.

    Args:
        tasks: per task, its complete trajectories and, per trajectory, its feature rows at
            :func:`~clp_tune.stopping.features.cut_epochs` (as the predictor computed them).
        seed: seed of the trees and of the draw of finished trials.
    """

    def __init__(
        self, tasks: Sequence[tuple[Sequence[Trajectory], Sequence[Sequence[Mapping[str, float]]]]], seed: int
    ):
        self.seed = seed
        xs, ys, task_of_row, trial_of_row, cut_of_row = [], [], [], [], []
        levels_of_row, spreads, anchors = [], [], []
        trial = 0
        for t, (trajectories, rows) in enumerate(tasks):
            if len(trajectories) <= CONTEXT_MIN:
                continue
            curves = [tr.history["val_acc"] for tr in trajectories]
            finals = [tr.final for tr in trajectories]
            levels = TaskLevels(curves)  # each trial's search: every other trial of its task
            for i, (trajectory, cuts) in enumerate(zip(trajectories, rows, strict=True)):
                rng = np.random.default_rng([seed, t, i])
                others = [j for j in range(len(curves)) if j != i]
                finished = rng.choice(others, size=int(rng.integers(1, len(others) + 1)), replace=False)
                incumbent = max(finished.tolist(), key=finals.__getitem__)  # ties: the first drawn
                for cut, (epoch, row) in enumerate(zip(cut_epochs(trajectory.budget), cuts, strict=True)):
                    values, earlier = levels.values_at(epoch, without=i)
                    spread = spread_of(values)
                    if spread is None:  # non-finite curves left too few others
                        continue
                    best = (level_at(curves[incumbent], epoch), finals[incumbent])
                    features = {**row, **standing(curves[i][:epoch], values, earlier, best)}
                    xs.append([features[c] for c in COLUMNS])
                    level = float(logit(row["val_acc_level"]))
                    ys.append((float(logit(trajectory.final)) - level) / spread)
                    anchors.append(anchor(row, spread))
                    levels_of_row.append(level)
                    spreads.append(spread)
                    task_of_row.append(t)
                    trial_of_row.append(trial)
                    cut_of_row.append(cut)
                trial += 1
        self._x = np.asarray(xs, dtype=float).reshape(len(xs), len(COLUMNS))
        self._y = np.asarray(ys, dtype=float)
        self._task = np.asarray(task_of_row, dtype=int)
        self._trial = np.asarray(trial_of_row, dtype=int)
        cuts = np.asarray(cut_of_row, dtype=int)
        self._group = self._task * (int(cuts.max(initial=0)) + 1) + cuts  # a task at one cut: a search, ranked
        self._level = np.asarray(levels_of_row, dtype=float)
        self._spread = np.asarray(spreads, dtype=float)
        self._anchor = np.asarray(anchors, dtype=float)
        self._centre = float(np.mean(self._y)) if len(self._y) else 0.0  # the average gain to come
        self._fits: dict[frozenset[str], tuple[TreesWithError, float] | None] = {}

    @property
    def usable(self) -> bool:
        """Whether any task had enough trials to give the model examples."""
        return len(self._y) > 0

    def _fit(self, available: frozenset[str]) -> tuple[TreesWithError, float] | None:
        """The trees and error trees on the ``available`` columns, and the shrink weight."""
        index = [i for i, c in enumerate(COLUMNS) if c in available and not np.all(np.isnan(self._x[:, i]))]
        if not index or not self.usable:
            return None
        x = self._x[:, index]
        medians = np.nanmedian(x, axis=0)
        x = np.where(np.isnan(x), medians, x)
        folds = self._task if len(np.unique(self._task)) > 1 else self._trial % 3

        def spread() -> tuple[ErrorModel, float]:
            """The shrink weight, and the error model of the gain it shrinks, both from out-of-fold trees (whose
            centre is the other folds' average gain)."""
            trees = out_of_fold(x, self._y, folds, self.seed, cache=True)
            centre = np.empty_like(self._y)
            for fold in np.unique(folds):
                centre[folds == fold] = float(np.mean(self._y[folds != fold]))
            weight = shrink_weight(trees, self._y, self._anchor, centre, self._level, self._spread, self._group)
            predicted = shrunk(trees, self._anchor, centre, weight)
            return error_model(x, self._y, folds, self.seed, cache=True, predicted=predicted), weight

        final, (error, weight) = fitted_together(  # the bank alone: the same in every search, so all are cached
            lambda: target_trees(x, self._y, self.seed, cache=True), spread
        )
        return TreesWithError([COLUMNS[i] for i in index], medians, final, error), weight

    def predict(self, features: Mapping[str, float], spread: float) -> tuple[float, float] | None:
        """(mean, std) of the final val_acc of a trial with ``features`` in a search of ``spread``
        (:func:`spread_at`); None when no model fits its features."""
        available = frozenset(c for c in COLUMNS if not math.isnan(features.get(c, math.nan)))
        if available not in self._fits:
            self._fits[available] = self._fit(available)
        fit = self._fits[available]
        if fit is None:
            return None
        trees, weight = fit
        gain, error = trees.predict(features)
        gain = shrunk(gain, anchor(features, spread), self._centre, weight)
        centre, half = float(logit(features["val_acc_level"])) + spread * gain, spread * error
        return expit(centre), (expit(centre + half) - expit(centre - half)) / 2
