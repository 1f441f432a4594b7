"""Gradient-boosted trees as every model of the predictor uses them: fitted by scikit-learn, asked one row at a time.

The scheduler predicts one trial at a time, on Tune's driver, at every result. scikit-learn's ``predict``
checks its input on every call (dtype, finiteness, whether it is a dataframe), which costs several times the walk
down the trees itself; so a fitted ensemble is flattened once into arrays (:class:`OneRow`) that walk every tree
at once, one level per step, with scikit-learn's own comparisons (the row in float32 against the thresholds).
Fits on a prior's bank alone are the same in every search, so they are kept on disk
(:mod:`clp_tune.stopping.fit_cache`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from clp_tune.stopping import fit_cache
from clp_tune.stopping.calibration import COVERAGE, NOMINAL

T = TypeVar("T")

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

    Its trees are flattened into arrays of equal width (:meth:`of`), which are also what the fit cache keeps
    (:meth:`arrays`).

    Args:
        steps: the deepest tree's depth.
        feature, threshold, left, right, value: per tree and node, the split's feature and threshold, the children
            (a leaf, and padding, leads to itself) and the leaf value.
        rate: the learning rate that scales the leaf values.
        offset: the prediction of a model with no trees.

    Example:
        >>> import numpy as np
        >>> x = np.random.default_rng(0).normal(size=(200, 3))
        >>> model = trees(20, 2, 0.1, seed=0).fit(x, x[:, 0])
        >>> bool(np.isclose(OneRow.of(model).predict(x[0]), model.predict(x[:1])[0]))
        True
    """

    def __init__(
        self, steps: int, feature: np.ndarray, threshold: np.ndarray, left: np.ndarray, right: np.ndarray,
        value: np.ndarray, rate: float, offset: float,
    ):  # fmt: skip
        self._steps = int(steps)
        self._feature, self._threshold, self._left, self._right = feature, threshold, left, right
        self._value = value
        self._rows = np.arange(len(value))
        self._rate = float(rate)
        self._offset = float(offset)

    @classmethod
    def of(cls, model: Any) -> OneRow:
        """The flattened trees of a fitted regressor (squared-error loss: its prediction is an offset plus the
        scaled leaf values)."""
        grown = [estimator[0].tree_ for estimator in model.estimators_]
        width = max(tree.node_count for tree in grown)
        feature = np.zeros((len(grown), width), dtype=np.intp)
        threshold = np.zeros((len(grown), width))
        left = np.tile(np.arange(width), (len(grown), 1))
        right = left.copy()
        value = np.zeros((len(grown), width))
        for i, tree in enumerate(grown):
            n, split = tree.node_count, tree.children_left >= 0
            feature[i, :n] = np.where(split, tree.feature, 0)
            threshold[i, :n] = tree.threshold
            left[i, :n] = np.where(split, tree.children_left, np.arange(n))
            right[i, :n] = np.where(split, tree.children_right, np.arange(n))
            value[i, :n] = tree.value[:, 0, 0]
        flat = cls(max(tree.max_depth for tree in grown), feature, threshold, left, right, value,
                   model.learning_rate, 0.0)  # fmt: skip
        probe = np.zeros((1, model.n_features_in_))
        flat._offset = float(model.predict(probe)[0]) - flat._sum(probe[0])
        return flat

    def arrays(self) -> dict[str, np.ndarray]:
        """The model as arrays (the fit cache's form), the inverse of :meth:`from_arrays`."""
        return {"steps": np.asarray(self._steps), "feature": self._feature, "threshold": self._threshold,
                "left": self._left, "right": self._right, "value": self._value, "rate": np.asarray(self._rate),
                "offset": np.asarray(self._offset)}  # fmt: skip

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> OneRow:
        return cls(**arrays)

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

    def arrays(self) -> dict[str, np.ndarray]:
        """The model as arrays (the fit cache's form), the inverse of :meth:`from_arrays`."""
        return {**self.trees.arrays(), "tail": np.asarray(self.tail)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ErrorModel:
        return cls(OneRow.from_arrays({name: value for name, value in arrays.items() if name != "tail"}),
                   float(arrays["tail"]))  # fmt: skip


def side_by_side(fit: Callable[[int], T], items: Iterable[int]) -> list[T]:
    """``[fit(i) for i in items]``, run in threads, one per core this process may use: a search's first fits hold
    Tune's driver while its trials wait for it, so the other cores idle, and scikit-learn builds trees without the
    GIL. Each fit has its own seed and rows, so the results are those of a loop."""
    items = list(items)
    workers = min(len(items), len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    if workers <= 1:
        return [fit(i) for i in items]
    with ThreadPoolExecutor(workers) as pool:
        return list(pool.map(fit, items))


def fitted_together(target: Callable[[], OneRow], error: Callable[[], T]) -> tuple[OneRow, T]:
    """``(target(), error())``, the error model fitted in a thread while the target's trees are fitted here: they
    share no data, and the target's one fit uses a core the error model's folds leave idle as they end."""
    with ThreadPoolExecutor(1) as pool:
        spread = pool.submit(error)
        return target(), spread.result()


def target_trees(x: np.ndarray, y: np.ndarray, seed: int, weight: np.ndarray | None = None, *, cache: bool) -> OneRow:
    """The predictor's trees of a target on ``x`` (200 of depth 4), from the fit cache
    (:mod:`~clp_tune.stopping.fit_cache`) where ``cache`` allows and these rows were fitted before."""

    def fit() -> OneRow:
        return OneRow.of(trees(200, 4, 0.05, seed).fit(x, y, sample_weight=weight))

    return fit_cache.cached("target", fit, OneRow.arrays, OneRow.from_arrays, x, y, weight, seed, use=cache)


def out_of_fold(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int, weight: np.ndarray | None = None, *, cache: bool
) -> np.ndarray:
    """Each row's prediction by trees of ``y`` fitted on the other ``folds`` (what a prior predicts of a task it has
    not seen, with one fold per task), the folds fitted side by side; from the fit cache where ``cache`` allows."""

    def fit() -> np.ndarray:
        splits = [(folds == fold, folds != fold) for fold in np.unique(folds)]

        def one_fold(k: int) -> np.ndarray:
            (test, train), sample = splits[k], None if weight is None else weight[splits[k][1]]
            return trees(60, 3, 0.1, seed + k).fit(x[train], y[train], sample_weight=sample).predict(x[test])

        predicted = np.zeros_like(y)
        for (test, _), values in zip(splits, side_by_side(one_fold, range(len(splits))), strict=True):
            predicted[test] = values
        return predicted

    return fit_cache.cached("out-of-fold", fit, lambda a: {"predicted": a}, lambda a: a["predicted"], x, y, folds,
                            weight, seed, use=cache)  # fmt: skip


def error_model(
    x: np.ndarray, y: np.ndarray, folds: np.ndarray, seed: int, weight: np.ndarray | None = None, *, cache: bool,
    predicted: np.ndarray | None = None,
) -> ErrorModel:  # fmt: skip
    """The :class:`ErrorModel` of a model of ``y`` on ``x`` from its out-of-fold errors by ``folds``; from the fit
    cache where ``cache`` allows and these rows were fitted before.

    The model is trees of ``y`` unless ``predicted`` gives its out-of-fold predictions (a model built on such trees,
    :class:`~clp_tune.stopping.incontext.InContextModel`'s). Each fold's widening factor compares its errors with
    error trees fitted on the other folds, so that both are what a task the prior has not seen meets.
    """

    def fit() -> ErrorModel:
        splits = [(folds == fold, folds != fold) for fold in np.unique(folds)]
        samples = [None if weight is None else weight[train] for _, train in splits]
        guesses = out_of_fold(x, y, folds, seed, weight, cache=False) if predicted is None else predicted
        size = np.abs(y - guesses)

        def widening(k: int) -> float:
            (test, train), sample = splits[k], samples[k]
            unseen = trees(50, 2, 0.1, seed + 7 + k).fit(x[train], size[train], sample_weight=sample)
            z = size[test] / np.maximum(ABS_TO_STD * unseen.predict(x[test]), 1e-9)
            return float(np.quantile(z, COVERAGE)) / NOMINAL

        tails = side_by_side(widening, range(len(splits)))
        return ErrorModel(OneRow.of(trees(50, 2, 0.1, seed + 7).fit(x, size, sample_weight=weight)), max(1.0, *tails))

    given = () if predicted is None else (predicted,)  # the keys of fits of trees' own errors stay as they were
    return fit_cache.cached("error", fit, ErrorModel.arrays, ErrorModel.from_arrays, x, y, folds, weight, seed,
                            COVERAGE, *given, use=cache)  # fmt: skip


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
