"""Where a trial stands in its own search: features of its value at epoch t against the other trials at epoch t.

A prior fitted on other tasks cannot read absolute accuracies: 0.9 is poor on digits and good on a hard tabular
task. What transfers is the trial's position among the trials of *this* search at the same epoch -- its quantile,
its distance to the leaders and to the incumbent, in units of the search's own spread at that epoch -- and a
target in those units (:func:`scale`). Distances are taken between log-odds (:func:`logit`): 0.97 against 0.99
is as large a step as 0.5 against 0.75, and a prediction mapped back from log-odds never leaves [0, 1]. Trials of
one search share a budget, so they are compared epoch by epoch.

The other trials' curves are known up to where they are: a trial that has not reached epoch t yet is left out; a
trial stopped before t counts with its last value (it was judged hopeless, and leaving it out would make the
survivors look like the whole search).

A search's context is read at every result, and each read needs every other trial's level at one epoch: a
:class:`LevelCache` kept across reads computes each trial's level at each epoch once, so a read costs one lookup
per trial, not a pass over its curve.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from clp_tune.stopping.curves import SMOOTH

#: The k of "gap to the k-th best value at this epoch".
CONTEXT_K = 3
#: Fewest other trials at an epoch for the in-context features to mean anything (else they are NaN).
CONTEXT_MIN = 4
#: Floor of the search's spread in log-odds (about one validation sample in a hundred at 0.5): below it, gaps are
#: noise.
MIN_SPREAD = 0.05
_EDGE = 1e-3  # accuracies are clipped to [_EDGE, 1 - _EDGE] before their log-odds are taken
CONTEXT_FEATURES = (
    "ctx_quantile",
    "ctx_z",
    "ctx_gap_top",
    "ctx_gap_kth",
    "ctx_gap_incumbent",
    "ctx_incumbent_gain",
    "ctx_log_spread",
    "ctx_rise_z",
)

Curve = Sequence[float | None]


def level_at(curve: Curve, epoch: int) -> float:
    """Mean of the finite values of the last :data:`SMOOTH` epochs up to ``epoch`` (NaN where none is finite)."""
    values = [v for v in curve[max(0, epoch - SMOOTH) : epoch] if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


class LevelCache:
    """Each trial's :func:`level_at` at every epoch it has recorded, computed once per epoch.

    A curve is known by identity: a search's curves only grow by appending, and a trial whose epochs are recorded
    again (a resumed trial) gets a new list, whose levels are computed afresh.
    """

    def __init__(self) -> None:
        self._cached: dict[str, tuple[Curve, list[float]]] = {}

    def levels(self, trial_id: str, curve: Curve) -> list[float]:
        """``[level_at(curve, 1), ..., level_at(curve, len(curve))]``."""
        cached = self._cached.get(trial_id)
        if cached is None or cached[0] is not curve or len(cached[1]) > len(curve):
            cached = self._cached[trial_id] = (curve, [])
        levels = cached[1]
        levels.extend(level_at(curve, epoch) for epoch in range(len(levels) + 1, len(curve) + 1))
        return levels


@dataclass(frozen=True)
class SearchContext:
    """The other trials of a search as one trial's predictor sees them.

    Args:
        curves: trial id -> its val_acc per recorded epoch (index i: epoch i+1; None where not finite).
        finals: trial id -> final val_acc, for the trials that finished their budget.
        ended: trials that will report no more epochs (stopped, diverged): counted with their last value.
        cache: the search's levels kept across contexts (None: computed for this context alone).
    """

    curves: Mapping[str, Curve]
    finals: Mapping[str, float] = field(default_factory=dict)
    ended: frozenset[str] = frozenset()
    cache: LevelCache | None = field(default=None, compare=False, repr=False)
    _read: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, init=False, compare=False,
                                                            repr=False)  # fmt: skip
    _log_odds: dict[int, tuple[np.ndarray, np.ndarray, float | None]] = field(default_factory=dict, init=False,
                                                                       compare=False, repr=False)  # fmt: skip

    def values_at(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The other trials' levels at ``epoch`` and :data:`SMOOTH` epochs before (see the module docstring for
        who counts; an ended trial has stopped rising); read once per epoch (the arrays are shared: do not
        modify them)."""
        if epoch not in self._read:
            self._read[epoch] = self._values_at(epoch)
        return self._read[epoch]

    def log_odds_at(self, epoch: int) -> tuple[np.ndarray, np.ndarray, float | None]:
        """:meth:`values_at` in log-odds, and the search's spread of the first (:func:`search_spread`): a
        prediction reads them twice, for its unit and for the trial's standing."""
        if epoch not in self._log_odds:
            now, before = self.values_at(epoch)
            now = logit(now)
            self._log_odds[epoch] = (now, logit(before), search_spread(now))
        return self._log_odds[epoch]

    def _values_at(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        earlier = max(1, epoch - SMOOTH)
        now, before = [], []
        for trial_id, curve in self.curves.items():
            reached = len(curve) >= epoch
            if not reached and not (curve and trial_id in self.ended):
                continue
            if self.cache is not None:
                levels = self.cache.levels(trial_id, curve)
                now.append(levels[epoch - 1] if reached else levels[-1])
                before.append(levels[earlier - 1] if reached else levels[-1])
            else:
                now.append(level_at(curve, epoch if reached else len(curve)))
                before.append(level_at(curve, earlier) if reached else now[-1])
        keep = np.isfinite(now) & np.isfinite(before)
        return np.asarray(now, dtype=float)[keep], np.asarray(before, dtype=float)[keep]

    def incumbent(self) -> str | None:
        """The finished trial with the best final (ties: the first), or None."""
        return max(self.finals, key=lambda t: self.finals[t], default=None)


def logit(p: np.ndarray | float) -> np.ndarray:
    """Log-odds of accuracies, clipped away from 0 and 1 (a float is clipped without numpy's dispatch: a
    prediction takes a handful of them; NaN stays NaN either way)."""
    q = min(max(p, _EDGE), 1 - _EDGE) if isinstance(p, float) else np.clip(p, _EDGE, 1 - _EDGE)
    return np.log(q / (1 - q))


def expit(u: float) -> float:
    """The accuracy of log-odds ``u`` (exactly 0 below about -709, where exp overflows: not worth a warning)."""
    with np.errstate(over="ignore"):
        return float(1 / (1 + np.exp(-u)))


def scale(values: np.ndarray) -> float:
    """The search's spread at an epoch (of log-odds): the unit of every gap and of the target."""
    return max(float(np.std(values)), MIN_SPREAD)


def search_spread(log_odds: np.ndarray) -> float | None:
    """The search's spread at an epoch (:func:`scale` of the others' log-odds); None with fewer than
    :data:`CONTEXT_MIN` others, too few for a trial's standing among them to mean anything."""
    return scale(log_odds) if len(log_odds) >= CONTEXT_MIN else None


def context_features(curve: Curve, context: SearchContext | None) -> dict[str, float]:
    """In-context features of a trial whose val_acc so far is ``curve``; NaN where the search cannot say."""
    if context is None:
        return dict.fromkeys(CONTEXT_FEATURES, math.nan)
    epoch = len(curve)
    values, earlier, spread = context.log_odds_at(epoch)
    incumbent = context.incumbent()
    best = None if incumbent is None else (level_at(context.curves[incumbent], epoch), context.finals[incumbent])
    return _standing(curve, values, earlier, spread, best)


def standing(
    curve: Curve, values: np.ndarray, earlier: np.ndarray, incumbent: tuple[float, float] | None
) -> dict[str, float]:
    """:func:`context_features` from what they read of the search: the other trials' levels at the trial's epoch
    and :data:`SMOOTH` epochs before (:meth:`SearchContext.values_at`), and the incumbent's level at that epoch and
    its final (None: no trial has finished)."""
    values = logit(values)
    return _standing(curve, values, logit(earlier), search_spread(values), incumbent)


def _standing(
    curve: Curve,
    values: np.ndarray,
    earlier: np.ndarray,
    spread: float | None,
    incumbent: tuple[float, float] | None,
) -> dict[str, float]:
    """:func:`standing` from the others' levels in log-odds (``values``, ``earlier``) and their
    :func:`search_spread`."""
    out = dict.fromkeys(CONTEXT_FEATURES, math.nan)
    epoch = len(curve)
    level, before = level_at(curve, epoch), level_at(curve, max(1, epoch - SMOOTH))
    if spread is None or not math.isfinite(level) or not math.isfinite(before):
        return out
    level = float(logit(level))
    rises, rise = values - earlier, level - float(logit(before))
    ranked = np.sort(values)[::-1]
    out["ctx_quantile"] = float((np.sum(values < level) + 0.5 * np.sum(values == level)) / len(values))
    out["ctx_z"] = (level - float(np.mean(values))) / spread
    out["ctx_gap_top"] = (level - float(ranked[0])) / spread
    out["ctx_gap_kth"] = (level - float(ranked[min(CONTEXT_K, len(ranked)) - 1])) / spread
    out["ctx_log_spread"] = math.log10(spread)
    out["ctx_rise_z"] = (rise - float(np.mean(rises))) / scale(rises)
    if incumbent is not None:
        at_epoch, final = incumbent
        if math.isfinite(at_epoch):
            at_epoch = float(logit(at_epoch))
            out["ctx_gap_incumbent"] = (level - at_epoch) / spread
            out["ctx_incumbent_gain"] = (float(logit(final)) - at_epoch) / spread
    return out


class TaskLevels:
    """The levels of every trial of one task at every epoch, as a matrix (NaN past a trial's last epoch).

    The in-context model stands each bank trial, at each cut, among every other trial of its task: thousands of
    searches, each read at one epoch. A row slice reads one in a few array operations, where a
    :class:`SearchContext` of the other curves would loop over them in Python.
    """

    def __init__(self, curves: Sequence[Curve]):
        self._lengths = np.array([len(curve) for curve in curves], dtype=int)
        self._levels = np.full((len(curves), int(self._lengths.max(initial=0))), math.nan)
        for row, curve in enumerate(curves):
            self._levels[row, : len(curve)] = [level_at(curve, epoch) for epoch in range(1, len(curve) + 1)]

    def values_at(self, epoch: int, without: int) -> tuple[np.ndarray, np.ndarray]:
        """What :meth:`SearchContext.values_at` gives for a search of every trial but ``without``, none ended."""
        others = self._lengths >= epoch
        others[without] = False
        now, before = self._levels[others, epoch - 1], self._levels[others, max(1, epoch - SMOOTH) - 1]
        keep = np.isfinite(now) & np.isfinite(before)
        return now[keep], before[keep]
