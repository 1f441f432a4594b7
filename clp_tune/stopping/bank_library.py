"""Trajectory banks: the Parquet files of recorded learning curves the predictor's prior is fitted on.

A bank is one row per (trial, epoch): ``trial_id``, ``epoch`` (1..T), ``val_acc`` (required), optional curve and
statistic columns and ``config/<knob>`` columns (see :data:`clp_tune.stopping.predictor.BANK_DOC`). The shipped
bank lies in ``banks/`` next to this module; ``clp-tune bank record`` (``clp_tune.bench.record``) makes new ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

BANKS_DIR = Path(__file__).parent / "banks"
SHIPPED_BANK = BANKS_DIR / "bank_mnist1d.parquet"
#: The dataset the shipped bank was recorded on: its curves would mislead the prior on other datasets.
SHIPPED_BANK_DATASET = "mnist1d"


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
