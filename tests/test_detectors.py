"""Critical-period detectors on hand-made series with known answers, online consistency and NaN handling."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from clp_tune.trial.detectors import (
    DETECTORS,
    _percentile,
    acc50,
    detect_all,
    fisher_peak,
    grad_cosine_distance,
    layer_rotation,
)

NAN = math.nan


def online_answers(detector, series, budget):
    """What a trainable sees: the detector rerun on the prefix after every epoch."""
    return [detector(series[:epoch], budget) for epoch in range(1, len(series) + 1)]


def assert_online(detector, series, budget):
    """The prefix run says None before the full answer's epoch and the full answer from then on."""
    full = detector(series, budget)
    for epoch, answer in enumerate(online_answers(detector, series, budget), start=1):
        assert answer == (full if full is not None and epoch >= full else None), (epoch, answer, full)


# ------------------------------------------------------------------ layer rotation


def test_layer_rotation_fires_when_the_fitted_line_flattens_below_45_degrees():
    budget = 100  # x steps 0.01 per epoch: a slope of 1 is 0.01 of rotation per epoch
    steep = [0.05 * epoch for epoch in range(1, 8)]  # slope 5 (79 degrees)
    flat = [steep[-1] + 0.001 * epoch for epoch in range(1, 10)]  # slope 0.1
    series = steep + flat
    # windows ending at epoch 8..: epoch 10 still contains 4 steep points; find the first angle < 45 by hand
    expected = next(
        e
        for e in range(5, len(series) + 1)
        if math.degrees(math.atan(np.polyfit(np.arange(e - 4, e + 1) / budget, series[e - 5 : e], 1)[0])) < 45
    )
    assert layer_rotation(series, budget) == expected
    assert 8 <= expected <= 12
    assert_online(layer_rotation, series, budget)


def test_layer_rotation_needs_five_values_and_stays_none_while_steep():
    assert layer_rotation([0.0, 0.0, 0.0, 0.0], 10) is None  # flat but only four values
    assert layer_rotation([0.0] * 5, 10) == 5
    assert layer_rotation([0.2 * e for e in range(1, 20)], 10) is None  # slope 2 everywhere (63 degrees)


def test_layer_rotation_angle_depends_on_the_budget():
    series = [0.02 * e for e in range(1, 8)]  # 0.02 per epoch
    assert layer_rotation(series, 100) is None  # slope 2
    assert layer_rotation(series, 10) == 5  # slope 0.2


def test_layer_rotation_skips_nan():
    series = [0.0, NAN, 0.0, 0.0, NAN, 0.0, 0.0]
    assert layer_rotation(series, 10) == 7  # the fifth finite value arrives at epoch 7
    assert_online(layer_rotation, series, 10)


# ------------------------------------------------------------------ gradient cosine distance


def test_grad_cosine_distance_fires_on_the_first_low_outlier():
    series = [0.50, 0.52, 0.49, 0.51, 0.50, 0.30, 0.10]
    # at epoch 6 the history is the five earlier values: Q1 0.50, Q3 0.51 -> fence 0.485; 0.30 is below
    assert grad_cosine_distance(series, 50) == 6
    assert_online(grad_cosine_distance, series, 50)


def test_grad_cosine_distance_needs_four_earlier_values():
    assert grad_cosine_distance([0.5, 0.5, 0.5, 0.0], 10) is None  # only three earlier values
    assert grad_cosine_distance([0.5, 0.5, 0.5, 0.5, 0.0], 10) == 5


def test_grad_cosine_distance_ignores_high_outliers_and_noise_within_the_fence():
    series = [0.5, 0.6, 0.4, 0.55, 0.9, 0.45, 0.5, 0.42]
    assert grad_cosine_distance(series, 10) is None


def test_grad_cosine_distance_uses_numpy_percentiles():
    rng = random.Random(0)
    values = sorted(rng.random() for _ in range(11))
    for q in (0, 25, 50, 75, 100):
        assert _percentile(values, q) == pytest.approx(np.percentile(values, q))


def test_grad_cosine_distance_nan_is_neither_a_fire_nor_history():
    series = [0.5, NAN, 0.5, 0.5, NAN, 0.5, NAN, 0.0]
    assert grad_cosine_distance(series, 10) == 8
    assert_online(grad_cosine_distance, series, 10)


# ------------------------------------------------------------------ Fisher peak


def test_fisher_peak_fires_after_falling_below_half_the_earlier_peak():
    series = [1.0, 4.0, 8.0, 6.0, 4.5, 3.9, 2.0]
    assert fisher_peak(series, 20) == 6  # 3.9 < 0.5 * 8
    assert_online(fisher_peak, series, 20)


def test_fisher_peak_is_none_while_rising_or_above_the_fraction():
    assert fisher_peak([1.0, 2.0, 3.0, 4.0], 10) is None
    assert fisher_peak([4.0, 3.0, 2.5, 2.0], 10) is None  # never below 0.5 * 4
    assert fisher_peak([4.0, 1.0], 10) == 2  # the peak may be at epoch 1, it just must be earlier


def test_fisher_peak_fraction_keyword_and_nan():
    series = [2.0, NAN, 10.0, NAN, 7.0, 5.0]
    assert fisher_peak(series, 10) is None  # 5.0 is not below 0.5 * 10
    assert fisher_peak(series, 10, fraction=0.75) == 5  # 7.0 < 7.5
    assert fisher_peak([math.inf, 1.0], 10) is None  # non-finite values are skipped


# ------------------------------------------------------------------ accuracy 50 %


def test_acc50_fires_at_the_first_epoch_reaching_the_threshold():
    series = [0.1, 0.3, 0.49, 0.5, 0.4, 0.7]
    assert acc50(series, 10) == 4
    assert acc50(series, 10, threshold=0.6) == 6
    assert acc50([0.1, 0.2], 10) is None
    assert acc50([NAN, 0.8], 10) == 2
    assert_online(acc50, series, 10)


# ------------------------------------------------------------------ all detectors


def test_detect_all_runs_only_detectors_whose_column_is_present():
    history = {"train_acc": [0.2, 0.6], "fisher_trace": [1.0, 3.0, 1.0]}
    assert detect_all(history, 10) == {"fisher_peak": 3, "acc50": 2}
    assert detect_all({}, 10) == {}


def test_every_detector_is_online_on_random_walks():
    rng = random.Random(1)
    for _ in range(20):
        walk = [0.5]
        for _ in range(30):
            walk.append(walk[-1] + rng.gauss(0, 0.1))
        for detector in DETECTORS.values():
            assert_online(detector, walk, 30)
