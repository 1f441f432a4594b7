"""Trajectory banks: the Parquet files of recorded learning curves the predictor's prior is fitted on.

A bank is one row per (trial, epoch): ``trial_id``, ``epoch`` (1..T), ``val_acc`` (required), optional curve and
statistic columns and ``config/<knob>`` columns (see :data:`clp_tune.stopping.features.BANK_DOC`). The shipped
bank lies in ``banks/`` next to this module; ``clp-tune bank record`` (``clp_tune.bench.record``) makes new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from clp_tune.inputs import one_line

if TYPE_CHECKING:
    import pandas as pd

BANKS_DIR = Path(__file__).parent / "banks"
SHIPPED_BANK = BANKS_DIR / "bank_mnist1d.parquet"


@dataclass(frozen=True)
class BankTask:
    """One task of the shipped bank suite: what was trained (dataset, model, optimizer, budget) and how the
    configurations were drawn (``clp_tune.bench.record.SPACES[space]`` with ``seed``), so it can be recorded again."""

    name: str
    dataset: str
    model: str
    optimizer: str
    epochs: int
    trials: int
    space: str
    seed: int
    file: str = ""  # default: <name>.parquet

    @property
    def path(self) -> Path:
        return BANKS_DIR / (self.file or f"{self.name}.parquet")


#: The shipped banks, one per task: several datasets, model families, optimizers and budgets, so a prior fitted on
#: the other tasks can be judged on each one (leave-task-out).
SUITE: dict[str, BankTask] = {
    task.name: task
    for task in (
        BankTask("mnist1d_cnn1d_adamw_40", "mnist1d", "cnn1d", "adamw", 40, 200, "wide", 0, "bank_mnist1d.parquet"),
        BankTask("digits_mlp_sgd_100", "digits", "mlp", "sgd", 100, 120, "sgd", 11),
        BankTask("digits_convnet_adamw_20", "digits", "convnet", "adamw", 20, 120, "wide", 12),
        BankTask("tabular_mlp_adamw_40", "tabular", "mlp", "adamw", 40, 120, "wide", 13),
        BankTask("tabular_cnn1d_sgd_20", "tabular", "cnn1d", "sgd", 20, 120, "sgd", 14),
        BankTask("mnist1d_mlp_sgd_30", "mnist1d", "mlp", "sgd", 30, 120, "sgd", 15),
        BankTask("mnist1d_cnn1d_sgd_20", "mnist1d", "cnn1d", "sgd", 20, 120, "sgd", 16),
        BankTask("digits_mlp_adamw_30", "digits", "mlp", "adamw", 30, 120, "wide", 17),
        BankTask("tabular_cnn1d_adamw_30", "tabular", "cnn1d", "adamw", 30, 120, "wide", 18),
    )
}  # fmt: skip


def load_bank(path: str | Path | None) -> pd.DataFrame:
    """Read a bank Parquet (default: the shipped one) and check its schema and values.

    A bank is the predictor's prior: a bad one would be fitted silently (a string or NaN accuracy poisons every
    fit, a repeated epoch makes a trajectory ambiguous, a bank of unfinished trials has no final to learn), so
    each of those is a ValueError of one line naming the file and the column.
    """
    import pandas as pd
    import pyarrow

    from clp_tune.stopping.features import is_complete, trajectories_from_frame

    path = Path(path) if path else SHIPPED_BANK
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory bank at {path}")
    try:
        bank = pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as error:
        raise ValueError(f"{path}: not a readable Parquet file ({one_line(error)})") from None
    missing = [c for c in ("trial_id", "epoch", "val_acc") if c not in bank.columns]
    if missing:
        raise ValueError(f"{path}: a bank needs trial_id, epoch and val_acc columns; missing column {missing[0]}")
    for column in ("epoch", "val_acc"):
        values = pd.to_numeric(bank[column], errors="coerce")
        if not pd.api.types.is_numeric_dtype(bank[column]) or pd.api.types.is_bool_dtype(bank[column]):
            bad = bank.loc[values.isna(), column]
            shown = repr(bad.iloc[0]) if len(bad) else f"dtype {bank[column].dtype}"
            raise ValueError(f"{path}: column {column}: expected numbers, got {shown}")
        if values.isna().any():
            row = bank.loc[values.isna()].iloc[0]
            raise ValueError(f"{path}: column {column}: expected numbers without NaN, got NaN in "
                             f"{int(values.isna().sum())} row(s) (first: trial {row['trial_id']!r})")  # fmt: skip
    if ((bank["epoch"] < 1) | (bank["epoch"] % 1 != 0)).any():
        raise ValueError(f"{path}: column epoch: expected whole numbers >= 1, got {bank['epoch'].min()!r} or others")
    bank = bank.assign(trial_id=bank["trial_id"].astype(str), epoch=bank["epoch"].astype(int))
    repeated = bank.duplicated(["trial_id", "epoch"])
    if repeated.any():
        row = bank.loc[repeated].iloc[0]
        raise ValueError(f"{path}: column epoch: trial {row['trial_id']!r} has epoch {row['epoch']} more than once "
                         f"({int(repeated.sum())} repeated row(s)); expected one row per trial and epoch")  # fmt: skip
    if not any(is_complete(t) for t in trajectories_from_frame(bank)):
        raise ValueError(f"{path}: column epoch: no trial ran its whole budget (config/epochs, else its last epoch) "
                         f"without diverging, so the bank has no final val_acc to learn from")  # fmt: skip
    return bank.sort_values(["trial_id", "epoch"], kind="stable")
