"""The trajectory bank: the recorder writes the documented schema, and the shipped bank meets the issue's size."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from clp_tune.bench.record import SPACES, record_bank, sample_configs
from clp_tune.stopping.bank_library import SHIPPED_BANK, SUITE
from clp_tune.stopping.features import HISTORY_COLUMNS, planned_epochs, trajectories_from_frame
from clp_tune.vocabulary import DATASET_SHAPES, MODEL_INPUT_RANK, STATISTIC_COLUMNS


def test_recorder_writes_full_trajectories_with_config_columns(tmp_path: Path) -> None:
    bank = record_bank(tmp_path / "bank.parquet", trials=2, epochs=2, workers=1, seed=3)
    again = pd.read_parquet(tmp_path / "bank.parquet")
    assert len(again) == len(bank) == 4
    assert again.groupby("trial_id").epoch.apply(list).tolist() == [[1, 2], [1, 2]]
    for column in ("val_acc", "train_loss", "config/lr", "config/batch_size", "config/dropout", "config/epochs"):
        assert column in again, column
    assert (again["config/epochs"] == 2).all()


def test_sampled_configs_are_reproducible_and_varied() -> None:
    first, second = sample_configs(20, 40, seed=0), sample_configs(20, 40, seed=0)
    assert first == second
    assert len({c["lr"] for c in first}) == 20 and {c["batch_size"] for c in first} <= {64, 128, 256}
    for space, ranges in SPACES.items():
        for config in sample_configs(50, 40, seed=1, space=space):
            assert ranges["lr"][0] <= config["lr"] <= ranges["lr"][1]
            assert ranges["dropout"][0] <= config["dropout"] <= ranges["dropout"][1]


def test_shipped_bank_is_the_wide_space_sampled_with_seed_0() -> None:
    """`clp-tune bank record --task mnist1d_cnn1d_adamw_40` (the wide space, seed 0) reproduces the shipped bank's
    configurations."""
    shipped = pd.read_parquet(SHIPPED_BANK).groupby("trial_id").first()
    for config in sample_configs(len(shipped), 40, seed=0):
        row = shipped.loc[config["trial_id"]]
        assert abs(row["config/lr"] - config["lr"]) <= 1e-6 * config["lr"]
        assert abs(row["config/dropout"] - config["dropout"]) <= 1e-6


def test_shipped_bank_has_full_length_trajectories_with_all_statistics() -> None:
    bank = pd.read_parquet(SHIPPED_BANK)
    lengths = bank.groupby("trial_id").epoch.max()
    assert len(lengths) >= 200 and (lengths >= 40).all()
    for column in STATISTIC_COLUMNS:
        assert bank[column].notna().any(), column
    assert SHIPPED_BANK.stat().st_size < 5_000_000


def test_the_suite_spans_datasets_models_optimizers_and_budgets() -> None:
    tasks = list(SUITE.values())
    assert len(tasks) >= 5
    assert len({t.dataset for t in tasks}) >= 3 and len({t.model for t in tasks}) >= 3
    assert len({t.optimizer for t in tasks}) >= 2 and {20, 40, 100} <= {t.epochs for t in tasks}
    for task in tasks:
        assert task.trials >= 120 and task.dataset in DATASET_SHAPES and task.model in MODEL_INPUT_RANK


@pytest.mark.parametrize("name", sorted(SUITE))
def test_every_suite_bank_ships_complete_and_small(name: str) -> None:
    """Each task's bank: its trials run their whole budget with every statistic, recorded as the task says
    (`clp-tune bank record --task NAME` reproduces the configurations), under 1 MB so the package stays small."""
    task = SUITE[name]
    assert task.path.is_file(), f"{task.path} is missing: clp-tune bank record --task {name}"
    assert task.path.stat().st_size < 1_000_000
    bank = pd.read_parquet(task.path)
    lengths = bank.groupby("trial_id").epoch.max()
    assert len(lengths) == task.trials and (lengths == task.epochs).all()
    for column in STATISTIC_COLUMNS:
        assert bank[column].notna().any(), column
    configs = bank.groupby("trial_id").first()
    for config in sample_configs(
        task.trials, task.epochs, task.seed, task.space, task.dataset, task.model, task.optimizer
    ):
        assert abs(configs.loc[config["trial_id"], "config/lr"] - config["lr"]) <= 1e-6 * config["lr"]
        assert configs.loc[config["trial_id"], "config/optimizer"] == task.optimizer


def test_a_frame_splits_into_trajectories_in_order_of_appearance_keeping_a_repeated_epochs_last_row() -> None:
    rows = [
        {"trial_id": "b", "epoch": 2, "val_acc": 0.6, "config/lr": 0.3, "config/epochs": 2},
        {"trial_id": "a", "epoch": 1, "val_acc": 0.1, "config/lr": 0.1, "config/epochs": 3},
        {"trial_id": None, "epoch": 1, "val_acc": 0.9, "config/lr": 0.5, "config/epochs": 3},
        {"trial_id": "b", "epoch": 1, "val_acc": 0.5, "config/lr": 0.2, "config/epochs": 2},
        {"trial_id": "a", "epoch": 2, "val_acc": 0.4, "config/lr": 0.1, "config/epochs": 3},
        {"trial_id": "a", "epoch": 1, "val_acc": 0.2, "config/lr": 0.15, "config/epochs": 3},  # epoch 1 again
    ]
    b, a = trajectories_from_frame(pd.DataFrame(rows))  # the row without a trial id belongs to none
    assert (b.config["trial_id"], b.history["val_acc"], b.config["lr"], b.budget) == ("b", [0.5, 0.6], 0.2, 2)
    assert (a.config["trial_id"], a.history["val_acc"], a.config["lr"], a.budget) == ("a", [0.2, 0.4], 0.15, 3)
    assert trajectories_from_frame(pd.DataFrame(rows).iloc[:0]) == []


def test_splitting_a_shuffled_bank_matches_splitting_it_trial_by_trial() -> None:
    """The split, which sorts the whole frame once, against the plain definition (pandas, one trial at a time) on a
    shipped bank shuffled and with a seventh of its rows repeated (the repeats later, so they are kept)."""
    bank = pd.read_parquet(SUITE["digits_convnet_adamw_20"].path)
    frame = pd.concat([bank.sample(frac=1.0, random_state=0), bank.iloc[::7].assign(val_acc=lambda f: f.val_acc / 2)])
    expected = []
    for trial_id, trial in frame.groupby("trial_id", sort=False):
        trial = trial.drop_duplicates("epoch", keep="last").sort_values("epoch")
        config = {c[len("config/") :]: trial[c].iloc[0] for c in frame.columns if c.startswith("config/")}
        history = {c: trial[c].astype(float).tolist() for c in HISTORY_COLUMNS if c in frame}
        expected.append((history, {**config, "trial_id": str(trial_id)}, planned_epochs(config, trial.epoch.max())))
    got = [(t.history, t.config, t.budget) for t in trajectories_from_frame(frame)]
    assert repr(got) == repr(expected)  # the values, and their types (the config's numpy scalars)
