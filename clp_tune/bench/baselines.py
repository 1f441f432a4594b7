"""The schedulers the benchmark compares, each under its own label, built the same way for every order.

A learned stopper is only worth its complexity if it beats the simple rules at their usual settings, so the
lineup has the stock rules at Ray's defaults *and* at this product's settings (which were chosen on a bank and
could flatter), the top-k-after-one-epoch rule of Egele et al. 2023 ("one epoch is all you need"), the δ rule on
curve extrapolation alone (LC-PFN-style: no prior, nothing learned), the trajectory scheduler under each
prior, and the same rule told every trial's true final (not a method: what the rule's own mechanics spend when
its predictions are exact). Everything Ray or the product ships is built by
:func:`clp_tune.stopping.factory.build_scheduler`, so the benchmark cannot drift from what a search runs; only the
baselines the product does not ship live here.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from clp_tune.stopping.calibration import MIN_STD
from clp_tune.stopping.factory import build_scheduler
from clp_tune.stopping.features import History, Trajectory
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, Predictor

#: Ray's defaults: ASHA grace_period 1, reduction_factor 4; the median rule's grace_period 60 (time units).
RAY_ASHA_GRACE, RAY_ASHA_REDUCTION, RAY_MEDIAN_GRACE = 1, 4.0, 60
#: Top-k after one epoch keeps this fraction of the epoch-1 values seen so far (at least one): a tenth, fixed
#: before any bank was replayed (Egele et al. train a small top-k of each batch to the end).
TOP_K_FRACTION = 0.1
#: The row of the trajectory rule with exact predictions (:class:`FinalsOracle`).
ORACLE_ROW = "traj-oracle"


class TopKAfterFirstEpoch(FIFOScheduler):
    """Egele et al. 2023's rule, online: a trial goes on past its first epoch only if its epoch-1 metric is among
    the best ``ceil(fraction x n)`` of the n epoch-1 values seen so far (its own included); then it runs to the end.

    The paper trains every configuration for one epoch and then the top k fully; a search that starts trials as
    slots free up cannot wait for all first epochs, so the rank is taken among those seen so far.
    """

    def __init__(self, fraction: float = TOP_K_FRACTION, metric: str = "val_acc", time_attr: str = "epoch"):
        if not 0 < fraction <= 1:
            raise ValueError(f"need fraction in (0, 1], got fraction={fraction}")
        super().__init__()
        self.fraction = fraction
        self._metric = metric
        self._time_attr = time_attr
        self.first: list[float] = []

    def set_search_properties(self, metric: str | None, mode: str | None, **spec: Any) -> bool:
        return metric in (None, self._metric) and mode in (None, "max")

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if result.get(self._time_attr) != 1 or self._metric not in result:
            return TrialScheduler.CONTINUE
        value = float(result[self._metric])
        value = value if math.isfinite(value) else -math.inf
        self.first.append(value)
        k = max(1, math.ceil(self.fraction * len(self.first)))
        better = sum(other > value for other in self.first)
        return TrialScheduler.CONTINUE if better < k else TrialScheduler.STOP


class CurveOnlyPredictor:
    """The predictor's own parametric-curve path and nothing else: no prior, no trees, no online learning.

    A :class:`~clp_tune.stopping.predictor.FinalAccuracyPredictor` that never has enough trials to fit trees
    (``min_trials`` unreachable) predicts from the curve extrapolation alone; ignoring finished trials also keeps
    it from recalibrating on the search, so the δ rule judges each curve by its own shape, as LC-PFN does. Its
    prediction is then a function of the val_acc curve and the budget alone, so it is computed once per curve
    (:func:`_curve_only`) for every run of a benchmark (each order and worker count replays the same curves).
    """

    def predict(self, history: History, config: Mapping[str, Any], budget: int) -> Prediction:
        return _curve_only(tuple(history["val_acc"]), budget)

    def observe_finished(self, rows: pd.DataFrame | Sequence[Trajectory]) -> None:
        """Learns nothing (see the class docstring)."""


@functools.lru_cache(maxsize=1 << 15)  # a bank's trials at every epoch (120 x 100), several banks a process
def _curve_only(val_acc: tuple[float, ...], budget: int) -> Prediction:
    return _CURVE.predict({"val_acc": list(val_acc)}, {}, budget)


#: Never fits trees and never learns (see :class:`CurveOnlyPredictor`), so one serves every run.
_CURVE = FinalAccuracyPredictor(bank=None, refit_every=0, min_trials=sys.maxsize)


class FinalsOracle:
    """Predicts each trial's true final, read from the bank it replays, at the narrowest spread a prediction has.

    Not a method: with exact predictions the trajectory rule still runs every trial to its grace point, every
    trial that beats the finals so far to its end, and a probe epoch per paused trial. What that costs is the
    part of a row's epochs that a better predictor would not save under these options. It is not a strict floor:
    a predictor that errs can spend less by stopping a trial that would have beaten the finals so far but not the
    best.

    Args:
        finals: trial id -> its final val_acc (the replayed configs carry ``trial_id``).
    """

    def __init__(self, finals: Mapping[str, float]):
        self.finals = {str(k): float(v) for k, v in finals.items()}

    def predict(self, history: History, config: Mapping[str, Any], budget: int) -> Prediction:
        return Prediction(self.finals[str(config["trial_id"])], MIN_STD)

    def observe_finished(self, rows: pd.DataFrame | Sequence[Trajectory]) -> None:
        """Learns nothing: it already knows."""


@dataclass(frozen=True)
class Entry:
    """One row of the benchmark's tables: a label, what it is, and how to build a fresh scheduler for one order."""

    name: str
    description: str
    build: Callable[[], TrialScheduler]
    trajectory: bool = False  # a trajectory scheduler (its predictor is asked on every result)


def lineup(
    budget: int,
    priors: Mapping[str, tuple[str, Callable[[], Predictor]]],
    trajectory_options: Mapping[str, Any] | None = None,
    top_k_fraction: float = TOP_K_FRACTION,
    finals: Mapping[str, float] | None = None,
) -> list[Entry]:
    """Every scheduler the benchmark runs on trials of ``budget`` epochs.

    Args:
        budget: the bank's budget T (ASHA's max_t; the tenth-of-budget grace periods).
        priors: trajectory scheduler rows: name -> (description, the predictor with its prior), the predictor
            read when a scheduler is built (a benchmark fits the priors after making the lineup).
        trajectory_options: TrajectoryScheduler options for the δ rule and every trajectory row.
        top_k_fraction: the top-k rule's fraction.
        finals: the bank's true finals by trial id, for the oracle row (last); None: no oracle row.
    """
    tenth = max(1, budget // 10)
    options = dict(trajectory_options or {})

    def stock(kind: str, grace: int, reduction: float = 3.0) -> Callable[[], TrialScheduler]:
        return lambda: build_scheduler(kind, budget, grace_period=grace, reduction_factor=reduction)

    def trajectory(predictor: Callable[[], Predictor]) -> Callable[[], TrialScheduler]:
        return lambda: build_scheduler("trajectory", budget, trajectory_options=options, predictor=predictor())

    entries = [
        Entry("fifo", "no stopping", lambda: build_scheduler("fifo", budget)),
        Entry("asha-ray", f"ASHA at Ray's defaults: grace {RAY_ASHA_GRACE}, reduction factor {RAY_ASHA_REDUCTION:g}",
              stock("asha", RAY_ASHA_GRACE, RAY_ASHA_REDUCTION)),
        Entry("asha-g1-r3", f"ASHA, grace {RAY_ASHA_GRACE}, reduction factor 3", stock("asha", RAY_ASHA_GRACE)),
        Entry("asha-t10-r3", "ASHA, grace T/10, reduction factor 3 (the product's setting)", stock("asha", tenth)),
        Entry("median-ray", f"median stopping rule at Ray's default grace ({RAY_MEDIAN_GRACE} epochs)",
              stock("median", RAY_MEDIAN_GRACE)),
        Entry("median-t10", "median stopping rule, grace T/10 (the product's setting)", stock("median", tenth)),
        Entry("top-k-1ep", f"continue past epoch 1 only in the top {top_k_fraction:.0%} of epoch-1 values so far "
              "(Egele et al. 2023)", lambda: TopKAfterFirstEpoch(top_k_fraction)),
        Entry("delta-curve", "the trajectory rule on curve extrapolation alone (LC-PFN-style)",
              trajectory(CurveOnlyPredictor), trajectory=True),
    ]  # fmt: skip
    entries += [Entry(name, text, trajectory(p), trajectory=True) for name, (text, p) in priors.items()]
    if finals is not None:
        exact = "the trajectory rule told every trial's true final (exact predictions; not a method)"
        entries.append(Entry(ORACLE_ROW, exact, trajectory(lambda: FinalsOracle(finals)), trajectory=True))
    return entries
