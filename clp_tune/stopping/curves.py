"""Parametric learning-curve extrapolation: where a validation-accuracy curve is heading by the end of its budget.

It needs nothing but the curve itself, so it is the predictor's fallback before any trees are fitted, one of the
trees' features, and a baseline the scheduler benchmark compares the predictor with. Curves are indexed by the
fraction of the budget, so trials with different budgets compare.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: Epochs averaged into the "current level" of a curve.
SMOOTH = 3
#: Fewest epochs a curve is extrapolated from: a shape of three parameters needs three points.
MIN_EPOCHS = 3

_POW_C = np.geomspace(0.1, 3.0, 9)
_EXP_C = np.geomspace(0.5, 40.0, 9)


def _best_linear_fit(basis: np.ndarray, y: np.ndarray, at_end: np.ndarray) -> tuple[float, float]:
    """Least-squares y ~ a + b * basis[j] for every row j; returns (SSE, value at the budget end) of the best row."""
    centered = basis - basis.mean(axis=1, keepdims=True)
    yc = y - y.mean()
    var = (centered**2).sum(axis=1)
    b = np.divide(centered @ yc, var, out=np.zeros(len(basis)), where=var > 1e-12)
    a = y.mean() - b * basis.mean(axis=1)
    sse = ((y - a[:, None] - b[:, None] * basis) ** 2).sum(axis=1)
    j = int(np.argmin(sse))
    return float(sse[j]), float(a[j] + b[j] * at_end[j])


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
    x = np.arange(1, t + 1) / budget
    fits = [
        _best_linear_fit(x[None, :] ** -_POW_C[:, None], y, np.ones(len(_POW_C))),
        _best_linear_fit(np.exp(-_EXP_C[:, None] * x[None, :]), y, np.exp(-_EXP_C)),
        _best_linear_fit(np.log(x)[None, :], y, np.zeros(1)),
    ]
    sse = np.array([f[0] for f in fits])
    ends = np.clip([f[1] for f in fits], 0.0, 1.0)
    weights = 1.0 / (sse / t + 1e-4)
    weights /= weights.sum()
    mean = float(weights @ ends)
    return mean, float(np.sqrt(weights @ (ends - mean) ** 2))
