"""Does the prior transfer? Leave-task-out: each task is judged by a predictor whose prior never saw it.

For each task, the prior is fitted on the *other* tasks' banks; every complete trajectory of the held-out task is
cut at a fraction of its budget and predicted, with the other held-out trajectories cut at the same epoch as its
search (none has finished: the hardest case, the start of a search on a new dataset). Scored by the Spearman
correlation of the predicted and the true finals, next to a predictor without a prior, the same prior without the
search's context, and the last value, and by how often the true final falls in the predicted 90 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import norm, spearmanr

from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.features import is_complete, trajectories_from_frame
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction
from clp_tune.stopping.prior import pooled, suite_banks

TRANSFER_FRACTIONS = (0.1, 0.25, 0.5)
#: The predicted interval whose coverage is reported (how often the true final falls in it).
INTERVAL = 0.9
#: The predictors compared: the other-tasks prior with the search's context, without a prior, the same prior
#: judging each trial alone.
PREDICTORS = ("prior", "no_prior", "prior_alone")
#: Issue 14's ranking target, read at this fraction of the budget: the prior's Spearman correlation at least the
#: last value's, and :data:`MARGIN` above it where the last value's is below :data:`MARGIN_BELOW`.
TARGET_FRACTION = 0.1
MARGIN = 0.1
MARGIN_BELOW = 0.85


def target(last_value: float) -> float:
    """The Spearman correlation a predictor must reach where the last value reaches ``last_value``."""
    return last_value + MARGIN if last_value < MARGIN_BELOW else last_value


@dataclass(frozen=True)
class TaskTransfer:
    """One held-out task's scores, and the trial ids its prior was fitted on (so a caller can check them)."""

    task: str
    prior_trial_ids: frozenset[str]
    table: pd.DataFrame  # one row per fraction: Spearman per predictor and of the last value, 90 % coverage


def _spearman(predicted: Sequence[float], truth: Sequence[float]) -> float:
    if len(truth) < 3 or np.ptp(predicted) == 0:
        return math.nan
    return float(spearmanr(predicted, truth).statistic)


def _score(
    task: str, frame: pd.DataFrame, predictors: Mapping[str, FinalAccuracyPredictor], fractions: Sequence[float]
) -> pd.DataFrame:
    trajectories = [t for t in trajectories_from_frame(frame) if is_complete(t)]
    finals = [t.final for t in trajectories]
    half_width = float(norm.ppf(0.5 + INTERVAL / 2))
    rows = []
    for fraction in fractions:
        epochs = [max(1, round(fraction * t.budget)) for t in trajectories]
        guesses: dict[str, list[Prediction]] = {name: [] for name in predictors}
        for i, (trajectory, epoch) in enumerate(zip(trajectories, epochs, strict=True)):
            seen = trajectory.upto(epoch)
            search = SearchContext({str(j): o.history["val_acc"][:epoch] for j, o in enumerate(trajectories) if j != i})
            for name, predictor in predictors.items():
                context = None if name == "prior_alone" else search
                guesses[name].append(predictor.predict(seen, trajectory.config, trajectory.budget, context))
        row: dict[str, Any] = {"task": task, "fraction": fraction}
        for name, predicted in guesses.items():
            row[name] = _spearman([p.mean for p in predicted], finals)
        row["last_value"] = _spearman(
            [t.history["val_acc"][e - 1] for t, e in zip(trajectories, epochs, strict=True)], finals
        )
        row["coverage"] = float(
            np.mean([abs(f - p.mean) <= half_width * p.std for f, p in zip(finals, guesses["prior"], strict=True)])
        )
        rows.append(row)
    return pd.DataFrame(rows)


def leave_task_out(
    banks: Mapping[str, pd.DataFrame], fractions: Sequence[float] = TRANSFER_FRACTIONS,
    progress: Callable[[TaskTransfer], None] | None = None, **predictor_args: Any,
) -> list[TaskTransfer]:  # fmt: skip
    """Score each bank's task with a prior fitted on the other banks (pooled, ids prefixed with their task).

    Args:
        banks: bank-schema frames by task name (at least two).
        fractions: budget fractions the held-out trajectories are cut at.
        progress: called with each task's scores as soon as they are known (a suite task takes about half a minute).
        predictor_args: passed to every :class:`~clp_tune.stopping.predictor.FinalAccuracyPredictor`.
    """
    if len(banks) < 2:
        raise ValueError(f"leave-task-out needs at least two banks, got {sorted(banks)}")
    out = []
    for task, frame in banks.items():
        prior = FinalAccuracyPredictor(pooled({name: f for name, f in banks.items() if name != task}), **predictor_args)
        predictors = {"prior": prior, "no_prior": FinalAccuracyPredictor(None, **predictor_args), "prior_alone": prior}
        table = _score(task, frame, predictors, fractions)
        out.append(TaskTransfer(task, frozenset(prior.prior_trial_ids), table))
        if progress is not None:
            progress(out[-1])
    return out


def suite_transfer(tasks: Sequence[str] | None = None) -> pd.DataFrame:
    """:func:`leave_task_out` on the shipped suite's banks that exist on disk, as one table."""
    return pd.concat([t.table for t in leave_task_out(suite_banks(tasks))], ignore_index=True)
