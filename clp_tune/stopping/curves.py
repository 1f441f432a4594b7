"""Parametric learning-curve extrapolation: where a validation-accuracy curve is heading by the end of its budget.

It needs nothing but the curve itself, so it is the predictor's fallback before any trees are fitted, one of the
trees' features, and a baseline the scheduler benchmark compares the predictor with. Curves are indexed by the
fraction of the budget, so trials with different budgets compare.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

#: Epochs averaged into the "current level" of a curve.
SMOOTH = 3
#: Fewest epochs a curve is extrapolated from: a shape of three parameters needs three points.
MIN_EPOCHS = 3

_POW_C = np.geomspace(0.1, 3.0, 9)
_EXP_C = np.geomspace(0.5, 40.0, 9)


@dataclass(frozen=True)
class _Shape:
    """A family of curves y = a + b * basis[j] on the epochs seen (row j: one value of the shape's exponent), with
    what a least-squares fit needs of it that does not depend on y."""

    basis: np.ndarray
    mean: np.ndarray
    centered: np.ndarray
    var: np.ndarray
    fitted: np.ndarray  # the rows whose basis is not flat (a flat row gets b = 0)
    at_end: np.ndarray  # basis[j] at the end of the budget

    @classmethod
    def of(cls, basis: np.ndarray, at_end: np.ndarray) -> _Shape:
        mean = basis.mean(axis=1)
        centered = basis - mean[:, None]
        var = (centered**2).sum(axis=1)
        arrays = (basis, mean, centered, var, var > 1e-12, at_end)
        for array in arrays:
            array.flags.writeable = False  # shared by every curve of this length
        return cls(*arrays)

    def best_fit(self, y: np.ndarray, y_mean: float) -> tuple[float, float]:
        """Least-squares y ~ a + b * basis[j] for every row j (``y_mean``: y's mean); (SSE, value at the budget's
        end) of the best row."""
        b = np.divide(self.centered @ (y - y_mean), self.var, out=np.zeros(len(self.basis)), where=self.fitted)
        a = y_mean - b * self.mean
        residuals = y - a[:, None]
        residuals -= b[:, None] * self.basis
        residuals *= residuals
        sse = residuals.sum(axis=1)
        j = int(np.argmin(sse))
        return float(sse[j]), float(a[j] + b[j] * self.at_end[j])


@functools.lru_cache(maxsize=1024)
def _shapes(epochs: int, budget: int) -> tuple[_Shape, _Shape, _Shape]:
    """The power-law, exponential and logarithmic families on epochs 1..``epochs`` of ``budget``: the same for every
    curve of that length, and the predictor extrapolates thousands (every bank trial at every cut)."""
    x = np.arange(1, epochs + 1) / budget
    return (
        _Shape.of(x[None, :] ** -_POW_C[:, None], np.ones(len(_POW_C))),
        _Shape.of(np.exp(-_EXP_C[:, None] * x[None, :]), np.exp(-_EXP_C)),
        _Shape.of(np.log(x)[None, :], np.zeros(1)),
    )


def curve_extrapolation(val_acc: Sequence[float], budget: int) -> tuple[float, float]:
    """Extrapolate a validation-accuracy curve to the end of its budget.

    Fits y = a + b*x^-c (power law), y = a + b*exp(-c*x) (exponential, c on a grid) and y = a + b*log(x), with x
    the fraction of the budget, and averages the three end values weighted by 1 / (mean squared error + noise
    floor). Returns (extrapolated final accuracy, disagreement between the shapes). With fewer than
    :data:`MIN_EPOCHS` there is nothing to fit: the recent level is returned with zero disagreement.
    """
    y = np.asarray(val_acc, dtype=float)
    t = len(y)
    if t < MIN_EPOCHS:
        return float(y[-SMOOTH:].mean()), 0.0
    y_mean = y.mean()
    fits = [shape.best_fit(y, y_mean) for shape in _shapes(t, budget)]
    sse = np.array([f[0] for f in fits])
    ends = np.clip([f[1] for f in fits], 0.0, 1.0)
    weights = 1.0 / (sse / t + 1e-4)
    weights /= weights.sum()
    mean = float(weights @ ends)
    return mean, float(np.sqrt(weights @ (ends - mean) ** 2))
