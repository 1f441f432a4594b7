"""The report's computations, apart from any HTML: effect intervals over seeds, the predictor's back-test rows and
the config labels both group by. Pure functions of data frames, so tests can check them against scipy directly."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats


def setting_label(value: object) -> str:
    """A config value as a label that compares equal however Parquet typed it (2, 2.0 and "2" are all "2")."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return setting_label(number) if math.isfinite(number) else value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def numeric_sort_key(label: str) -> tuple[int, float, str]:
    """Sorts setting labels by value where they are numbers (0.2 before 2), the others after them by name."""
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def group_ci(
    frame: pd.DataFrame, by: str, value: str, baseline: str | None = None, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean of ``value`` per setting of ``by`` with a t-interval over seeds, and each setting's Welch interval of
    the difference to ``baseline``.

    The effects studied here (a Mixup-off window, a pretraining mode) are fractions of a point, smaller than
    seed noise, so a difference is called "significant" only when its interval excludes zero. Settings are compared
    as :func:`setting_label` labels. Returns one row per setting, baseline first: setting, n, mean, ci_low, ci_high,
    diff, diff_low, diff_high and verdict ("baseline", "significant", "not significant", "too few seeds", or "" when
    no baseline is given).
    """
    data = frame[[by, value]].dropna(subset=[value])
    samples: dict[str, np.ndarray] = {}
    for label, values in data.groupby(data[by].map(setting_label), sort=False)[value]:
        samples[str(label)] = values.to_numpy(dtype=float)
    base = samples.get(baseline) if baseline is not None else None
    rows = []
    for label in sorted(samples, key=lambda s: (s != baseline, numeric_sort_key(s))):
        sample = samples[label]
        mean, low, high = _mean_interval(sample, confidence)
        row = {"setting": label, "n": len(sample), "mean": mean, "ci_low": low, "ci_high": high}
        row.update(diff=np.nan, diff_low=np.nan, diff_high=np.nan, verdict="")
        if baseline is not None and label == baseline:
            row["verdict"] = "baseline"
        elif base is not None:
            diff, diff_low, diff_high = _welch_interval(sample, base, confidence)
            row.update(diff=diff, diff_low=diff_low, diff_high=diff_high)
            if math.isnan(diff_low):
                row["verdict"] = "too few seeds"
            else:
                row["verdict"] = "not significant" if diff_low <= 0 <= diff_high else "significant"
        elif baseline is not None:
            row["verdict"] = "no baseline"
        rows.append(row)
    columns = ["setting", "n", "mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _mean_interval(sample: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and its t-interval; no interval from fewer than two values."""
    mean = float(np.mean(sample)) if len(sample) else np.nan
    if len(sample) < 2:
        return mean, np.nan, np.nan
    half = stats.t.ppf((1 + confidence) / 2, len(sample) - 1) * np.std(sample, ddof=1) / math.sqrt(len(sample))
    return mean, mean - half, mean + half


def _welch_interval(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Interval of mean(a) - mean(b) without assuming equal variances (Welch-Satterthwaite degrees of freedom)."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, np.nan, np.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf((1 + confidence) / 2, dof) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def decisions_near(decisions: pd.DataFrame, budgets: pd.Series, fraction: float) -> pd.DataFrame:
    """Per trial, the scheduler's decision row whose epoch is nearest ``fraction`` of the trial's budget (the
    earlier one on ties), indexed by trial_id: what the predictor said at that point of training."""
    rows = decisions.join(budgets.rename("budget"), on="trial_id").dropna(subset=["pred_mean", "budget"])
    rows = rows.assign(gap=(rows["epoch"] - fraction * rows["budget"]).abs())
    return rows.sort_values(["trial_id", "gap", "epoch"]).groupby("trial_id").head(1).set_index("trial_id")


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ; NaN when either side is constant (a rank correlation is undefined there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan
    return float(stats.spearmanr(x, y).statistic)
