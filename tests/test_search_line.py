"""The search's own line from a finished trial's level at epoch t to its final, and how the predictor pools it with
its prior and floors its spread at the measurement's noise."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.stats import t as student

from clp_tune.stopping.context import expit, level_at, logit
from clp_tune.stopping.features import Trajectory
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Prediction, measurement_noise, pool
from clp_tune.stopping.search_line import MIN_TRIALS, LinePrediction, SearchLine

BUDGET = 20


def _curve(start: float, end: float, seed: int, noise: float = 0.0) -> list[float]:
    """A rising val_acc curve of BUDGET epochs from ``start`` to ``end`` with optional jitter."""
    rng = np.random.default_rng(seed)
    shape = 1 - np.exp(-np.arange(1, BUDGET + 1) / 4)
    curve = start + (end - start) * shape / shape[-1] + rng.normal(0, noise, BUDGET)
    return [float(v) for v in np.clip(curve, 0.01, 0.99)]


def test_no_line_before_enough_trials_finished() -> None:
    line = SearchLine()
    for i in range(MIN_TRIALS - 1):
        line.add(_curve(0.2 + 0.05 * i, 0.6 + 0.05 * i, i), BUDGET)
    assert line.predict(0.5, 5, BUDGET) is None
    line.add(_curve(0.5, 0.9, 99), BUDGET)
    assert line.predict(0.5, 5, BUDGET) is not None
    assert line.predict(0.5, 5, 2 * BUDGET) is None  # only trials of the same budget count


def test_the_line_is_least_squares_with_the_classical_prediction_interval() -> None:
    """Checked against the textbook formula computed here from numpy's own fit: at the 95 % level, the t interval
    of the line has the half-width t(n-2) * s * sqrt(1 + 1/n + (x0 - mean)^2 / Sxx)."""
    line = SearchLine()
    curves = [_curve(0.1 + 0.04 * i, 0.5 + 0.03 * i + 0.02 * (-1) ** i, i, noise=0.01) for i in range(9)]
    for curve in curves:
        line.add(curve, BUDGET)
    epoch, level = 6, 0.33
    x = np.array([float(logit(level_at(c, epoch))) for c in curves])
    y = np.array([float(logit(c[-1])) for c in curves])
    slope, intercept = np.polyfit(x, y, 1)
    n, x0 = len(x), float(logit(level))
    s2 = float(np.sum((y - intercept - slope * x) ** 2)) / (n - 2)
    half = student.ppf(0.975, n - 2) * math.sqrt(s2 * (1 + 1 / n + (x0 - x.mean()) ** 2 / np.sum((x - x.mean()) ** 2)))
    got = line.predict(level, epoch, BUDGET)
    assert got.trials == n
    assert got.mean == pytest.approx(intercept + slope * x0, rel=1e-9)
    # the t's variance is scale^2 * dof / (dof - 2); its 97.5 % point is the half-width above
    scale = math.sqrt(got.variance * (n - 4) / (n - 2))
    assert student.ppf(0.975, n - 2) * scale == pytest.approx(half, rel=1e-9)


def test_a_level_far_from_the_finished_trials_gets_a_wider_line() -> None:
    line = SearchLine()
    for i in range(8):
        line.add(_curve(0.4 + 0.02 * i, 0.8 + 0.01 * i, i, noise=0.01), BUDGET)
    near, far = line.predict(0.6, 5, BUDGET), line.predict(0.2, 5, BUDGET)
    assert far.variance > 2 * near.variance


def test_trials_that_finish_later_extend_the_line() -> None:
    """Each epoch's points are gathered once and extended as trials finish: the line after a new trial equals the
    line of a fresh search that saw all of them."""
    curves = [_curve(0.2 + 0.03 * i, 0.7 + 0.02 * i, i, noise=0.02) for i in range(10)]
    growing, fresh = SearchLine(), SearchLine()
    for curve in curves[:6]:
        growing.add(curve, BUDGET)
    growing.predict(0.4, 5, BUDGET)
    for curve in curves[6:]:
        growing.add(curve, BUDGET)
    for curve in curves:
        fresh.add(curve, BUDGET)
    assert growing.predict(0.4, 5, BUDGET) == fresh.predict(0.4, 5, BUDGET)


@pytest.mark.parametrize("seed", range(20))
def test_the_pool_is_never_sharper_than_the_sharper_of_its_two(seed: int) -> None:
    rng = np.random.default_rng(seed)
    prior = Prediction(float(rng.uniform(0.2, 0.95)), float(rng.uniform(0.01, 0.2)))
    line = LinePrediction(float(rng.normal(0.5, 1.5)), float(rng.uniform(0.01, 2.0)), int(rng.integers(5, 200)))
    pooled = pool(prior, line)
    _, prior_variance = prior.log_odds()
    mean, variance = pooled.log_odds()
    assert variance >= min(prior_variance, line.variance) * (1 - 1e-9)
    low, high = sorted([prior.log_odds()[0], line.mean])
    assert low - 1e-9 <= mean <= high + 1e-9  # between the two means


def test_the_line_takes_over_as_the_search_finishes_trials() -> None:
    """No prior at all (the curve fallback alone) on a task whose curves gain 0.25 after epoch 4: the curve
    extrapolation cannot see that gain, the search's finished trials show it, and the pooled prediction moves
    towards it with each one."""
    predictor = FinalAccuracyPredictor(bank=None, refit_every=0)
    newcomer = _curve(0.3, 0.8, 1000)
    seen = {"val_acc": newcomer[:4]}
    errors = []
    for i in range(12):
        start = 0.2 + 0.02 * i
        curve = _curve(start, start + 0.5, i)
        predictor.observe_finished([Trajectory({"val_acc": curve}, {}, BUDGET)])
        errors.append(abs(predictor.predict(seen, {}, BUDGET).mean - newcomer[-1]))
    model, _ = predictor._raw_predict(seen, {}, BUDGET, None)
    assert model == "curve+line"
    assert errors[-1] < 0.05 < errors[0]


def test_every_finished_trial_recalibrates_the_prior_before_it_is_pooled() -> None:
    """Once the search has a line, a finished trial is scored twice at each cut: the prior's own error (it
    recalibrates the prior, which is then pooled) and the pooled prediction's. Scoring only the pool left the prior
    recalibrated on the few trials that finished before the line existed, and a new task finishes few trials."""
    predictor = FinalAccuracyPredictor(bank=None, refit_every=0)
    for i in range(MIN_TRIALS):
        start = 0.2 + 0.02 * i
        predictor.observe_finished([Trajectory({"val_acc": _curve(start, start + 0.5, i)}, {}, BUDGET)])
    newcomer = Trajectory({"val_acc": _curve(0.3, 0.8, 1000)}, {}, BUDGET)
    scores = predictor.finished_scores(newcomer, None)
    models = {model for model, *_ in scores}
    assert models == {"level", "level+line", "curve", "curve+line"}  # before the curve's third epoch, and after
    for model in models:
        fractions = [fraction for name, fraction, *_ in scores if name == model]
        assert len(fractions) == len(set(fractions)) > 1  # one score per cut
    seen = {"val_acc": newcomer.history["val_acc"][:4]}
    _, raw = predictor._raw_predict(seen, {}, BUDGET, None)
    prior = predictor._prior_predict(seen, {}, BUDGET, None)[1]
    line = predictor._line.predict(level_at(seen["val_acc"], 4), 4, BUDGET)
    assert raw == pool(predictor._calibrated("curve", 4 / BUDGET, prior), line)


def test_the_spread_is_never_below_the_jitter_of_the_last_epochs() -> None:
    """A final is one epoch's val_acc: a prediction sharper than the trial's epoch-to-epoch jitter is false
    precision."""
    jumpy = [0.5, 0.6, 0.55, 0.62, 0.54, 0.61, 0.56, 0.63]
    noise = measurement_noise(jumpy)
    assert noise == pytest.approx(np.std(np.diff(jumpy[-6:])) / math.sqrt(2))
    predictor = FinalAccuracyPredictor(bank=None, refit_every=0)
    assert predictor.predict({"val_acc": jumpy}, {}, 10).std >= noise
    assert measurement_noise([0.5, 0.6]) == 0.0  # two epochs: no jitter to measure


@pytest.mark.parametrize(("mean", "std"), [(0.5, 0.01), (0.8, 0.03), (0.97, 0.02), (0.2, 0.3), (0.999, 0.004)])
def test_log_odds_and_back_are_inverses(mean: float, std: float) -> None:
    centre, variance = Prediction(mean, std).log_odds()
    assert expit(centre) == pytest.approx(mean)
    back = Prediction.from_log_odds(centre, variance)
    assert (back.mean, back.std) == pytest.approx((mean, std), rel=1e-9)
    if mean == 0.5:  # to first order the spread is divided by the logit's slope p(1 - p)
        assert math.sqrt(variance) == pytest.approx(std / 0.25, rel=1e-3)


def test_log_odds_far_below_any_accuracy_map_to_zero_without_a_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exp(1000) overflows: a RuntimeWarning in every search's log before
        assert expit(-1000.0) == 0.0
        assert expit(1000.0) == 1.0
        assert Prediction.from_log_odds(-1000.0, 1.0).mean == 0.0
