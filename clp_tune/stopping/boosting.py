"""Gradient-boosted trees as every model of the predictor uses them: fitted by scikit-learn, asked one row at a time.

The scheduler predicts one trial at a time, on Tune's driver, at every result. scikit-learn's ``predict``
checks its input on every call (dtype, finiteness, whether it is a dataframe), which costs several times the walk
down the trees itself; so a fitted ensemble is flattened once into arrays (:class:`OneRow`) that walk every tree
at once, one level per step, with scikit-learn's own comparisons (the row in float32 against the thresholds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from clp_tune.stopping.calibration import COVERAGE, NOMINAL

#: A normal's std over its mean absolute deviation: error trees fit absolute errors, the spread is a std.
ABS_TO_STD = math.sqrt(math.pi / 2)


def trees(n_estimators: int, depth: int, learning_rate: float, seed: int) -> Any:
    """An unfitted regressor: plain (not histogram) boosting, whose predictions start no threads; row and feature
    subsampling keep a fit on a few thousand rows around a second."""
    from sklearn.ensemble import GradientBoostingRegressor

    return GradientBoostingRegressor(
        n_estimators=n_estimators, max_depth=depth, learning_rate=learning_rate, subsample=0.7, max_features=0.5,
        min_samples_leaf=8, random_state=seed,
    )  # fmt: skip


class OneRow:
    """A fitted ``GradientBoostingRegressor`` that predicts one row as it does, without its per-call checks.

    Args:
        model: the fitted regressor (squared-error loss: its prediction is an offset plus the scaled leaf values).

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 3))
        >>> model = trees(20, 2, 0.1, seed=0).fit(x, x[:, 0])
        >>> bool(np.isclose(OneRow(model).predict(x[0]), model.predict(x[:1])[0]))
        True
    """

    def __init__(self, model: Any):
        grown = [estimator[0].tree_ for estimator in model.estimators_]
        width = max(tree.node_count for tree in grown)
        self._steps = max(tree.max_depth for tree in grown)
        self._feature = np.zeros((len(grown), width), dtype=np.intp)
        self._threshold = np.zeros((len(grown), width))
        self._left = np.tile(np.arange(width), (len(grown), 1))  # a leaf (and padding) leads to itself
        self._right = self._left.copy()
        self._value = np.zeros((len(grown), width))
        for i, tree in enumerate(grown):
            n, split = tree.node_count, tree.children_left >= 0
            self._feature[i, :n] = np.where(split, tree.feature, 0)
            self._threshold[i, :n] = tree.threshold
            self._left[i, :n] = np.where(split, tree.children_left, np.arange(n))
            self._right[i, :n] = np.where(split, tree.children_right, np.arange(n))
            self._value[i, :n] = tree.value[:, 0, 0]
        self._rows = np.arange(len(grown))
        self._rate = float(model.learning_rate)
        probe = np.zeros((1, model.n_features_in_))
        self._offset = float(model.predict(probe)[0]) - self._sum(probe[0])

    def _sum(self, row: np.ndarray) -> float:
        x = np.asarray(row, dtype=np.float32).astype(float)
        node = np.zeros(len(self._rows), dtype=np.intp)
        for _ in range(self._steps):
            left = x[self._feature[self._rows, node]] <= self._threshold[self._rows, node]
            node = np.where(left, self._left[self._rows, node], self._right[self._rows, node])
        return self._rate * float(self._value[self._rows, node].sum())

    def predict(self, row: np.ndarray) -> float:
        """The model's prediction for one row of features (no NaN: the callers fill gaps with medians)."""
        return self._offset + self._sum(row)


@dataclass(frozen=True)
class ErrorModel:
    """Trees of a model's absolute out-of-fold errors, and how far to widen them so that their tails hold on a fold
    (a task) they have not seen.

    The stopping rule reads the tails of a prediction (pause below 5 %, stop below 1 %), and a prior's errors on a
    new task are not those of an average row: a task whose curves all rise further than the prior's tasks' is off
    by the same sign in every row. So the spread is widened by the largest factor any one held-out task needed for
    its errors to fall within the :data:`~clp_tune.stopping.calibration.COVERAGE` interval (never narrowed).

    Args:
        trees: trees of |target - out-of-fold prediction| (a mean absolute error: :data:`ABS_TO_STD` makes it a std).
        tail: the widening factor (>= 1).
    """

    trees: OneRow
    tail: float

    def std(self, row: np.ndarray) -> float:
        return self.tail * ABS_TO_STD * max(self.trees.predict(row), 0.0)


def error_model(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int, weight: np.ndarray | None = None
) -> ErrorModel:
    """The :class:`ErrorModel` of trees of ``y`` on ``x``, from their out-of-fold residuals by ``folds``.

    Each fold's residuals come from trees fitted on the other folds; its widening factor compares them with error
    trees fitted on the other folds too, so that both are what a task the prior has not seen meets.
    """
    splits = [(folds == fold, folds != fold) for fold in np.unique(folds)]
    samples = [None if weight is None else weight[train] for _, train in splits]
    residual = np.zeros_like(y)
    for k, ((test, train), sample) in enumerate(zip(splits, samples, strict=True)):
        model = trees(60, 3, 0.1, seed + k).fit(x[train], y[train], sample_weight=sample)
        residual[test] = y[test] - model.predict(x[test])
    size = np.abs(residual)
    tail = 1.0
    for k, ((test, train), sample) in enumerate(zip(splits, samples, strict=True)):
        unseen = trees(50, 2, 0.1, seed + 7 + k).fit(x[train], size[train], sample_weight=sample).predict(x[test])
        z = size[test] / np.maximum(ABS_TO_STD * unseen, 1e-9)
        tail = max(tail, float(np.quantile(z, COVERAGE)) / NOMINAL)
    return ErrorModel(OneRow(trees(50, 2, 0.1, seed + 7).fit(x, size, sample_weight=weight)), tail)


@dataclass
class TreesWithError:
    """Trees of a target and trees of the size of their errors, fitted on ``columns`` (a trial's missing values
    filled with the training medians), as the predictor's models are asked about one trial.

    Args:
        columns: the feature columns, in the trees' order.
        medians: per column, the training median that fills a missing value.
        target: trees of the target.
        error: the size of its errors (:func:`error_model`).
    """

    columns: list[str]
    medians: np.ndarray
    target: OneRow
    error: ErrorModel

    def predict(self, features: Mapping[str, float]) -> tuple[float, float]:
        """(target, std) for one trial."""
        x = np.array([features.get(c, math.nan) for c in self.columns], dtype=float)
        x = np.where(np.isnan(x), self.medians, x)
        return self.target.predict(x), self.error.std(x)
