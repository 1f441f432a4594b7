"""The final-accuracy predictor on synthetic banks whose curves cross (late bloomers under strong noise)."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from unittest import mock

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.stopping.boosting import (
    ErrorModel,
    OneRow,
    error_model,
    fitted_together,
    out_of_fold,
    target_trees,
    trees,
)
from clp_tune.stopping.calibration import COVERAGE, NOMINAL
from clp_tune.stopping.context import (
    LevelCache,
    SearchContext,
    TaskLevels,
    context_features,
    level_at,
    standing,
)
from clp_tune.stopping.curves import curve_extrapolation
from clp_tune.stopping.features import is_complete, trajectories_from_frame, trajectory_features
from clp_tune.stopping.incontext import SHRINK_WEIGHTS, InContextModel, shrink_weight, shrunk, spread_at, spread_of
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, last_value_prediction
from clp_tune.stopping.prior import USER_FOLDS, USER_TASK_PREFIX, fold_labels, pooled, task_of


@pytest.fixture(scope="module")
def banks() -> tuple[pd.DataFrame, pd.DataFrame]:
    return synthetic_bank(120, 20, seed=0), synthetic_bank(60, 20, seed=1)


def _ranks(predictor: FinalAccuracyPredictor, bank: pd.DataFrame, fraction: float) -> tuple[float, float, float]:
    """Spearman of predictor and last value vs the truth, and the predictor's mean absolute error."""
    trajectories = [t for t in trajectories_from_frame(bank) if is_complete(t)]
    cut = [t.upto(round(fraction * t.budget)) for t in trajectories]
    truth = [t.final for t in trajectories]
    predicted = [predictor.predict(h, t.config, t.budget).mean for h, t in zip(cut, trajectories, strict=True)]
    last = [last_value_prediction(h) for h in cut]
    error = float(np.mean(np.abs(np.array(predicted) - truth)))
    return spearmanr(predicted, truth).statistic, spearmanr(last, truth).statistic, error


@contextlib.contextmanager
def _no_refit(predictor: FinalAccuracyPredictor) -> Iterator[None]:
    """Fail if ``predictor`` fits a tree model inside the block (what makes a per-result call expensive)."""
    refit = AssertionError("refitted on a prediction")
    with (
        mock.patch.object(predictor, "_fit", side_effect=refit),
        mock.patch.object(InContextModel, "_fit", side_effect=refit),
    ):
        yield


def test_prediction_distribution_helpers() -> None:
    p = Prediction(0.8, 0.05)
    assert p.prob_above(0.8) == pytest.approx(0.5, abs=1e-4)
    assert p.prob_above(0.9) < 0.05 < p.prob_above(0.7)
    assert p.quantile(0.5) == pytest.approx(0.8, abs=1e-4)
    assert Prediction(0.8, 0.0).prob_above(0.81) < 0.01  # a zero spread is floored, never divides by zero


def test_curve_extrapolation_follows_a_saturating_curve() -> None:
    epochs = np.arange(1, 11)
    curve = 0.9 - 0.6 * np.exp(-epochs / 8)  # observed up to epoch 10 of 40
    predicted, disagreement = curve_extrapolation(curve, budget=40)
    assert curve[-1] < predicted < 0.95  # true limit 0.9; the shapes disagree a little beyond the data
    assert disagreement > 0
    assert curve_extrapolation([0.3, 0.4], budget=40) == (pytest.approx(0.35), 0.0)  # too short to fit


def test_a_curves_extrapolation_does_not_depend_on_the_curves_extrapolated_before_it() -> None:
    """The shapes are kept per (epochs, budget) and shared by every curve of that length: extrapolating one curve
    must leave nothing behind for the next."""
    rng = np.random.default_rng(0)
    epochs = np.arange(1, 11)
    curves = [np.clip(0.9 - 0.6 * np.exp(-epochs / s) + rng.normal(0, 0.01, 10), 0, 1) for s in (2, 8, 30)]
    first = [curve_extrapolation(c, budget=40) for c in curves]
    assert [curve_extrapolation(c, budget=40) for c in reversed(curves)] == first[::-1]
    assert len(set(first)) == 3
    assert curve_extrapolation(curves[0], budget=20) != first[0]  # another budget, other shapes


def test_beats_last_value_on_crossing_curves(banks) -> None:
    train, test = banks
    predictor = FinalAccuracyPredictor(train)
    first = [t for t in trajectories_from_frame(test)][0]
    predictor.predict(first.upto(3), first.config, first.budget)  # fits the prior
    for fraction in (0.1, 0.25):
        rho, rho_last, error = _ranks(predictor, test, fraction)
        assert rho > rho_last + 0.1, (fraction, rho, rho_last)
        assert error < 0.05
    # predict() is called on every result of every trial: it must reuse the fitted prior, never refit
    with _no_refit(predictor):
        for _ in range(50):
            predictor.predict(first.upto(5), first.config, first.budget)


def test_spread_is_roughly_calibrated(banks) -> None:
    train, test = banks
    predictor = FinalAccuracyPredictor(train)
    z = []
    for t in filter(is_complete, trajectories_from_frame(test)):
        p = predictor.predict(t.upto(4), t.config, t.budget)
        z.append((t.final - p.mean) / p.std)
    assert np.mean(np.abs(np.array(z)) < 1.645) > 0.6  # nominal 90 % interval


def test_spread_without_context_is_honest_on_a_task_the_prior_has_not_seen() -> None:
    """The trees that judge a trial without a search context are fitted on two tasks whose gains still to come
    differ (accuracies squeezed into [0, 0.5] and [0.5, 1]); on a third task spanning [0, 1] their 90 % interval
    holds most finals from half the budget on: the spread is the trees' error on a task they did not see. (With
    folds of trials within the two tasks it covered from a quarter of them to 70 %.)"""

    def scaled(seed: int, low: float, high: float) -> pd.DataFrame:
        bank = synthetic_bank(40, 20, seed=seed)
        return bank.assign(val_acc=low + (high - low) * bank["val_acc"])

    predictor = FinalAccuracyPredictor(pooled({"low": scaled(0, 0.0, 0.5), "high": scaled(1, 0.5, 1.0)}))
    new_task = [t for t in trajectories_from_frame(scaled(2, 0.0, 1.0)) if is_complete(t)]
    covered = []
    for epoch in (10, 12, 16):
        for t in new_task:
            p = predictor.predict(t.upto(epoch), t.config, t.budget)
            covered.append(abs(t.final - p.mean) <= 1.645 * p.std)
    assert np.mean(covered) > 0.85, np.mean(covered)


def test_works_with_val_acc_only(banks) -> None:
    train, test = banks
    predictor = FinalAccuracyPredictor(train[["trial_id", "epoch", "val_acc"]])
    t = trajectories_from_frame(test[["trial_id", "epoch", "val_acc"]])[0]
    p = predictor.predict({"val_acc": t.history["val_acc"][:5]}, {}, budget=20)
    assert math.isfinite(p.mean) and 0 <= p.mean <= 1 and p.std > 0
    # a rich bank, a poor trial: only the features both have are used
    rich = FinalAccuracyPredictor(train)
    p = rich.predict({"val_acc": t.history["val_acc"][:5]}, {}, budget=20)
    assert math.isfinite(p.mean) and p.std > 0
    assert set(trajectory_features({"val_acc": [0.2, 0.3]}, {}, 20)) >= {"fraction", "curve_extrapolation"}


def test_features_read_each_columns_last_finite_values() -> None:
    """A column reported with gaps (None, NaN, inf: an epoch that did not measure it) is read at its finite epochs."""
    history = {
        "val_acc": [0.2, 0.3, 0.4, 0.5, 0.55, 0.6],
        "train_acc": [0.2, None, 0.4, math.nan, 0.6, math.inf],
        "lr": [math.nan, 0.1, 0.08, None, 0.05, math.nan],
        "tse": [1.0, 2.0, math.nan],
        "grad_norm": [None, math.nan],
    }
    f = trajectory_features(history, {}, 20)
    assert f["train_acc_last"] == pytest.approx(0.4)  # the last three finite: 0.2, 0.4, 0.6
    assert f["train_acc_slope"] == pytest.approx(20 * 0.2)  # 0.2 an epoch over the three, per budget
    assert f["lr_progress"] == pytest.approx(0.5)  # last finite / first finite
    assert f["stat_tse"] == pytest.approx(math.log1p(2.0))
    assert math.isnan(f["stat_grad_norm"]) and math.isnan(f["val_loss_last"])  # nothing finite, or not reported


def test_learns_online_without_a_bank(banks) -> None:
    train, test = banks
    predictor = FinalAccuracyPredictor(None, refit_every=10)
    t = trajectories_from_frame(test)[0]
    before = predictor.predict(t.upto(5), t.config, t.budget)  # curve extrapolation only
    assert math.isfinite(before.mean) and before.std > 0
    _, _, error_before = _ranks(predictor, test, 0.25)
    predictor.observe_finished(train[train["trial_id"].isin(train["trial_id"].unique()[:40])])
    _, _, error_after = _ranks(predictor, test, 0.25)
    assert error_after < error_before


def test_fits_are_deterministic_whenever_they_happen(banks, no_fit_cache) -> None:
    """Feeding the same finished trials in the same order gives the same predictions, with or without
    predictions (lazy fits) in between -- what a resumed scheduler relies on."""
    train, test = banks
    finished = [t for t in trajectories_from_frame(test) if is_complete(t)][:12]
    probe = finished[-1]
    a, b = FinalAccuracyPredictor(train, refit_every=5), FinalAccuracyPredictor(train, refit_every=5)
    for t in finished[:-1]:
        a.observe_finished([t])
        a.predict(probe.upto(4), probe.config, probe.budget)
    b.observe_finished(finished[:-1])
    pa, pb = a.predict(probe.upto(6), probe.config, probe.budget), b.predict(probe.upto(6), probe.config, probe.budget)
    assert pa == pb


def _search_of(trajectories: list, i: int, epoch: int) -> SearchContext:
    """Trajectory i's search: the other trajectories, all cut at ``epoch`` (none finished)."""
    return SearchContext({str(j): t.history["val_acc"][:epoch] for j, t in enumerate(trajectories) if j != i})


def test_in_context_prior_transfers_to_another_accuracy_scale(banks) -> None:
    """A prior fitted on one task ranks a task whose accuracies live on another scale (squeezed towards 0.97)
    better than the last value, from where each trial stands in its own search; and stays cheap per call."""
    train, test = banks
    squeezed = test.assign(val_acc=0.9 + 0.08 * test["val_acc"])
    trajectories = [t for t in trajectories_from_frame(squeezed) if is_complete(t)]
    predictor = FinalAccuracyPredictor(train)
    epoch = 3
    truth = [t.final for t in trajectories]
    predicted = [
        predictor.predict(t.upto(epoch), t.config, t.budget, _search_of(trajectories, i, epoch))
        for i, t in enumerate(trajectories)
    ]
    rho = spearmanr([p.mean for p in predicted], truth).statistic
    rho_last = spearmanr([t.history["val_acc"][epoch - 1] for t in trajectories], truth).statistic
    assert rho > rho_last + 0.1, (rho, rho_last)
    assert all(0.9 <= p.mean <= 0.99 for p in predicted)  # on the new task's scale, not the bank's
    model = predictor._incontext_model()
    with _no_refit(predictor):  # the first loop above fitted the model for these features
        for _ in range(20):
            predictor.predict(trajectories[0].upto(5), trajectories[0].config, 20, _search_of(trajectories, 0, 5))
    assert predictor._incontext_model() is model  # built once, on first use


def test_in_context_fits_are_deterministic(banks, no_fit_cache) -> None:
    train, test = banks
    finished = [t for t in trajectories_from_frame(test) if is_complete(t)][:12]
    probe, context = finished[-1], _search_of(finished, len(finished) - 1, 6)
    a, b = FinalAccuracyPredictor(train, refit_every=5), FinalAccuracyPredictor(train, refit_every=5)
    for t in finished[:-1]:
        a.observe_finished([t])
        a.predict(probe.upto(6), probe.config, probe.budget, context)
    b.observe_finished(finished[:-1])
    assert a.predict(probe.upto(6), probe.config, probe.budget, context) == b.predict(
        probe.upto(6), probe.config, probe.budget, context
    )


def test_one_row_trees_predict_what_scikit_learn_predicts() -> None:
    """The flattened ensemble gives scikit-learn's prediction for every row, rows lying on a split's threshold
    (where float32 rounding decides the branch) and a weighted fit included."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 6))
    y = np.sin(x[:, 0]) + x[:, 1] * x[:, 2] + rng.normal(scale=0.1, size=400)
    model = trees(60, 4, 0.1, seed=1).fit(x, y, sample_weight=rng.uniform(0.5, 2, size=400))
    on_splits = x[:50].copy()
    for i, estimator in enumerate(model.estimators_[:50]):
        tree = estimator[0].tree_
        on_splits[i, tree.feature[0]] = tree.threshold[0]
    rows = np.concatenate([rng.normal(size=(200, 6)), on_splits])
    fast = OneRow.of(model)
    np.testing.assert_allclose([fast.predict(row) for row in rows], model.predict(rows), rtol=1e-12, atol=1e-12)


def test_no_chance_of_beating_a_perfect_score_and_a_perfect_score_beats_the_rest() -> None:
    """Accuracy stops at 1: the normal is censored there. A perfect bar cannot be beaten; the mass above 1 is a
    perfect score, which beats any lower bar; so a wide prediction keeps its chance of beating a bar near 1 (a
    normal cut off at 1 all but lost it: its mass above 1 went to the whole range below)."""
    from scipy.stats import norm, truncnorm

    assert Prediction(0.995, 0.02).prob_above(1.0) == 0.0
    near = Prediction(0.99, 0.01)
    assert near.prob_above(0.995) == pytest.approx(norm.sf(0.995, near.mean, near.std))
    assert near.quantile(0.1) == pytest.approx(norm.ppf(0.1, near.mean, near.std))
    assert near.quantile(0.9) == 1.0  # the normal's 90 % point lies above 1: a perfect score
    wide = Prediction(0.9, 0.15)
    cut = truncnorm(-np.inf, (1 - wide.mean) / wide.std, loc=wide.mean, scale=wide.std)
    assert wide.prob_above(0.993) == pytest.approx(norm.sf(0.993, 0.9, 0.15))
    assert wide.prob_above(0.993) > 0.25 > 0.05 > cut.sf(0.993)


def test_the_users_runs_share_a_few_folds_so_the_first_fit_does_not_grow_with_the_library(no_fit_cache) -> None:
    """Every finished search adds a run to the user's library, each its own task of the prior. Out-of-fold errors
    with a fold per run would fit the trees once more per run; the runs (one dataset and model) share USER_FOLDS."""
    labels = fold_labels(["mnist1d", "user:a", "user:b", "digits", "user:c", "user:d", "user:a", None])
    assert labels.tolist() == [0, 1, 2, 3, 4, 1, 1, 5]

    runs = {f"{USER_TASK_PREFIX}run{i}": synthetic_bank(12, 10, seed=i) for i in range(2 * USER_FOLDS + 2)}
    predictor = FinalAccuracyPredictor(pooled(runs))
    probe = [t for t in trajectories_from_frame(synthetic_bank(12, 10, seed=99)) if is_complete(t)]
    with mock.patch("clp_tune.stopping.boosting.trees", wraps=trees) as fitted:
        predictor.predict(probe[0].upto(5), probe[0].config, probe[0].budget)
    fold_fits = [c for c in fitted.call_args_list if c.args[0] == 60]  # the out-of-fold trees
    assert len(fold_fits) == USER_FOLDS


def test_the_users_runs_are_not_searches_for_the_in_context_model() -> None:
    """A library run holds only the trials its stopper let finish: the in-context model, which learns where a
    trial stands among the others of its search, leaves such runs out (the gain trees keep them)."""
    runs = {f"{USER_TASK_PREFIX}run{i}": synthetic_bank(12, 10, seed=i) for i in range(3)}
    assert not FinalAccuracyPredictor(pooled(runs))._incontext_model().usable
    with_task = FinalAccuracyPredictor(pooled({"shipped": synthetic_bank(12, 10, seed=7), **runs}))
    model = with_task._incontext_model()
    assert model.usable and set(model._task.tolist()) == {0}  # the one shipped task
    assert any(task_of(t).startswith(USER_TASK_PREFIX) for t in with_task.prior_trial_ids)  # the trees' data


def test_the_spread_is_widened_until_the_worst_unseen_task_is_covered() -> None:
    """Three tasks of one relation: on two the errors are small, on the third three times as large (the task a prior
    knows least). Error trees fitted on the others say "small" there, so its tails would be far out; the error model
    widens every spread by the factor that task needs, and never narrows one."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(900, 3))
    folds = np.repeat([0, 1, 2], 300)
    noise = np.where(folds == 2, 3.0, 1.0) * rng.normal(size=900)
    widened = error_model(x, x[:, 0] + noise, folds, seed=0, cache=False)
    assert 2.0 < widened.tail < 5.0, widened.tail
    std = np.array([widened.std(row) for row in x[folds == 2]])
    assert np.mean(np.abs(noise[folds == 2]) <= NOMINAL * std) >= COVERAGE - 0.03
    even = error_model(x, x[:, 0] + rng.normal(size=900), folds, seed=0, cache=False)
    assert 1.0 <= even.tail < 1.5, even.tail


def _assert_same_arrays(got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    """A fitted model's arrays (``arrays()``), name for name and value for value."""
    assert got.keys() == expected.keys()
    for name, values in got.items():
        np.testing.assert_array_equal(values, expected[name], err_msg=name)


def test_the_error_models_folds_fitted_side_by_side_give_what_one_after_the_other_gives() -> None:
    """The folds' fits run in threads, one per core: the model must be the one a single core fits, array for
    array (each fit has its own seed and rows; nothing may be shared between them)."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 3))
    y, folds, weight = x[:, 0] + rng.normal(size=600), np.repeat([0, 1, 2, 3], 150), rng.uniform(0.5, 2.0, 600)
    with mock.patch("os.sched_getaffinity", return_value={0, 1, 2, 3}, create=True):
        threads = error_model(x, y, folds, seed=3, weight=weight, cache=False).arrays()
    with mock.patch("os.sched_getaffinity", return_value={0}, create=True):
        alone = error_model(x, y, folds, seed=3, weight=weight, cache=False).arrays()
    _assert_same_arrays(threads, alone)


def test_a_models_target_and_error_fitted_together_are_those_fitted_apart() -> None:
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 3))
    y, folds = x[:, 1] + rng.normal(size=300), np.repeat([0, 1, 2], 100)
    target, error = fitted_together(lambda: target_trees(x, y, 5, cache=False),
                                    lambda: error_model(x, y, folds, 5, cache=False))  # fmt: skip
    np.testing.assert_array_equal(target.predict(x[0]), target_trees(x, y, 5, cache=False).predict(x[0]))
    _assert_same_arrays(error.arrays(), error_model(x, y, folds, 5, cache=False).arrays())

    def no_folds() -> ErrorModel:
        raise ValueError("no folds")

    with pytest.raises(ValueError, match="no folds"):
        fitted_together(lambda: target, no_folds)


def test_the_shrink_weight_is_the_one_that_ranks_the_finals_best() -> None:
    """Gains whose out-of-fold trees know the truth keep their weight (1); trees that know nothing, where the last
    value ranks the finals, give way to it (0); trees and a last value each half wrong, by opposite errors, are
    right half and half (0.5). Ranks are read within each group (a task at one cut)."""
    rng = np.random.default_rng(4)
    groups = np.repeat(np.arange(6), 40)
    level, spread = rng.normal(size=240), rng.uniform(0.5, 2.0, 240)
    signal, noise = rng.normal(size=240), rng.normal(size=240)
    centre = np.full(240, 0.3)
    y = signal + centre

    def weight(trees: np.ndarray, anchor: np.ndarray) -> float:
        return shrink_weight(trees, y, anchor, centre, level, spread, groups)

    assert weight(y, noise) == 1.0
    assert weight(noise, signal) == 0.0  # the anchor plus the centre is y itself
    assert weight(y + noise, signal - noise) == 0.5
    assert set(SHRINK_WEIGHTS) >= {0.0, 1.0}
    np.testing.assert_allclose(shrunk(np.array([2.0]), np.array([1.0]), 0.5, 0.25), [0.25 * 2.0 + 0.75 * 1.5])


def test_the_error_model_measures_the_predictions_it_is_given() -> None:
    """Without predictions the error model measures trees of the target out of fold, as it always did; given the
    out-of-fold predictions of a model built on those trees, it measures that model's errors instead."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 3))
    y, folds = x[:, 0] + 0.3 * rng.normal(size=600), np.repeat([0, 1, 2], 200)
    own = out_of_fold(x, y, folds, seed=1, cache=False)
    trees_errors = error_model(x, y, folds, 1, cache=False)
    _assert_same_arrays(trees_errors.arrays(), error_model(x, y, folds, 1, cache=False, predicted=own).arrays())
    worse = error_model(x, y, folds, 1, cache=False, predicted=np.zeros_like(y))
    assert np.mean([worse.std(row) for row in x]) > 2 * np.mean([trees_errors.std(row) for row in x])


def test_without_a_prior_a_trial_of_one_or_two_epochs_is_not_hopeless() -> None:
    """The best trial of the shipped mnist1d_cnn1d_sgd_20 bank rose from 0.33 at epoch 1 to 0.97. With no prior and
    fewer epochs than a curve is fitted from, its level with a spread of what is left called it hopeless against
    the second best's final (the benchmark's no-prior rows lost it in 9 of 10 orders); the final is anywhere from
    the level to 1, and the trial goes on."""
    from clp_tune.bench.priors import task_bank
    from clp_tune.stopping.bank_library import SUITE

    bank = task_bank(SUITE["mnist1d_cnn1d_sgd_20"]).as_searched()
    finals = bank.sort_values("epoch").groupby("trial_id")["val_acc"].last().sort_values()
    best = bank[bank["trial_id"] == finals.index[-1]].sort_values("epoch")["val_acc"].tolist()
    assert best[0] < 0.4 and finals.iloc[-1] > 0.95
    predictor = FinalAccuracyPredictor(None)
    for epoch in (1, 2):
        predicted = predictor.predict({"val_acc": best[:epoch]}, {}, 20)
        assert predicted.mean == pytest.approx((1 + np.mean(best[:epoch])) / 2)
        assert predicted.prob_above(finals.iloc[-2]) > 0.05  # not even paused
    assert predictor.predict({"val_acc": best[:3]}, {}, 20).mean < 0.9  # from the third epoch, the curve's own guess


def test_a_bank_trials_search_read_from_the_task_matrix_is_the_search_context_of_the_other_curves() -> None:
    """The in-context model stands each bank trial among every other trial of its task through one matrix of
    levels (:class:`TaskLevels`): what it reads at epoch t must be what a search of the other curves cut at t shows
    -- the same values in the same order, short and non-finite curves left out -- and so the same features. A search
    of the whole curves read through a level cache (the policy's, whose other trials may be epochs ahead) reads the
    same too."""
    rng = np.random.default_rng(4)
    curves = [list(np.clip(np.cumsum(rng.uniform(0, 0.08, 12)) + rng.normal(0, 0.02, 12), 0, 1)) for _ in range(8)]
    curves[2] = curves[2][:7]  # a shorter trial: not in the searches past its epoch 7
    curves[5][4] = math.nan  # a non-finite epoch: its levels around it are those of the finite values
    curves[6][:3] = [math.nan] * 3  # no finite value in its first epochs: left out there
    levels, cache = TaskLevels(curves), LevelCache()
    incumbent = 3
    for member in (0, 2, 5):
        finals = {str(incumbent): curves[incumbent][-1]}
        for epoch in range(1, len(curves[member]) + 1):
            others = {str(j): curves[j][:epoch] for j in range(len(curves)) if j != member}
            search = SearchContext(others, finals)
            whole = SearchContext({str(j): curves[j] for j in range(len(curves)) if j != member}, finals, cache=cache)
            values, earlier = levels.values_at(epoch, without=member)
            expected_values, expected_earlier = search.values_at(epoch)
            assert np.array_equal(values, expected_values) and np.array_equal(earlier, expected_earlier)
            for read, expected in zip(whole.values_at(epoch), (expected_values, expected_earlier), strict=True):
                assert np.array_equal(read, expected)
            assert spread_of(values) == spread_at(epoch, search)
            best = (level_at(curves[incumbent], epoch), curves[incumbent][-1])
            expected = context_features(curves[member][:epoch], search)
            assert standing(curves[member][:epoch], values, earlier, best) == pytest.approx(
                expected, rel=0, abs=0, nan_ok=True
            )
