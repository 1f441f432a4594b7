"""The one place that builds a trial scheduler, for a search and for the scheduler benchmark alike.

A benchmark that built its own ASHA or median rule could drift from what a search runs and compare the wrong
settings; both go through :func:`build_scheduler`. Ray is imported only when a scheduler is built, so importing
this module (``clp_tune.search`` does) stays cheap.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clp_tune.vocabulary import SCHEDULER_TYPES

if TYPE_CHECKING:
    from ray.tune.schedulers import TrialScheduler

    from clp_tune.stopping.predictor import Predictor


def stock_scheduler_args(
    kind: str, budget: int, grace_period: int | None = None, reduction_factor: float = 3.0
) -> dict[str, Any]:
    """Arguments of Ray's ASHA (``asha``) or median stopping rule (``median``) with this product's settings:
    epochs (not Ray iterations) are the time axis, and the grace period defaults to a tenth of the budget."""
    grace = grace_period or max(1, budget // 10)
    if kind == "asha":
        return {"time_attr": "epoch", "max_t": budget, "grace_period": grace, "reduction_factor": reduction_factor}
    return {"time_attr": "epoch", "grace_period": grace, "min_samples_required": 3}


def build_scheduler(
    kind: str,
    budget: int,
    *,
    state_dir: str | Path | None = None,
    grace_period: int | None = None,
    reduction_factor: float = 3.0,
    trajectory_options: Mapping[str, Any] | None = None,
    predictor: Predictor | None = None,
) -> TrialScheduler:
    """A scheduler of ``kind`` (one of ``clp_tune.vocabulary.SCHEDULER_TYPES``) for trials of ``budget`` epochs.

    Args:
        kind: ``fifo`` (no stopping), ``asha``, ``median`` or ``trajectory``.
        budget: planned epochs per trial.
        state_dir: trajectory: the run directory its state survives a restore in (None: in memory only).
        grace_period: asha / median: epochs before a trial can be stopped (default: a tenth of the budget).
        reduction_factor: asha: keep 1/reduction_factor of the trials at each rung.
        trajectory_options: trajectory: the options (``clp_tune.vocabulary.TRAJECTORY_OPTIONS`` and ``bank``)
            to set; the rest keep their defaults.
        predictor: trajectory: the predictor, copied so that what this scheduler learns online stays its own
            (default: one fitted on the bank).

    Options of the other kinds are ignored, as a spec's are: only those of the chosen type apply.
    """
    if kind not in SCHEDULER_TYPES:
        raise ValueError(f"need kind in {SCHEDULER_TYPES}, got kind={kind!r}")
    if kind == "trajectory":
        from clp_tune.stopping.scheduler import TrajectoryScheduler

        return TrajectoryScheduler(
            budget=budget, state_dir=None if state_dir is None else str(state_dir),
            predictor=copy.deepcopy(predictor), **(trajectory_options or {}),
        )  # fmt: skip
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    if kind == "fifo":
        return FIFOScheduler()
    scheduler = AsyncHyperBandScheduler if kind == "asha" else MedianStoppingRule
    return scheduler(**stock_scheduler_args(kind, budget, grace_period, reduction_factor))
