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

from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.features import History, Trajectory, is_complete, trajectories_from_frame
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, Predictor, ask, last_value_prediction

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

    def _of(self, config: Mapping[str, Any]) -> FinalAccuracyPredictor:
        return self.predictors[self.fold_of[str(config["trial_id"])]]

    def predict(self, history: History, config: Mapping[str, Any], budget: int) -> Prediction:
        return self._of(config).predict(history, config, budget)

    def predict_in_context(
        self, history: History, config: Mapping[str, Any], budget: int, context: SearchContext
    ) -> Prediction:
        return ask(self._of(config), history, config, budget, context)

    def observe_finished(self, rows: pd.DataFrame | Sequence[Trajectory]) -> None:
        for predictor in self.predictors:
            predictor.observe_finished(rows)


def _search(complete: Sequence[Trajectory], member: int, epoch: int, finished: bool) -> SearchContext:
    """The bank's other complete trials as trial ``member``'s search at ``epoch``: all cut there and running
    (the start of a search), or all finished, with their finals (late in a search)."""
    others = {str(j): t for j, t in enumerate(complete) if j != member}
    if finished:
        return SearchContext({j: t.history["val_acc"] for j, t in others.items()},
                             {j: t.final for j, t in others.items()})  # fmt: skip
    return SearchContext({j: t.history["val_acc"][:epoch] for j, t in others.items()})


def spearman_table(bank: pd.DataFrame, predictors: Mapping[str, Predictor]) -> dict[str, dict[str, float]]:
    """Spearman rank correlation of predicted vs true final val_acc over the bank's complete trials, at each of
    :data:`SPEARMAN_FRACTIONS` of the budget, for each predictor and for the last value (the baseline a learned
    predictor must beat). Each trial is predicted in its search as it stands at the start: the bank's other trials
    cut at the same epoch, none finished; nothing has been learned online."""
    complete = [t for t in trajectories_from_frame(bank) if is_complete(t)]
    finals = [t.final for t in complete]
    table: dict[str, dict[str, float]] = {name: {} for name in [*predictors, "last-value"]}
    for fraction in SPEARMAN_FRACTIONS:
        guesses: dict[str, list[float]] = {name: [] for name in table}
        for i, t in enumerate(complete):
            epoch = max(1, round(fraction * t.budget))
            seen, search = t.upto(epoch), _search(complete, i, epoch, finished=False)
            for name, predictor in predictors.items():
                guesses[name].append(ask(predictor, seen, t.config, t.budget, search).mean)
            guesses["last-value"].append(last_value_prediction(seen))
        for name, values in guesses.items():
            rho = spearmanr(values, finals).statistic if len(finals) > 2 else math.nan
            table[name][f"{fraction:g}"] = float(rho)
    return table


def fit_lazy_models(predictor: Predictor, bank: pd.DataFrame, fraction: float = 0.25) -> None:
    """Predict each complete trial of ``bank`` alone and in a search whose other trials have all finished.

    With :func:`spearman_table`'s predictions (in a search where none has), this fits every model the predictor
    fits lazily -- for a trial alone, in a search without an incumbent, in one with -- so a benchmark that then
    copies the predictor for each run does not fit them again in every copy. Predicting changes no online state.
    """
    complete = [t for t in trajectories_from_frame(bank) if is_complete(t)]
    for i, t in enumerate(complete):
        epoch = max(1, round(fraction * t.budget))
        predictor.predict(t.upto(epoch), t.config, t.budget)
        ask(predictor, t.upto(epoch), t.config, t.budget, _search(complete, i, epoch, finished=True))
