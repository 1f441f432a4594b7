"""The predictor's transferable model: a trial's final in units of its own search, from where it stands in it.

Features are the trial's position among the other trials of its search at the same epoch
(:mod:`clp_tune.stopping.context`), the scale-free features of its own trajectory (the loss's rise, the
learning-rate progress, the statistics) and its hyperparameters; levels, slopes and gaps in accuracy units are
left out, since they mean different things on different tasks. The target is the gain still to come in units
of the search at the cut epoch, in log-odds: (logit(final) - logit(current level)) / the others' spread, so the
same trees serve a task at 0.6 and one at 0.97, the prediction maps back to an accuracy with that search's own
spread, and where the trees know nothing a trial keeps the rank of its current level (anchoring on the search's
mean instead ranked worse than the last value on some held-out tasks).

Bank trials are compared only with trials of their own task. Which of the others have finished (and so which is
the incumbent) is drawn at random per trial, as a search sees it part-way; the draw is seeded, so fits stay
deterministic. The spread's trees are fitted on out-of-fold errors with one fold per task: a prior's errors on a
task it has not seen, which is how it is used (and widened to the worst such task, :func:`error_model`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

from clp_tune.stopping.boosting import TreesWithError, error_model, fitted_together, target_trees
from clp_tune.stopping.context import (
    CONTEXT_FEATURES,
    CONTEXT_MIN,
    SearchContext,
    TaskLevels,
    expit,
    level_at,
    logit,
    scale,
    standing,
)
from clp_tune.stopping.features import FEATURES, Trajectory, cut_epochs

#: Features on the task's own accuracy (or loss) scale -- levels, and slopes and gaps in accuracy units -- which do
#: not transfer between tasks (the in-context features carry them in the search's own units).
ABSOLUTE = frozenset({"val_acc_last", "val_acc_level", "val_acc_max", "curve_extrapolation", "val_loss_last",
                      "train_acc_last", "train_loss_last", "train_loss_mean", "val_acc_slope", "val_acc_jitter",
                      "curve_gain", "curve_disagreement", "generalization_gap", "train_acc_slope"})  # fmt: skip
COLUMNS = tuple(c for c in FEATURES if c not in ABSOLUTE) + CONTEXT_FEATURES


def spread_at(epoch: int, context: SearchContext | None) -> float | None:
    """The search's spread of log-odds at ``epoch`` (the target's unit); None when too few others are there."""
    return None if context is None else spread_of(context.values_at(epoch)[0])


def spread_of(values: np.ndarray) -> float | None:
    """The spread of log-odds of the other trials' levels ``values``; None when they are too few."""
    return scale(logit(values)) if len(values) >= CONTEXT_MIN else None


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
        xs, ys, task_of_row, trial_of_row = [], [], [], []
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
                for epoch, row in zip(cut_epochs(trajectory.budget), cuts, strict=True):
                    values, earlier = levels.values_at(epoch, without=i)
                    spread = spread_of(values)
                    if spread is None:  # non-finite curves left too few others
                        continue
                    best = (level_at(curves[incumbent], epoch), finals[incumbent])
                    features = {**row, **standing(curves[i][:epoch], values, earlier, best)}
                    xs.append([features[c] for c in COLUMNS])
                    ys.append((float(logit(trajectory.final)) - float(logit(row["val_acc_level"]))) / spread)
                    task_of_row.append(t)
                    trial_of_row.append(trial)
                trial += 1
        self._x = np.asarray(xs, dtype=float).reshape(len(xs), len(COLUMNS))
        self._y = np.asarray(ys, dtype=float)
        self._task = np.asarray(task_of_row, dtype=int)
        self._trial = np.asarray(trial_of_row, dtype=int)
        self._fits: dict[frozenset[str], TreesWithError | None] = {}

    @property
    def usable(self) -> bool:
        """Whether any task had enough trials to give the model examples."""
        return len(self._y) > 0

    def _fit(self, available: frozenset[str]) -> TreesWithError | None:
        index = [i for i, c in enumerate(COLUMNS) if c in available and not np.all(np.isnan(self._x[:, i]))]
        if not index or not self.usable:
            return None
        x = self._x[:, index]
        medians = np.nanmedian(x, axis=0)
        x = np.where(np.isnan(x), medians, x)
        folds = self._task if len(np.unique(self._task)) > 1 else self._trial % 3
        final, error = fitted_together(  # the bank alone: the same in every search, so both are cached
            lambda: target_trees(x, self._y, self.seed, cache=True),
            lambda: error_model(x, self._y, folds, self.seed, cache=True),
        )
        return TreesWithError([COLUMNS[i] for i in index], medians, final, error)

    def predict(self, features: Mapping[str, float], spread: float) -> tuple[float, float] | None:
        """(mean, std) of the final val_acc of a trial with ``features`` in a search of ``spread``
        (:func:`spread_at`); None when no model fits its features."""
        available = frozenset(c for c in COLUMNS if not math.isnan(features.get(c, math.nan)))
        if available not in self._fits:
            self._fits[available] = self._fit(available)
        fit = self._fits[available]
        if fit is None:
            return None
        final, error = fit.predict(features)
        centre, half = float(logit(features["val_acc_level"])) + spread * final, spread * error
        return expit(centre), (expit(centre + half) - expit(centre - half)) / 2
