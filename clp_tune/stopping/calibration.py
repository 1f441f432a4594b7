"""Online recalibration of the predictor from this search's finished trials (split conformal, shrunk to the prior).

A prior fitted on other tasks has a spread that is only a guess on a new one. Every trial this search finishes was
unseen by the model that judges it, so its standardized residual (final - mean) / std at each budget fraction is
an exchangeable calibration score: the :data:`COVERAGE` quantile of |score| over the finished trials is the
factor that makes that interval cover as much of them (split conformal prediction). While few trials have
finished, the quantile is shrunk towards the prior's own (the normal's), and the bias towards none, with
``strength`` pseudo-observations.

Under early stopping the finished trials are the promising ones, so the correction is tuned where the decisions
are close. Each is scored among all the trials of the search as it stood when it finished, not among the finished
ones alone: those survivors make every trial look worse than it looked to its own decisions, and a prior that is
optimistic on a new task (one whose curves fall back after a peak, say) would then seem about right. Scores are
kept per (model, fraction bin): the curve fallback and the fitted models err differently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm

from clp_tune.stopping.features import FRACTIONS

#: Coverage of the interval the calibration makes honest. The stopping rule reads the predictive distribution's
#: tails (pause below P = 5 %, stop for good below 1 %), so the spread is matched to the residuals out there: a
#: 90 % interval made honest let a narrow spread stop the best trial of a search as hopeless.
COVERAGE = 0.98
MIN_STD = 0.004  # one validation sample in a few hundred: below this a spread is false precision
NOMINAL = float(norm.ppf(0.5 + COVERAGE / 2))  # the normal's half-width of the COVERAGE interval, in stds


def fraction_bin(fraction: float) -> int:
    """The nearest of :data:`~clp_tune.stopping.features.FRACTIONS` (residuals are pooled per bin; ties: the
    first)."""
    return min(range(len(FRACTIONS)), key=lambda i: abs(fraction - FRACTIONS[i]))


@dataclass
class ConformalCalibration:
    """Bias and spread correction per (model, fraction bin), from standardized residuals of finished trials.

    Each bin's correction is computed once per set of scores (every prediction reads one, and scores come only as
    trials finish)."""

    strength: float = 5.0
    scores: dict[tuple[str, int], list[float]] = field(default_factory=dict)
    _corrections: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict, repr=False,
                                                                      compare=False)  # fmt: skip

    def add(self, model: str, fraction: float, error: float, std: float) -> None:
        """Keep the residual ``error`` = final - predicted mean of a prediction with spread ``std``."""
        key = (model, fraction_bin(fraction))
        self.scores.setdefault(key, []).append(error / max(std, MIN_STD))
        self._corrections.pop(key, None)

    def correct(self, model: str, fraction: float, mean: float, std: float) -> tuple[float, float]:
        """The prediction (mean, std) of ``model`` at ``fraction``, recalibrated."""
        key = (model, fraction_bin(fraction))
        if not self.scores.get(key):
            return mean, std
        if key not in self._corrections:
            self._corrections[key] = self._correction(self.scores[key])
        bias, factor = self._corrections[key]
        return mean + bias * std, std * factor

    def _correction(self, seen: list[float]) -> tuple[float, float]:
        """(bias in units of std, spread factor) from the standardized residuals ``seen``."""
        z = np.asarray(seen)
        n = len(z)
        bias = float(z.sum()) / (n + self.strength)
        level = min(1.0, math.ceil((n + 1) * COVERAGE) / n)  # the split-conformal rank
        empirical = float(np.quantile(np.abs(z - bias), level))
        return bias, (n * empirical + self.strength * NOMINAL) / (n + self.strength) / NOMINAL
