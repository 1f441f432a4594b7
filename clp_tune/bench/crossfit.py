"""Cross-fitted prediction within one bank, and the rank correlations the scheduler benchmark prints.

The bank's trials are split into folds by trial, and each fold is judged by a predictor whose prior was fitted on
the other folds (cross-fitting): it never judges a trial it was fitted on, but its prior has seen the same task,
which no user on a new dataset has, so the benchmark shows it only as an upper bound.
:func:`spearman_table` scores any predictors against the true finals, next to the last value.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.features import History, Trajectory, is_complete, trajectories_from_frame
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, Predictor, ask, last_value_prediction

SPEARMAN_FRACTIONS = (0.1, 0.25, 0.5)
#: The Spearman tables of a bank, by key, and the trials finished first in each (``spearman_table(..., finished)``):
#: at the start of a search (nothing learned online), and once 10 of its trials have finished.
SPEARMAN_SETTINGS = {"spearman": 0, "spearman_online": 10}


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


def _search(complete: Sequence[Trajectory], member: int, epoch: int, done: Collection[int]) -> SearchContext:
    """The bank's other complete trials as trial ``member``'s search at ``epoch``: the ``done`` ones (by index)
    finished, whole with their finals, the rest cut there and running (all of them: the start of a search)."""
    others = {j: t for j, t in enumerate(complete) if j != member}
    curves = {str(j): t.history["val_acc"] if j in done else t.history["val_acc"][:epoch] for j, t in others.items()}
    return SearchContext(curves, {str(j): t.final for j, t in others.items() if j in done})


def spearman_table(
    bank: pd.DataFrame, predictors: Mapping[str, Predictor], finished: int = 0, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Spearman rank correlation of predicted vs true final val_acc over the bank's complete trials, at each of
    :data:`SPEARMAN_FRACTIONS` of the budget, for each predictor and for the last value (the baseline a learned
    predictor must beat).

    With ``finished`` = 0, each trial is predicted in its search as it stands at the start: the bank's other trials
    cut at the same epoch, none finished; nothing has been learned online. With ``finished`` = n, n complete trials
    (drawn with ``seed``) have finished first: a copy of each predictor learns them in that order (its online
    recalibration and the search's own line), they stand in every search whole with their finals, and the other
    trials are the ones scored (a search some way in, before its stopping rule has chosen whom to finish).
    """
    complete = [t for t in trajectories_from_frame(bank) if is_complete(t)]
    drawn = np.random.default_rng(seed).permutation(len(complete))[:finished].tolist()
    done = set(drawn)
    if drawn:
        predictors = {name: copy.deepcopy(p) for name, p in predictors.items()}
        for predictor in predictors.values():
            predictor.observe_finished([complete[j] for j in drawn])
    scored = [i for i in range(len(complete)) if i not in done]
    finals = [complete[i].final for i in scored]
    table: dict[str, dict[str, float]] = {name: {} for name in [*predictors, "last-value"]}
    for fraction in SPEARMAN_FRACTIONS:
        guesses: dict[str, list[float]] = {name: [] for name in table}
        for i in scored:
            t = complete[i]
            epoch = max(1, round(fraction * t.budget))
            seen, search = t.upto(epoch), _search(complete, i, epoch, done)
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
        ask(predictor, t.upto(epoch), t.config, t.budget, _search(complete, i, epoch, range(len(complete))))
