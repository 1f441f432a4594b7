"""The report's computations, apart from any HTML: effect intervals over seeds, the predictor's back-test rows and
the config labels both group by. Pure functions of data frames, so tests can check them against scipy directly."""

from __future__ import annotations

import math
import warnings
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
    frame: pd.DataFrame,
    by: str,
    value: str,
    baseline: str | None = None,
    confidence: float = 0.95,
    pair_by: str | None = None,
) -> pd.DataFrame:
    """Mean of ``value`` per setting of ``by`` with a t-interval over seeds, and each setting's interval of the
    difference to ``baseline``: paired over ``pair_by`` (the seed) where both settings ran the same seeds, else Welch.

    The effects studied here (a Mixup-off window, a pretraining mode) are fractions of a point, smaller than
    seed noise, so a difference is called "significant" only when its interval excludes zero; a grid that runs every
    setting with the same seeds cancels that noise when the differences are taken seed by seed. Settings are compared
    as :func:`setting_label` labels. Returns one row per setting, baseline first: setting, n, mean, ci_low, ci_high,
    diff, diff_low, diff_high, verdict ("baseline", "significant", "not significant", "too few seeds", or "" when
    no baseline is given) and test (how the difference's interval was made).
    """
    columns = [by, value] + ([pair_by] if pair_by is not None and pair_by in frame else [])
    data = frame[columns].dropna(subset=[value])
    labels = data[by].map(setting_label)
    samples: dict[str, np.ndarray] = {}
    by_seed: dict[str, pd.Series] = {}  # per setting, the mean per seed (none without pair_by)
    for label, rows in data.groupby(labels, sort=False):
        samples[str(label)] = rows[value].to_numpy(dtype=float)
        if len(columns) == 3:
            by_seed[str(label)] = rows[value].astype(float).groupby(rows[pair_by].map(setting_label)).mean()
    base = samples.get(baseline) if baseline is not None else None
    rows = []
    for label in sorted(samples, key=lambda s: (s != baseline, numeric_sort_key(s))):
        sample = samples[label]
        mean, low, high = _mean_interval(sample, confidence)
        row = {"setting": label, "n": len(sample), "mean": mean, "ci_low": low, "ci_high": high}
        row.update(diff=np.nan, diff_low=np.nan, diff_high=np.nan, verdict="", test="")
        if baseline is not None and label == baseline:
            row["verdict"] = "baseline"
        elif base is not None:
            seeds, base_seeds = by_seed.get(label, pd.Series()), by_seed.get(baseline, pd.Series())
            shared = seeds.index.intersection(base_seeds.index)
            if len(shared) >= 2:
                interval = paired_interval(seeds[shared].to_numpy(), base_seeds[shared].to_numpy(), confidence)
                row["test"] = f"paired over {len(shared)} seeds"
            else:
                interval = welch_interval(sample, base, confidence)
                row["test"] = "Welch"
            row.update(zip(("diff", "diff_low", "diff_high"), interval, strict=True))
            row["verdict"] = verdict(interval[1], interval[2])
        elif baseline is not None:
            row["verdict"] = "no baseline"
        rows.append(row)
    columns = ["setting", "n", "mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "verdict", "test"]
    return pd.DataFrame(rows, columns=columns)


def verdict(low: float, high: float) -> str:
    """What an interval of a difference says: "not significant" wherever it contains zero."""
    if math.isnan(low):
        return "too few seeds"
    return "not significant" if low <= 0 <= high else "significant"


def _mean_interval(sample: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Mean and its t-interval; no interval from fewer than two values."""
    mean = float(np.mean(sample)) if len(sample) else np.nan
    if len(sample) < 2:
        return mean, np.nan, np.nan
    if np.ptp(sample) == 0:
        return mean, mean, mean
    low, high = stats.t.interval(confidence, len(sample) - 1, loc=mean, scale=stats.sem(sample))
    return mean, float(low), float(high)


def welch_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its interval without assuming equal variances (scipy's Welch t-test)."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, np.nan, np.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:  # no spread: scipy's interval is undefined, the difference is exact
        return diff, diff, diff
    with warnings.catch_warnings():
        if min(np.ptp(a), np.ptp(b)) == 0:  # scipy warns of "precision loss" in the variance of equal values: it is 0
            warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.ttest_ind(a, b, equal_var=False).confidence_interval(confidence)
    return diff, float(interval.low), float(interval.high)


def paired_interval(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float]:
    """mean(a - b) over pairs (the same seed under two settings) and its t-interval (scipy's paired t-test)."""
    diff = float(np.mean(np.subtract(a, b)))
    if len(a) < 2:
        return diff, np.nan, np.nan
    if np.ptp(np.subtract(a, b)) == 0:  # every pair differs alike: the interval is that difference
        return diff, diff, diff
    interval = stats.ttest_rel(a, b).confidence_interval(confidence)
    return diff, float(interval.low), float(interval.high)


def weighted_effects(
    design: pd.DataFrame, y: pd.Series, std: pd.Series, terms: list[str], confidence: float = 0.95
) -> pd.DataFrame:
    """Coefficients of ``terms`` in a weighted least-squares fit of ``y`` on ``design`` (plus an intercept), each
    with its t-interval and verdict; indexed by term.

    A measured final is as good as the seed noise allows; a predicted one is worse by its pred_std. So each row
    weighs 1 / (std² + noise), noise being the residual variance of an unweighted fit, and the interval uses the
    weighted fit's residual scale with n - p degrees of freedom (scipy's t distribution).
    """
    x = np.column_stack([np.ones(len(design)), design.to_numpy(dtype=float)])
    target = y.to_numpy(dtype=float)
    dof = len(target) - np.linalg.matrix_rank(x)
    columns = ["coef", "low", "high", "verdict"]
    if dof < 1:
        return pd.DataFrame([[np.nan, np.nan, np.nan, "too few trials"]] * len(terms), index=terms, columns=columns)
    residuals = target - x @ np.linalg.lstsq(x, target, rcond=None)[0]
    noise = max(float(residuals @ residuals) / dof, 1e-12)
    root = np.sqrt(1.0 / (std.to_numpy(dtype=float) ** 2 + noise))
    xw, yw = x * root[:, None], target * root
    coef = np.linalg.lstsq(xw, yw, rcond=None)[0]
    scale = float((yw - xw @ coef) @ (yw - xw @ coef)) / dof
    se = np.sqrt(np.diag(scale * np.linalg.pinv(xw.T @ xw)))
    low, high = stats.t.interval(confidence, dof, loc=coef, scale=np.maximum(se, 1e-15))
    rows = []
    for term in terms:
        at = 1 + list(design.columns).index(term)
        rows.append([coef[at], low[at], high[at], verdict(low[at], high[at])])
    return pd.DataFrame(rows, index=terms, columns=columns)


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
