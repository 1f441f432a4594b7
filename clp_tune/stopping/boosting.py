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


@dataclass
class TreesWithError:
    """Trees of a target and trees of the size of their errors, fitted on ``columns`` (a trial's missing values
    filled with the training medians), as the predictor's models are asked about one trial.

    Args:
        columns: the feature columns, in the trees' order.
        medians: per column, the training median that fills a missing value.
        target: trees of the target.
        error: trees of |target - out-of-fold prediction|.
    """

    columns: list[str]
    medians: np.ndarray
    target: OneRow
    error: OneRow

    def predict(self, features: Mapping[str, float]) -> tuple[float, float]:
        """(target, std) for one trial: the error trees fit absolute errors, whose mean is sqrt(2 / pi) std for a
        normal."""
        x = np.array([features.get(c, math.nan) for c in self.columns], dtype=float)
        x = np.where(np.isnan(x), self.medians, x)
        return self.target.predict(x), math.sqrt(math.pi / 2) * max(self.error.predict(x), 0.0)
