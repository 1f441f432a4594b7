"""Critical-period detectors: at which epoch a trial's early (critical) period ends, read off one per-epoch series.

Every detector is ``f(series, budget) -> epoch | None``: ``series[i]`` is the value after epoch ``i + 1``, the answer
is the first 1-based epoch at which the rule fires using only values up to that epoch, or None while it has not.
So a detector run on ``series[:e]`` agrees with the full run whenever the full answer is <= e, and a trainable can call
it after every epoch. NaN values (a statistic that could not be computed) are skipped: they never fire a rule and
never enter the history a rule compares against.

Rules follow the papers' reference code (see /work/shared/notes/papers.md):

* ``layer_rotation`` and ``grad_cosine_distance``: One Period to Rule Them All (arXiv 2506.15954);
* ``fisher_peak``: Critical Learning Periods (Achille et al. 2019), the Fisher trace rises, peaks, then falls;
* ``acc50``: Enlightenment Period v2 (arXiv 2504.01737), the period lasts until training accuracy reaches ~50 %.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterator, Mapping, Sequence

from clp_tune import vocabulary
from clp_tune.vocabulary import DETECTOR_INPUT

Detector = Callable[[Sequence[float], int], "int | None"]


def _finite(series: Sequence[float]) -> Iterator[tuple[int, float]]:
    """(1-based epoch, value) for every finite value of ``series``."""
    for index, value in enumerate(series):
        if value is not None and math.isfinite(value):
            yield index + 1, float(value)


def _slope(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of y on x (closed form: trainables rerun detectors every epoch, numpy calls add up)."""
    mean_x, mean_y = sum(x) / len(x), sum(y) / len(y)
    return sum((a - mean_x) * (b - mean_y) for a, b in zip(x, y, strict=True)) / sum((a - mean_x) ** 2 for a in x)


def _percentile(ordered: Sequence[float], q: float) -> float:
    """``numpy.percentile(values, q)`` (default linear interpolation) of already sorted values."""
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def layer_rotation(series: Sequence[float], budget: int, *, window: int = 5, max_angle: float = 45.0) -> int | None:
    """The period ends once layer rotation flattens: the line through its last ``window`` values is below 45 degrees.

    The x axis is the epoch as a fraction of the planned budget, so the angle means the same for any budget: a
    slope of 1 is "the remaining rotation would take the whole budget". Needs ``window`` values.
    """
    epochs: list[int] = []
    values: list[float] = []
    for epoch, value in _finite(series):
        epochs.append(epoch)
        values.append(value)
        if len(values) >= window:
            slope = _slope([e / budget for e in epochs[-window:]], values[-window:])
            if math.degrees(math.atan(slope)) < max_angle:
                return epoch
    return None


def grad_cosine_distance(
    series: Sequence[float], budget: int, *, min_history: int = 4, whisker: float = 1.5
) -> int | None:
    """One Period's "gradient confusion" detector: the period ends at the first low outlier of the series, a value
    below Q1 - 1.5 IQR of all earlier values.

    The series is the min cosine distance between probe minibatch gradients (the ``grad_cosine_distance`` statistic,
    as One Period's reference code computes it): a sudden drop means some pair of minibatch gradients suddenly aligns
    more closely than ever before. Needs ``min_history`` earlier values. ``budget`` is unused (kept for the common
    signature).
    """
    history: list[float] = []  # kept sorted
    for epoch, value in _finite(series):
        if len(history) >= min_history:
            q1, q3 = _percentile(history, 25), _percentile(history, 75)
            if value < q1 - whisker * (q3 - q1):
                return epoch
        bisect.insort(history, value)
    return None


def fisher_peak(series: Sequence[float], budget: int, *, fraction: float = 0.5) -> int | None:
    """The period ends once the Fisher trace has peaked and fallen below ``fraction`` of that earlier peak.

    The peak is the running maximum of the earlier values, so the current value can never be its own peak.
    ``budget`` is unused (kept for the common signature).
    """
    peak = -math.inf
    for epoch, value in _finite(series):
        if value < fraction * peak:
            return epoch
        peak = max(peak, value)
    return None


def acc50(series: Sequence[float], budget: int, *, threshold: float = 0.5) -> int | None:
    """The period ends when training accuracy (a fraction in [0, 1]) first reaches ``threshold``.

    ``budget`` is unused (kept for the common signature).
    """
    return next((epoch for epoch, value in _finite(series) if value >= threshold), None)


#: The rules under clp_tune.vocabulary's detector names (in its order: the trial's columns follow it).
DETECTORS: dict[str, Detector] = {
    "layer_rotation": layer_rotation,
    "grad_cosine_distance": grad_cosine_distance,
    "fisher_peak": fisher_peak,
    "acc50": acc50,
}
if tuple(DETECTORS) != vocabulary.DETECTORS:
    raise RuntimeError(
        f"detector rules {tuple(DETECTORS)} do not match clp_tune.vocabulary.DETECTORS {vocabulary.DETECTORS}"
    )


def detect_all(series_by_column: Mapping[str, Sequence[float]], budget: int) -> dict[str, int | None]:
    """Run every detector whose input column is present; the result has an entry for exactly those detectors."""
    return {
        name: detector(series_by_column[DETECTOR_INPUT[name]], budget)
        for name, detector in DETECTORS.items()
        if DETECTOR_INPUT[name] in series_by_column
    }
