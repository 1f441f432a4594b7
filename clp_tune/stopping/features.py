"""What the predictor sees of a trial: features of its partial trajectory, and whole trajectories read from a bank.

Budgets may differ between the bank and the search, so everything is indexed by the fraction f = epoch / budget.
A feature whose column a trial does not report is NaN, so the predictor can tell which features the trial has and
fit its trees on those alone (a bank or a trial with val_acc curves only works too).

The feature order is fixed by :func:`trajectory_features` (the trees subsample features by position): the
statistic and model features follow :data:`clp_tune.vocabulary.STATISTIC_COLUMNS` and
:data:`clp_tune.vocabulary.MODELS` in their order.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from clp_tune.stopping.curves import SMOOTH, curve_extrapolation
from clp_tune.vocabulary import CURVE_COLUMNS, MODELS, STATISTIC_COLUMNS

BANK_DOC = """\
One row per (trial, epoch): trial_id (str), epoch (int, 1..T), val_acc (required); optional val_loss, train_acc,
train_loss, lr, statistic columns and config/<key> columns. Budget T = config/epochs if present, else max epoch."""

#: Columns of a trial's history that the predictor reads; everything else in a result is ignored.
HISTORY_COLUMNS = CURVE_COLUMNS + STATISTIC_COLUMNS
#: Budget fractions at which training examples are cut from each finished trajectory.
FRACTIONS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.7, 0.9)
_SLOPE = 5  # epochs in the recent-slope window

History = Mapping[str, Sequence[float]]


def _finite(values: Sequence[float] | None) -> np.ndarray:
    if values is None:
        return np.empty(0)
    a = np.asarray(values, dtype=float)
    return a[np.isfinite(a)]


def _slope(y: np.ndarray, budget: int) -> float:
    """Least-squares slope of the last few values per unit of budget fraction (so budgets compare)."""
    y = y[-_SLOPE:]
    if len(y) < 2:
        return 0.0
    x = np.arange(len(y), dtype=float) - (len(y) - 1) / 2
    return float((x @ y) / (x @ x) * budget)


def jitter(val_acc: Sequence[float]) -> float:
    """The spread of a curve's last few epoch-to-epoch changes (its finite values; 0 with fewer than three)."""
    values = _finite(val_acc[-_SLOPE - 1 :])
    return float(np.std(np.diff(values))) if len(values) > 2 else 0.0


def _signed_log(v: float) -> float:
    return math.copysign(math.log1p(abs(v)), v)


def _config_value(config: Mapping[str, Any], key: str) -> Any:
    if key in config:
        return config[key]
    return config.get(f"config/{key}")


def _number(value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return math.nan
    return out if math.isfinite(out) else math.nan


def planned_epochs(config: Mapping[str, Any], default: int) -> int:
    """A trial's budget: its ``epochs`` (or ``config/epochs``) key when positive, else ``default``."""
    epochs = _number(_config_value(config, "epochs"))
    return int(epochs) if epochs > 0 else default


def _config_features(config: Mapping[str, Any]) -> dict[str, float]:
    """Hyperparameters that set the noise scale and the regularization strength, on scales trees split well."""
    lr, bs = _number(_config_value(config, "lr")), _number(_config_value(config, "batch_size"))
    out = {
        "log_lr": math.log10(lr) if lr > 0 else math.nan,
        "log_batch_size": math.log2(bs) if bs > 0 else math.nan,
        "log_noise_scale": math.log10(lr / bs) if lr > 0 and bs > 0 else math.nan,
        "dropout": _number(_config_value(config, "dropout")),
        "label_noise": _number(_config_value(config, "label_noise")),
        "log_weight_decay": math.log10(_number(_config_value(config, "weight_decay")) + 1e-6),
        "mixup_alpha": _number(_config_value(config, "mixup_alpha")),
        "momentum": _number(_config_value(config, "momentum")),
        "high_loss_q": _number(_config_value(config, "high_loss_q")),
    }
    for key, level in (("optimizer", "adamw"), ("lr_schedule", "cosine"), ("pretrain", "none")):
        value = _config_value(config, key)
        out[f"{key}_is_{level}"] = math.nan if value is None else float(str(value) == level)
    model = _config_value(config, "model")
    for name in MODELS:
        out[f"model_is_{name}"] = math.nan if model is None else float(str(model) == name)
    return out


def _finite_values(values: Iterable[float | None]) -> Iterator[float]:
    """The finite values of a column as floats, in the order given (None, NaN and inf left out)."""
    for value in values:
        value = math.nan if value is None else float(value)
        if math.isfinite(value):
            yield value


def _tail(values: Sequence[float] | None, n: int) -> np.ndarray:
    """The last ``n`` finite values of a column, in order: ``_finite(values)[-n:]`` without converting the whole
    column, which a decision would otherwise do for every column at every epoch."""
    last = list(itertools.islice(_finite_values(reversed(() if values is None else values)), n))
    return np.array(last[::-1], dtype=float)


def _first_finite(values: Sequence[float] | None) -> float:
    """The first finite value of a column (NaN if none is)."""
    return next(_finite_values(() if values is None else values), math.nan)


def trajectory_features(history: History, config: Mapping[str, Any], budget: int) -> dict[str, float]:
    """Features of a trajectory observed up to epoch t = len(history["val_acc"]); NaN where a column is absent.

    Only the whole val_acc, val_loss and train_loss columns are read (the extrapolation, the loss's minimum, the
    training loss's mean); of the others, their last few finite values."""
    val = np.asarray(history["val_acc"], dtype=float)
    val = np.where(np.isfinite(val), val, 0.0)
    t = len(val)
    level = float(val[-SMOOTH:].mean())
    extrapolated, disagreement = curve_extrapolation(val, budget)
    f: dict[str, float] = {
        "fraction": t / budget,
        "val_acc_last": float(val[-1]),
        "val_acc_level": level,
        "val_acc_max": float(val.max()),
        "val_acc_slope": _slope(val, budget),
        "val_acc_jitter": jitter(val),
        "curve_extrapolation": extrapolated,
        "curve_gain": extrapolated - level,
        "curve_disagreement": disagreement,
    }
    val_loss = _finite(history.get("val_loss"))
    train_acc = _tail(history.get("train_acc"), _SLOPE)
    train_loss = _finite(history.get("train_loss"))
    lr = _tail(history.get("lr"), 1)
    f["val_loss_last"] = float(val_loss[-SMOOTH:].mean()) if len(val_loss) else math.nan
    f["val_loss_rise"] = float(val_loss[-1] - val_loss.min()) if len(val_loss) else math.nan
    f["val_loss_slope"] = _slope(val_loss, budget) if len(val_loss) else math.nan
    f["train_acc_last"] = float(train_acc[-SMOOTH:].mean()) if len(train_acc) else math.nan
    f["generalization_gap"] = f["train_acc_last"] - level
    f["train_acc_slope"] = _slope(train_acc, budget) if len(train_acc) else math.nan
    f["train_loss_last"] = float(train_loss[-1]) if len(train_loss) else math.nan
    f["train_loss_mean"] = float(train_loss.mean()) if len(train_loss) else math.nan  # TSE / t, budget-free
    first_lr = _first_finite(history.get("lr"))
    f["lr_progress"] = float(lr[-1] / first_lr) if len(lr) and first_lr > 0 else math.nan
    for column in STATISTIC_COLUMNS:
        last = _tail(history.get(column), 1)
        f[f"stat_{column}"] = _signed_log(float(last[-1])) if len(last) else math.nan
    f.update(_config_features(config))
    return f


FEATURES = tuple(trajectory_features({"val_acc": [0.1]}, {}, 10))


@dataclass
class Trajectory:
    """One trial's whole run: its history columns, its config and its budget."""

    history: dict[str, list[float]]
    config: dict[str, Any]
    budget: int

    @property
    def epochs(self) -> int:
        return len(self.history["val_acc"])

    @property
    def final(self) -> float:
        return float(self.history["val_acc"][-1])

    def upto(self, epoch: int) -> dict[str, list[float]]:
        return {k: v[:epoch] for k, v in self.history.items()}


def trajectories_from_frame(frame: pd.DataFrame) -> list[Trajectory]:
    """Split a bank-schema frame into trajectories, in order of first appearance of each trial; a repeated epoch
    keeps its last row, and a trial's config is read from its first epoch.

    The frame is sorted and its columns converted once, then cut at each trial's rows: every search's prior splits
    thousands of bank trials, and pandas operations per trial cost seconds there.
    """
    if "val_acc" not in frame or "trial_id" not in frame or "epoch" not in frame:
        raise ValueError(f"a trajectory bank needs trial_id, epoch and val_acc columns. {BANK_DOC}")
    columns = [c for c in HISTORY_COLUMNS if c in frame]
    config_columns = [c for c in frame.columns if c.startswith("config/")]
    trial, ids = pd.factorize(frame["trial_id"])  # codes in order of first appearance; -1: no trial id
    kept = ~frame.duplicated(["trial_id", "epoch"], keep="last").to_numpy() & (trial >= 0)
    epochs = frame["epoch"].to_numpy()
    order = np.flatnonzero(kept)[np.lexsort((epochs[kept], trial[kept]))]
    if not len(order):
        return []
    rows = frame.iloc[order]
    history = {c: rows[c].astype(float).to_numpy() for c in columns}
    configs = {c[len("config/") :]: rows[c].to_numpy() for c in config_columns}  # each value as ``.iloc`` gives it
    epochs, trial = epochs[order], trial[order]
    starts = np.flatnonzero(np.r_[True, trial[1:] != trial[:-1]])
    out = []
    for start, end in zip(starts, [*starts[1:], len(order)], strict=True):
        config = {name: values[start] for name, values in configs.items()}
        config["trial_id"] = str(ids[trial[start]])
        out.append(Trajectory({c: values[start:end].tolist() for c, values in history.items()}, config,
                              planned_epochs(config, int(epochs[start:end].max()))))  # fmt: skip
    return out


def is_complete(trajectory: Trajectory) -> bool:
    """Ran its whole budget without diverging: its last val_acc is a true final."""
    diverged = trajectory.history.get("diverged")
    return trajectory.epochs >= trajectory.budget and not (diverged and diverged[-1] == 1)


def cut_epochs(budget: int) -> list[int]:
    """The epochs (one per :data:`FRACTIONS`, deduplicated) at which a finished trajectory of ``budget`` is cut."""
    return sorted({min(budget - 1, max(1, round(f * budget))) for f in FRACTIONS if budget > 1})
