"""The scheduler benchmark, end to end on a tiny bank through real Ray Tune."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from clp_tune.bench.replay import _regret_within, _targets, _timeline_metrics, run_scheduler_benchmark
from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.cli import main
from clp_tune.stopping.bank_library import load_bank
from clp_tune.stopping.features import trajectories_from_frame
from clp_tune.vocabulary import SCHEDULER_TYPES


def test_timeline_metrics() -> None:
    trajectories = {t.config["trial_id"]: t for t in trajectories_from_frame(synthetic_bank(3, 4, seed=0))}
    ids = list(trajectories)
    best = max(t.final for t in trajectories.values())
    metrics = _timeline_metrics([(ids[0], 4), (ids[1], 2), (ids[2], 4)], trajectories, best, 12)
    assert metrics["total_epochs"] == 10 and metrics["epoch_ratio"] == pytest.approx(10 / 12)
    assert [c for c, _ in metrics["finished"]] == [4, 10]  # the second trial was stopped: not a final
    assert math.isnan(_regret_within(metrics["finished"], 3, best))  # nothing had finished within 3 epochs
    assert _regret_within(metrics["finished"], 10, best) == pytest.approx(metrics["regret_points"])


def test_bank_schema_is_checked(tmp_path: Path, capsys) -> None:
    bank = synthetic_bank(2, 3, seed=0)
    bank.drop(columns=["val_acc"]).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="val_acc"):
        load_bank(tmp_path / "bad.parquet")
    with pytest.raises(FileNotFoundError):
        load_bank(tmp_path / "missing.parquet")
    for bad in ("bad.parquet", "missing.parquet"):  # the CLI says which option, exits 2, and never starts Ray
        assert main(["bench", "schedulers", "--bank", str(tmp_path / bad)]) == 2
        assert "--bank" in capsys.readouterr().err
    assert main(["bench", "schedulers", "--delta", "2"]) == 2
    assert "0 < delta < 1" in capsys.readouterr().err


def test_benchmark_on_a_tiny_bank_through_ray(ray_local, tmp_path: Path, capsys) -> None:
    bank_path = tmp_path / "bank.parquet"
    synthetic_bank(8, 6, seed=4)[["trial_id", "epoch", "val_acc", "train_acc", "train_loss", "config/dropout",
                                  "config/lr", "config/epochs"]].to_parquet(bank_path)  # fmt: skip
    out = tmp_path / "bench.json"
    result = run_scheduler_benchmark(str(bank_path), repetitions=1, out_json=str(out), folds=2)
    table = capsys.readouterr().out
    assert all(name in table for name in SCHEDULER_TYPES) and "Spearman" in table
    saved = json.loads(out.read_text())
    assert saved["trials"] == 8 and saved["budget"] == 6 and saved["repetitions"] == 1
    for name in SCHEDULER_TYPES:
        s = saved["schedulers"][name]
        for key in ("total_epochs", "epoch_ratio", "best_final", "regret_points", "regret_points_max",
                    "epochs_to_near_best", "regret_at_asha_budget", "regret_at_2x_asha_budget", "seconds"):  # fmt: skip
            assert key in s and (key == "regret_points_max" or len(s[f"{key}_per_order"]) == 1)
    fifo = saved["schedulers"]["fifo"]
    assert fifo["total_epochs"] == 48 and fifo["regret_points"] == 0 and fifo["epoch_ratio"] == 1
    assert saved["schedulers"]["asha"]["total_epochs"] < 48
    assert set(saved["spearman"]) == {"trajectory", "last_value", "curve_fit"}
    assert set(saved["spearman"]["trajectory"]) == {"0.1", "0.25", "0.5"}
    assert result["schedulers"]["trajectory"]["total_epochs"] <= 48
    assert set(saved["targets"]) == {
        "spearman_at_25pct_ge_0.92", "spearman_at_10pct_ge_last_value_plus_0.1",
        "epochs_le_0.15_and_regret_le_0.1_every_order", "regret_at_asha_budget_below_asha",
        "regret_at_2x_asha_budget_below_asha",
    }  # fmt: skip
    assert all(isinstance(t["met"], bool) for t in saved["targets"].values())


def test_matched_budget_targets_tell_a_tie_from_a_win() -> None:
    def result(ours: float, asha: float) -> dict:
        runs = {"trajectory": {"regret_at_asha_budget": ours, "regret_at_2x_asha_budget": ours},
                "asha": {"regret_at_asha_budget": asha, "regret_at_2x_asha_budget": asha}}  # fmt: skip
        spearman = {"trajectory": {"0.1": 0.9, "0.25": 0.95}, "last_value": {"0.1": 0.7}}
        return {"schedulers": runs, "spearman": spearman}

    tie = _targets(result(0.0, 0.0))["regret_at_asha_budget_below_asha"]
    assert not tie["met"] and tie["tied_at_zero"]
    win = _targets(result(0.3, 1.3))["regret_at_2x_asha_budget_below_asha"]
    assert win["met"] and not win["tied_at_zero"]
    assert not _targets(result(1.3, 0.3))["regret_at_asha_budget_below_asha"]["met"]
