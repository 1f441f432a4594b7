"""The search's own evidence: how the trials this search finished went from where they stood at epoch t to their
final, as a line in log-odds.

A prior fitted on other tasks knows how *their* curves rise; every trial this search finishes shows how curves of
*this* task do. Once :data:`MIN_TRIALS` have finished, the least-squares line logit(final) ~ a + b logit(level at
epoch t) through them predicts the final of a trial that stands at that level at epoch t, with the classical
prediction interval of a line fitted on n points: Student's t with n - 2 degrees of freedom, wider the further the
trial's level lies from theirs. Late in training the level says almost everything and the line is sharp; early it
says little and the line's residuals say so.

The finished trials are the ones the stopping rule let run, chosen on what their curves showed. A line of the final
*given* the level is still fair to a trial judged at that level (their selection depends on what the line
conditions on); a trial far below every finished one is an extrapolation, and the interval widens for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from clp_tune.stopping.context import level_at, logit

#: Finished trials before the line is used: with n - 2 = 3 degrees of freedom its t has a finite variance.
MIN_TRIALS = 5
#: Floor of the residual variance, in log-odds squared: finals that lie exactly on a line (all at 1.0, say) do not
#: make the next one certain.
_MIN_RESIDUAL = 1e-4


@dataclass(frozen=True)
class LinePrediction:
    """The line's predictive distribution of logit(final): mean, variance (of its Student t), and the number of
    finished trials behind it."""

    mean: float
    variance: float
    trials: int


@dataclass(frozen=True)
class _Fit:
    """The least-squares line through n points and what its prediction interval needs."""

    intercept: float
    slope: float
    residual: float  # the residual variance, on n - 2 degrees of freedom
    centre: float  # the points' mean level
    spread: float  # their sum of squared deviations from it
    n: int

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray) -> _Fit | None:
        """The line through (x, y); None when there are fewer than :data:`MIN_TRIALS` points or their x coincide."""
        if len(x) < MIN_TRIALS:
            return None
        centre, spread = float(x.mean()), float(((x - x.mean()) ** 2).sum())
        if spread < 1e-12:
            return None
        slope = float(((x - centre) * (y - y.mean())).sum()) / spread
        intercept = float(y.mean()) - slope * centre
        residual = max(float(((y - intercept - slope * x) ** 2).sum()) / (len(x) - 2), _MIN_RESIDUAL)
        return cls(intercept, slope, residual, centre, spread, len(x))


@dataclass
class _Points:
    """The (logit level at one epoch, logit final) pairs of the finished trials of one budget, gathered in order,
    and the line through them (refitted only when a pair is added)."""

    x: list[float] = field(default_factory=list)
    y: list[float] = field(default_factory=list)
    seen: int = 0  # finished trials looked at so far
    fit: _Fit | None = None


class SearchLine:
    """The line through this search's finished trials at each epoch (module docstring).

    Trials are only appended, so each epoch's points are gathered once and extended as trials finish.
    """

    def __init__(self) -> None:
        self._finished: list[tuple[Sequence[float | None], float, int]] = []  # (val_acc curve, final, budget)
        self._points: dict[tuple[int, int], _Points] = {}

    def add(self, val_acc: Sequence[float | None], budget: int) -> None:
        """Learn from a trial that ran its whole ``budget`` (its last val_acc is its final)."""
        self._finished.append((val_acc, float(val_acc[-1]), budget))

    def predict(self, level: float, epoch: int, budget: int) -> LinePrediction | None:
        """The predicted logit(final) of a trial of ``budget`` whose level at ``epoch`` is ``level``; None while fewer
        than :data:`MIN_TRIALS` finished trials of that budget have a level there, or their levels all coincide."""
        points = self._points.setdefault((epoch, budget), _Points())
        added = len(points.x)
        for curve, final, trial_budget in self._finished[points.seen :]:
            known = level_at(curve, epoch) if trial_budget == budget else math.nan
            if math.isfinite(known):
                points.x.append(float(logit(known)))
                points.y.append(float(logit(final)))
        points.seen = len(self._finished)
        if len(points.x) > added:
            points.fit = _Fit.of(np.asarray(points.x), np.asarray(points.y))
        fit = points.fit
        if fit is None or not math.isfinite(level):
            return None
        at, dof = float(logit(level)), fit.n - 2
        scale2 = fit.residual * (1 + 1 / fit.n + (at - fit.centre) ** 2 / fit.spread)
        return LinePrediction(fit.intercept + fit.slope * at, scale2 * dof / (dof - 2), fit.n)
