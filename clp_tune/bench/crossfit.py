"""Cross-fitted prediction within one bank, and the rank correlations the scheduler benchmark prints.

The bank's trials are split into folds by trial, and each fold is judged by a predictor whose prior was fitted on
the other folds (cross-fitting): it never judges a trial it was fitted on, but its prior has seen the same task,
which no user on a new dataset has, so the benchmark shows it only as an upper bound.
:func:`spearman_table` scores any predictors against the true finals, next to the last value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd
from scipy.stats import spearmanr

from clp_tune.stopping.features import History, Trajectory, is_complete, trajectories_from_frame
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, Predictor, last_value_prediction

SPEARMAN_FRACTIONS = (0.1, 0.25, 0.5)


class CrossFitPredictor:
    """A predictor per fold of the bank's trials, each fitted without its fold; a trial goes to its own fold's.

    The fold is looked up from the trial's ``trial_id`` config key (the replay's config). Trials of this search
    that finish are learned by every fold's predictor, as a real search's predictor would learn them.

    Args:
        bank: the bank (bank-schema frame) whose trials are split into folds, in order of first appearance.
        folds: number of folds.
        predictor_args: passed to every fold's :class:`~clp_tune.stopping.predictor.FinalAccuracyPredictor`.
    """

    def __init__(self, bank: pd.DataFrame, folds: int = 5, **predictor_args: Any):
        ids = list(dict.fromkeys(bank["trial_id"].astype(str)))
        self.fold_of = {trial_id: i % folds for i, trial_id in enumerate(ids)}
        fold = bank["trial_id"].astype(str).map(self.fold_of)
        self.predictors = [FinalAccuracyPredictor(bank[fold != k], **predictor_args) for k in range(folds)]

    def predict(self, history: History, config: Mapping[str, Any], budget: int) -> Prediction:
        return self.predictors[self.fold_of[str(config["trial_id"])]].predict(history, config, budget)

    def observe_finished(self, rows: pd.DataFrame | Sequence[Trajectory]) -> None:
        for predictor in self.predictors:
            predictor.observe_finished(rows)


def spearman_table(bank: pd.DataFrame, predictors: Mapping[str, Predictor]) -> dict[str, dict[str, float]]:
    """Spearman rank correlation of predicted vs true final val_acc over the bank's complete trials, at each of
    :data:`SPEARMAN_FRACTIONS` of the budget, for each predictor (offline: none has seen a trial finish) and for
    the last value (the baseline a learned predictor must beat)."""
    complete = [t for t in trajectories_from_frame(bank) if is_complete(t)]
    finals = [t.final for t in complete]
    table: dict[str, dict[str, float]] = {name: {} for name in [*predictors, "last-value"]}
    for fraction in SPEARMAN_FRACTIONS:
        guesses: dict[str, list[float]] = {name: [] for name in table}
        for t in complete:
            seen = t.upto(max(1, round(fraction * t.budget)))
            for name, predictor in predictors.items():
                guesses[name].append(predictor.predict(seen, t.config, t.budget).mean)
            guesses["last-value"].append(last_value_prediction(seen))
        for name, values in guesses.items():
            rho = spearmanr(values, finals).statistic if len(finals) > 2 else math.nan
            table[name][f"{fraction:g}"] = float(rho)
    return table
