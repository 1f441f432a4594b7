"""Trajectory banks: the Parquet files of recorded learning curves the predictor's prior is fitted on.

A bank is one row per (trial, epoch): ``trial_id``, ``epoch`` (1..T), ``val_acc`` (required), optional curve and
statistic columns and ``config/<knob>`` columns (see :data:`clp_tune.stopping.features.BANK_DOC`). The shipped
bank lies in ``banks/`` next to this module; ``clp-tune bank record`` (``clp_tune.bench.record``) makes new ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
    )
}  # fmt: skip


def load_bank(path: str | Path | None) -> pd.DataFrame:
    """Read a bank Parquet (default: the shipped one) and check its schema."""
    import pandas as pd

    path = Path(path) if path else SHIPPED_BANK
    if not path.is_file():
        raise FileNotFoundError(f"no trajectory bank at {path}")
    bank = pd.read_parquet(path)
    missing = {"trial_id", "epoch", "val_acc"} - set(bank.columns)
    if missing:
        raise ValueError(f"{path}: a bank needs trial_id, epoch and val_acc columns; missing {sorted(missing)}")
    bank = bank.assign(trial_id=bank["trial_id"].astype(str), epoch=bank["epoch"].astype(int))
    return bank.drop_duplicates(["trial_id", "epoch"], keep="last").sort_values(["trial_id", "epoch"], kind="stable")
