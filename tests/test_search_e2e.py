"""Real Ray Tune searches of a few tiny trials, end to end: Parquet tables, Ray's own results, the report."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from conftest import ARTIFACTS, assert_report_renders, tiny_spec

from clp_tune.search import run_search
from clp_tune.spec import parse_spec

METRICS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "diverged")


@pytest.fixture(scope="module")
def fifo_run(ray_local, tmp_path_factory):
    root = tmp_path_factory.mktemp("fifo")
    spec = parse_spec(
        tiny_spec(
            num_samples=4,
            params={"lr": {"loguniform": [0.001, 0.01]}, "batch_size": 64, "mixup_off": 1, "mixup_alpha": 0.4,
                    "high_loss_q": {"grid": [0.0, 0.5]}},
        )
    )  # fmt: skip
    return run_search(spec, storage_path=root / "runs", run_name="fifo-run", reports_dir=root / "reports")


def test_trajectories_parquet_has_every_row_and_config(fifo_run) -> None:
    rows = pd.read_parquet(fifo_run.run_dir / "trajectories.parquet")
    trials = pd.read_parquet(fifo_run.run_dir / "trials.parquet")
    assert len(trials) == 8  # 4 samples x 2 grid values
    finished = trials[trials.status == "finished"]
    assert len(finished) == 8
    for column in METRICS + ("trial_id", "config/lr", "config/mixup_off", "config/seed", "grad_norm", "tse"):
        assert column in rows.columns, column
    per_trial = rows.groupby("trial_id").epoch.apply(list)
    for trial_id in finished.trial_id:
        assert per_trial[trial_id] == [1, 2, 3]
    assert finished.test_acc.notna().all() and finished.test_acc.between(0, 1).all()
    assert rows.val_acc.between(0, 1).all()


def test_ray_results_stay_readable(fifo_run) -> None:
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(fifo_run.run_dir))
    assert len(analysis.trials) == 8
    frame = analysis.dataframe(metric="val_acc", mode="max")
    assert "val_acc" in frame


def test_report_is_written_offline(fifo_run) -> None:
    html = (fifo_run.report_dir / "index.html").read_text()
    assert html.count("plotly.js v") == 1  # inlined once, never fetched
    assert '<script src="http' not in html and "<script src='http" not in html
    assert (fifo_run.run_dir / "report" / "index.html").exists()


def test_real_report_renders_in_chromium(fifo_run) -> None:
    """The report of this real run draws every chart in headless Chromium with a clean console."""

    assert_report_renders(fifo_run.report_dir / "index.html", ARTIFACTS / "report-real-run.png")


def test_optuna_with_asha(ray_local, tmp_path: Path) -> None:
    spec = parse_spec(tiny_spec(searcher="optuna", scheduler={"type": "asha", "grace_period": 1}, num_samples=4,
                                epochs=4))  # fmt: skip
    paths = run_search(spec, storage_path=tmp_path / "runs", run_name="asha-run", reports_dir=tmp_path / "reports")
    trials = pd.read_parquet(paths.run_dir / "trials.parquet")
    assert len(trials) == 4 and set(trials.status) <= {"finished", "stopped"}
    assert trials["config/lr"].nunique() == 4
    assert (paths.report_dir / "index.html").exists()
