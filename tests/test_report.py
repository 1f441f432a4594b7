"""Tests for clp_tune.report on synthetic run directories written in the contract's schema.

``write_synthetic_run`` (conftest.py) builds a small search (12 trials x 10 epochs, Mixup-off window in
{0, 2, 0.2} x 4 seeds, two stopped, one diverged, one errored) without running Ray; ``write_large_synthetic_run``
a 500-trial search in which most trials were stopped.
"""

from __future__ import annotations

import inspect
import json
import re
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.offline
import pytest
import yaml
from conftest import SPEC_TEXT, write_large_synthetic_run, write_synthetic_run
from scipy import stats

from clp_tune.report.curves import MAX_STOPPED_LINES
from clp_tune.report.outcomes import outcomes
from clp_tune.report.page import write_report
from clp_tune.report.parameters import searched_params
from clp_tune.report.run import load_run
from clp_tune.report.scheduler import MIN_TRIALS_FOR_BACKTEST
from clp_tune.report.statistics import decisions_near, group_ci, paired_interval, setting_label, weighted_effects
from clp_tune.spec import parse_spec
from clp_tune.stopping.scheduler import TrajectoryScheduler
from clp_tune.vocabulary import DECISIONS_FILE, PRIOR_BANKS_FILE, SPEC_FILE, TRAJECTORIES_FILE, TRIALS_FILE


def _figure_count(page: str) -> int:
    return int(re.search(r'data-figure-count="(\d+)"', page).group(1))


@pytest.fixture(scope="module")
def trajectory_page(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("trajectory")
    path = write_report(write_synthetic_run(root / "run"), root / "report")
    assert path == root / "report" / "index.html"
    return path.read_text(encoding="utf-8")


def test_page_is_offline_with_plotly_inlined_once(trajectory_page: str) -> None:
    plotly_js = plotly.offline.get_plotlyjs()
    assert trajectory_page.count(plotly_js) == 1
    assert trajectory_page.count("* plotly.js v") == 1
    rest = trajectory_page.replace(plotly_js, "")
    assert "cdn.plot.ly" not in rest
    assert not re.search(r"<script[^>]*\bsrc=", rest), "no external scripts"
    assert not re.search(r"""(src|href)=["']?https?://""", rest), "no network resources"
    assert len(trajectory_page.encode()) < 6_000_000
    assert len(rest.encode()) < 300_000, "figures and tables stay small next to plotly.js"


def test_every_section_and_figure_present(trajectory_page: str) -> None:
    for heading in ("Summary", "Learning curves", "Trajectory scheduler", "Parameter effects", "Mixup-off window",
                    "Pretraining", "Trajectory statistics", "Trials", "Spec"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in trajectory_page
    figures = trajectory_page.count('<div class="clp-figure">')
    assert figures == _figure_count(trajectory_page)
    # curves, prediction scatter, stop chart, anytime, importances, parallel coordinates, slices, mixup effect,
    # statistics
    assert figures == 9
    assert trajectory_page.count('class="plotly-graph-div"') == figures
    assert '"type":"parcoords"' in trajectory_page


def test_summary_numbers(trajectory_page: str) -> None:
    assert "12 run — 8 finished, 2 stopped, 1 diverged, 1 errored" in trajectory_page
    # spent 8*10 + 4 + 6 + 1 + 0 = 91 of 120 epochs
    assert "Epochs spent: 91 of the 120" in trajectory_page
    assert "24.2 % compute saved" in trajectory_page
    assert "Trial time:" in trajectory_page
    assert "Back-test on finished trials" in trajectory_page
    assert "p_beat &lt; 0.05" in trajectory_page


def test_user_text_is_escaped(trajectory_page: str) -> None:
    assert 'alert("spec")' not in trajectory_page
    assert "&lt;script&gt;alert(&quot;spec&quot;)&lt;/script&gt;" in trajectory_page
    assert 'alert("error")' not in trajectory_page
    assert "CUDA &lt;script&gt;" in trajectory_page
    assert "a &lt;b&gt;synthetic&lt;/b&gt; search" in trajectory_page


def test_fifo_run_without_decisions_or_statistics(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", scheduler="fifo", statistics=False)
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    assert "no decisions.parquet" in page
    assert "recorded no trajectory statistics" in page
    assert "No critical-period detector is marked" in page
    figures = page.count('<div class="clp-figure">')
    # curves, anytime, importances, parallel coordinates, slices, mixup effect
    assert figures == _figure_count(page) == 6


def test_pretrain_modes_are_compared(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run", pretrain=True)
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    section = page[page.index('<section id="pretrain">') :]
    section = section[: section.index("</section>")]
    assert "mean pretrain_recon_error" in section
    assert "stacked" in section and "clp-figure" in section


def test_mixup_comparison_leaves_out_trials_without_mixup(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    trials = pd.read_parquet(run / TRIALS_FILE)
    trials.loc[trials["trial_id"].isin(["t00", "t04"]), "config/mixup_alpha"] = 0.0
    trials.to_parquet(run / TRIALS_FILE)
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    section = page[page.index('<section id="mixup">') :]
    section = section[: section.index("</section>")]
    assert "with Mixup on" in section
    # t00 (mixup_off 0) and t04 (mixup_off 2) leave: 2 + 2 + 2 finished trials remain
    assert [int(n) for n in re.findall(r'<tr><td data-value="[^"]*">[^<]*</td><td data-value="(\d+)"', section)] == [
        2,
        2,
        2,
    ]


def test_run_with_nothing_finished_still_renders(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    trials = pd.read_parquet(run / TRIALS_FILE)
    trials.loc[trials["status"] == "finished", "status"] = "stopped"
    trials.to_parquet(run / TRIALS_FILE)
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    assert "No trial finished" in page
    assert page.count('<div class="clp-figure">') == _figure_count(page)


def test_minimal_run_directory_renders(tmp_path: Path) -> None:
    """Only the contract's required columns, no spec.yaml, no config: every section degrades to a sentence."""
    run = tmp_path / "run"
    run.mkdir()
    pd.DataFrame({"trial_id": ["a", "a", "b"], "epoch": [1, 2, 1], "val_acc": [0.3, 0.5, 0.2]}).to_parquet(
        run / TRAJECTORIES_FILE
    )
    trials = {"trial_id": ["a", "b"], "status": ["finished", "stopped"], "error": [None, None], "epochs": [2, 1]}
    trials.update(val_acc=[0.5, 0.2], best_val_acc=[0.5, 0.2], test_acc=[0.45, np.nan])
    pd.DataFrame(trials).to_parquet(run / TRIALS_FILE)
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    assert "The run directory has no spec.yaml." in page
    assert "searches no parameter" in page
    assert "Epochs spent: 3 of the 4" in page
    assert page.count('<div class="clp-figure">') == _figure_count(page) == 2  # curves, anytime


def test_spec_that_does_not_validate_still_renders(tmp_path: Path) -> None:
    """An older run's spec.yaml that the current parser rejects: its text is shown, with why, and the
    searched-parameter sections say they need a valid spec; the other sections render from the tables."""
    run = write_synthetic_run(tmp_path / "run")
    spec = (run / SPEC_FILE).read_text()
    (run / SPEC_FILE).write_text(spec.replace("num_samples: 12\n", "retired_key: 1\n"))
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    params = _section(page, "params")
    assert "the searched-parameter sections need a valid spec" in params and "clp-figure" not in params
    spec_section = _section(page, "spec")
    assert "This spec does not validate" in spec_section and "retired_key: unknown key" in spec_section
    assert "retired_key: 1" in spec_section and "&lt;script&gt;alert(&quot;spec&quot;)" in spec_section
    assert "clp-figure" in _section(page, "mixup") and "Back-test on finished trials" in page
    # curves, scatter, stops, anytime, mixup, stats
    assert page.count('<div class="clp-figure">') == _figure_count(page) == 6


def test_missing_tables_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="trials.parquet"):
        write_report(tmp_path, tmp_path / "out")


def test_group_ci_matches_welch_and_flags_not_significant() -> None:
    frame = pd.DataFrame(
        {
            "mixup_off": [0, 0, 0, 0, 2, 2, 2, 2, "0.2", "0.2", "0.2"],
            "val_acc": [0.70, 0.71, 0.72, 0.71, 0.80, 0.81, 0.82, 0.80, 0.69, 0.74, 0.70],
        }
    )
    effects = group_ci(frame, "mixup_off", "val_acc", baseline="0").set_index("setting")
    assert list(effects.index) == ["0", "0.2", "2"]
    assert effects.loc["0", "verdict"] == "baseline"
    assert effects.loc["2", "verdict"] == "significant"
    assert effects.loc["0.2", "verdict"] == "not significant"
    base, other = frame["val_acc"][:4], frame["val_acc"][8:]
    expected = stats.ttest_ind(other, base, equal_var=False).confidence_interval(0.95)
    assert effects.loc["0.2", "diff_low"] == pytest.approx(expected.low)
    assert effects.loc["0.2", "diff_high"] == pytest.approx(expected.high)
    mean_ci = stats.t.interval(0.95, 3, loc=base.mean(), scale=stats.sem(base))
    assert (effects.loc["0", "ci_low"], effects.loc["0", "ci_high"]) == pytest.approx(mean_ci)


def test_group_ci_edge_cases() -> None:
    frame = pd.DataFrame({"k": ["0", "0", "1", "2", "2"], "v": [0.5, 0.6, 0.7, 0.8, 0.8]})
    with warnings.catch_warnings():  # "2" has equal values (variance 0): nothing may warn about it
        warnings.simplefilter("error")
        effects = group_ci(frame, "k", "v", baseline="0").set_index("setting")
    assert effects.loc["2", "diff"] == pytest.approx(0.25)
    half = stats.t.ppf(0.975, 1) * np.std([0.5, 0.6], ddof=1) / np.sqrt(2)  # Welch with one variance 0: df n - 1
    assert (effects.loc["2", "diff_low"], effects.loc["2", "diff_high"]) == pytest.approx((0.25 - half, 0.25 + half))
    assert effects.loc["1", "verdict"] == "too few seeds"
    assert np.isnan(effects.loc["1", "ci_low"])
    no_baseline = group_ci(frame, "k", "v", baseline="9")
    assert set(no_baseline["verdict"]) == {"no baseline"}
    plain = group_ci(frame, "k", "v")
    assert set(plain["verdict"]) == {""} and np.isnan(plain["diff"]).all()


def test_setting_label_normalises_parquet_types() -> None:
    assert {setting_label(v) for v in (2, 2.0, "2", "2.0", np.int64(2))} == {"2"}
    assert setting_label(0.2) == setting_label("0.2") == "0.2"
    assert setting_label("auto:acc50") == "auto:acc50"
    assert setting_label(float("nan")) == "n/a"


def test_searched_params_reads_spec_forms() -> None:
    spec = yaml.safe_load(SPEC_TEXT)
    spec["params"].update(
        lr={"loguniform": [1e-3, 1e-1]}, batch_size={"int": [8, 64]}, dropout={"uniform": [0, 0.5]},
        optimizer={"choice": ["sgd", "adamw"]}, momentum=0.9, seed={"grid": [0, 1]},
    )  # fmt: skip
    spec["searcher"] = "random"  # a grid needs the random searcher
    params = searched_params(parse_spec(spec))
    assert set(params) == {"lr", "batch_size", "dropout", "optimizer", "mixup_off", "seed"}
    assert params["lr"].log and params["batch_size"].high == 64 and params["optimizer"].choices == ("sgd", "adamw")
    assert not params["dropout"].log and params["seed"].choices == (0, 1)  # a grid counts as categorical


def test_decisions_near_picks_the_nearest_epoch() -> None:
    decisions = pd.DataFrame({"trial_id": ["a"] * 4 + ["b"] * 2, "epoch": [2, 3, 5, 8, 1, 9], "pred_mean": 0.5})
    budgets = pd.Series({"a": 20, "b": 10}).rename_axis("trial_id")
    near = decisions_near(decisions, budgets, 0.25)
    assert near.loc["a", "epoch"] == 5  # 25 % of 20
    assert near.loc["b", "epoch"] == 1  # 2.5 is nearer 1 than 9


def _section(page: str, anchor: str) -> str:
    section = page[page.index(f'<section id="{anchor}">') :]
    return section[: section.index("</section>")]


def test_curves_mark_the_trajectory_schedulers_detector(tmp_path: Path) -> None:
    """The spec's scheduler.detector is marked, not acc50, though both detectors' epochs are recorded."""
    run = write_synthetic_run(tmp_path / "run")
    spec = (run / SPEC_FILE).read_text()
    (run / SPEC_FILE).write_text(
        spec.replace("scheduler: trajectory", "scheduler: {type: trajectory, detector: layer_rotation}")
    )
    (mark,) = load_run(run).detector_marks()
    assert mark.detector == "layer_rotation"
    assert mark.epochs.notna().sum() == 10  # every trial that reached epoch 4
    curves = _section(write_report(run, tmp_path / "out").read_text(encoding="utf-8"), "curves")
    assert '"name":"layer_rotation fired (trajectory scheduler' in curves and "acc50 fired" not in curves
    assert "Marked: the epoch layer_rotation fired" in curves and "the spec&#x27;s scheduler.detector" in curves


def test_curves_mark_the_trajectory_schedulers_default_detector(tmp_path: Path) -> None:
    """Without scheduler.detector the scheduler's own default is marked: the vocabulary's default, which the
    report reads, must be the one TrajectoryScheduler really uses (read off its signature here)."""
    run = write_synthetic_run(tmp_path / "run")  # scheduler: trajectory, no detector given
    default = inspect.signature(TrajectoryScheduler).parameters["detector"].default
    (mark,) = load_run(run).detector_marks()
    assert mark.detector == default
    curves = _section(write_report(run, tmp_path / "out").read_text(encoding="utf-8"), "curves")
    assert (
        f"Marked: the epoch {default} fired" in curves and "its default: the spec sets no scheduler.detector" in curves
    )


def test_curves_mark_the_mixup_window_detector_on_its_trials_only(tmp_path: Path) -> None:
    """Under FIFO only an auto:<detector> Mixup-off window makes a detector matter, and only for those trials; one
    whose epochs the run did not record (no cp_end_fisher_peak column here) is named as not marked."""
    run = write_synthetic_run(tmp_path / "run", scheduler="fifo")
    trials = pd.read_parquet(run / TRIALS_FILE)
    trials["config/mixup_off"] = trials["config/mixup_off"].astype(str)
    trials.loc[trials["trial_id"].isin(["t00", "t01", "t02"]), "config/mixup_off"] = "auto:layer_rotation"
    trials.loc[trials["trial_id"] == "t05", "config/mixup_off"] = "auto:fisher_peak"
    trials.to_parquet(run / TRIALS_FILE)
    fisher, rotation = load_run(run).detector_marks()
    assert (fisher.detector, rotation.detector) == ("fisher_peak", "layer_rotation")
    assert sorted(rotation.epochs.index) == ["t00", "t01", "t02"] and (rotation.epochs == 4.0).all()
    assert list(fisher.epochs.index) == ["t05"] and fisher.epochs.isna().all()
    curves = _section(write_report(run, tmp_path / "out").read_text(encoding="utf-8"), "curves")
    assert '"name":"layer_rotation fired (mixup_off auto:layer_rotation: Mixup resumes)"' in curves
    assert "Trials with mixup_off auto:layer_rotation trained without Mixup" in curves and "acc50" not in curves
    assert "fisher_peak (mixup_off auto:fisher_peak: Mixup resumes) is not marked" in curves


def _backtest_cells(page: str) -> list[list[str]]:
    table = _section(page, "scheduler").split("Back-test on finished trials")[1]
    table = table[: table.index("</table>")]
    return [re.findall(r"<td[^>]*>([^<]*)</td>", row) for row in table.split("<tr>")[2:]]


def test_backtest_and_calibration_need_enough_finished_trials(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    trials = pd.read_parquet(run / TRIALS_FILE)
    finished = trials.index[trials["status"] == "finished"]
    trials.loc[finished[MIN_TRIALS_FOR_BACKTEST - 1 :], "status"] = "stopped"
    trials.to_parquet(run / TRIALS_FILE)
    page = write_report(run, tmp_path / "few").read_text(encoding="utf-8")
    too_few = f"too few finished trials ({MIN_TRIALS_FOR_BACKTEST - 1}; at least {MIN_TRIALS_FOR_BACKTEST} needed)"
    rows = _backtest_cells(page)
    assert len(rows) == 3 and all(row[3:] == [too_few, too_few] for row in rows)
    assert f"No calibration plot: {too_few}" in page
    assert f"given from {MIN_TRIALS_FOR_BACKTEST} finished trials on" in page
    assert '"name":"finished trial"' not in _section(page, "scheduler")  # no calibration scatter

    trials.loc[finished[MIN_TRIALS_FOR_BACKTEST - 1], "status"] = "finished"
    trials.to_parquet(run / TRIALS_FILE)
    page = write_report(run, tmp_path / "enough").read_text(encoding="utf-8")
    for row in _backtest_cells(page):
        assert row[1] == str(MIN_TRIALS_FOR_BACKTEST) and -1 <= float(row[3]) <= 1 and float(row[4]) >= 0
    assert "No calibration plot" not in page and '"name":"finished trial"' in _section(page, "scheduler")


def test_predicted_intervals_stay_within_zero_and_one(tmp_path: Path) -> None:
    """pred_mean ± pred_std is drawn with its ends clipped to [0, 1]: asymmetric bars near the bounds."""
    run = write_synthetic_run(tmp_path / "run")
    decisions = pd.read_parquet(run / DECISIONS_FILE)
    high = decisions["trial_id"] <= "t03"  # the calibration scatter and the stopped trials t03 and t07
    decisions["pred_mean"], decisions["pred_std"] = np.where(high, 0.95, 0.1), 0.2
    decisions.to_parquet(run / DECISIONS_FILE)
    section = _section(write_report(run, tmp_path / "out").read_text(encoding="utf-8"), "scheduler")
    bars = [json.loads(match) for match in re.findall(r'"error_y":(\{"array"[^{}]*\})', section)]
    assert len(bars) == 2  # calibration scatter, stopped trials
    ends = [(up, down) for bar in bars for up, down in zip(bar["array"], bar["arrayminus"], strict=True)]
    assert all(bar["symmetric"] is False for bar in bars)
    assert {(round(up, 6), round(down, 6)) for up, down in ends} == {(0.05, 0.2), (0.2, 0.1)}


def _predicted_run(tmp_path: Path, finished: int) -> Path:
    """The synthetic run with all but ``finished`` finished trials turned into stopped ones: their decision rows
    (every epoch from 2) give each a predicted final."""
    run = write_synthetic_run(tmp_path / "run")
    trials = pd.read_parquet(run / TRIALS_FILE)
    done = trials.index[trials["status"] == "finished"]
    trials.loc[done[finished:], "status"] = "stopped"
    trials.to_parquet(run / TRIALS_FILE)
    return run


def test_three_finished_trials_still_show_importances_and_the_mixup_window(tmp_path: Path) -> None:
    page = write_report(_predicted_run(tmp_path, 3), tmp_path / "out").read_text(encoding="utf-8")
    params = _section(page, "params")
    assert "Parameter importance for final val_acc (predicted finals for stopped trials)" in params
    assert "finished + predicted trials" in params and '"type":"bar"' in params
    assert "finished only: importances need at least 5 trials" in params
    assert '"name":"predicted"' in params and '"label":"finished only"' in params  # slices legend, parcoords button
    mixup = _section(page, "mixup")
    assert "clp-figure" in mixup and "nothing to compare" not in mixup
    # lr and batch_size are sampled: a shared seed pairs nothing, the regression controls for them
    assert "finished + predicted" in mixup and "Welch" in mixup and "paired over" not in mixup
    assert "effect adjusted for the other parameters" in mixup and "weighted least-squares" in mixup


def test_a_grid_over_seeds_pairs_the_window_effects(tmp_path: Path) -> None:
    """Only mixup_off and the seed vary (every window ran seeds 0-3): differences are paired, no regression."""
    run = _predicted_run(tmp_path, 3)
    spec = (run / SPEC_FILE).read_text()
    spec = spec.replace("lr: {loguniform: [0.001, 0.1]}", "lr: 0.01")
    (run / SPEC_FILE).write_text(spec.replace("batch_size: {choice: [32, 64]}", "batch_size: 32"))
    mixup = _section(write_report(run, tmp_path / "out").read_text(encoding="utf-8"), "mixup")
    assert "paired over 4 seeds" in mixup and "Welch" not in mixup.split("</p>", 1)[1]
    assert "effect adjusted" not in mixup


def test_outcomes_use_the_last_prediction_of_stopped_trials(tmp_path: Path) -> None:
    run = load_run(_predicted_run(tmp_path, 3))
    frame = outcomes(run).set_index("trial_id")
    assert (frame["source"] == "finished").sum() == 3 and (frame["source"] == "predicted").sum() == 7
    last = run.decisions.sort_values("epoch").groupby("trial_id").tail(1).set_index("trial_id")
    predicted = frame[frame["source"] == "predicted"]
    assert predicted["final"].to_dict() == pytest.approx(last["pred_mean"].reindex(predicted.index).to_dict())
    assert predicted["final_std"].to_dict() == pytest.approx(last["pred_std"].reindex(predicted.index).to_dict())
    assert "t10" not in frame.index and "t11" not in frame.index  # diverged and errored trials have no outcome


def test_paired_interval_matches_scipys_paired_t() -> None:
    """Three settings x the same four seeds: the differences are taken seed by seed."""
    base = np.array([0.70, 0.74, 0.69, 0.72])
    other = base + np.array([0.011, 0.009, 0.013, 0.010])  # a small shift, far below the seeds' spread
    diff, low, high = paired_interval(other, base)
    expected = stats.t.interval(0.95, 3, loc=np.mean(other - base), scale=stats.sem(other - base))
    assert (low, high) == pytest.approx(expected)
    assert (low, high) == pytest.approx(tuple(stats.ttest_rel(other, base).confidence_interval(0.95)))
    assert diff == pytest.approx(0.01075)
    frame = pd.DataFrame({"k": ["0"] * 4 + ["2"] * 4, "seed": [0, 1, 2, 3] * 2, "v": np.r_[base, other]})
    effects = group_ci(frame.sample(frac=1, random_state=0), "k", "v", baseline="0", pair_by="seed")
    row = effects.set_index("setting").loc["2"]
    assert row["test"] == "paired over 4 seeds" and row["verdict"] == "significant"
    assert (row["diff_low"], row["diff_high"]) == pytest.approx(expected)
    welch = group_ci(frame, "k", "v", baseline="0").set_index("setting").loc["2"]
    assert welch["test"] == "Welch" and welch["verdict"] == "not significant"  # unpaired, seed noise hides it


def test_weighted_effects_match_linregress_without_predictions() -> None:
    """With only measured finals (std 0) every weight is equal: the fit is ordinary least squares."""
    rng = np.random.default_rng(3)
    x = pd.Series(rng.uniform(0, 1, 20))
    y = 0.7 + 0.05 * x + rng.normal(0, 0.02, 20)
    fit = stats.linregress(x, y)
    (row,) = weighted_effects(x.to_frame("x"), y, pd.Series(0.0, index=x.index), ["x"]).itertuples()
    half = stats.t.ppf(0.975, 18) * fit.stderr
    assert (row.coef, row.low, row.high) == pytest.approx((fit.slope, fit.slope - half, fit.slope + half))


def test_savings_list_the_stopped_trials_that_might_have_won(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    decisions = pd.read_parquet(run / DECISIONS_FILE)
    decisions.loc[decisions["action"] == "stop", ["pred_mean", "pred_std"]] = [[0.9, 0.01], [0.5, 0.01]]
    decisions.to_parquet(run / DECISIONS_FILE)
    section = _section(write_report(run, tmp_path / "out").read_text(encoding="utf-8"), "savings")
    assert "1 of 2 stopped trials had a predicted 95% upper bound" in section
    assert '<td data-value="t03">t03</td>' in section and "t07" not in section.split("Risk taken")[1]
    assert '"name":"this search"' in section and '"name":"without stopping (planned epochs)"' in section
    assert "91 spent, 120 without stopping" in section


def test_a_500_trial_search_stays_small_and_legible(tmp_path: Path) -> None:
    run = write_large_synthetic_run(tmp_path / "run")
    page = write_report(run, tmp_path / "out").read_text(encoding="utf-8")
    assert len(page.encode()) < 8_000_000
    curves = _section(page, "curves")
    assert f"the {MAX_STOPPED_LINES} with the highest predicted finals are lines, the other 428 a band" in curves
    assert '"name":"other stopped trials (10% to 90%)"' in curves and '"fill":"tonexty"' in curves
    stopped_lines = re.search(r'"name":"stopped".*?"text":\[(.*?)\]', curves).group(1)
    assert len({t for t in stopped_lines.split(",") if t != "null"}) == MAX_STOPPED_LINES


def test_every_searched_parameter_gets_an_adjusted_effect_from_all_trials(trajectory_page: str) -> None:
    """Few finished trials still give each knob an effect with an interval: one regression on every trial with an
    outcome (finished and predicted), the seed left out (it is a repeat, not a knob)."""
    section = trajectory_page.split("Adjusted effects (all trials)", 1)[1].split("</table>", 1)[0]
    rows = re.findall(r"<tr><td[^>]*>([^<]+)</td>", section)
    assert "lr" in rows and "batch_size=64" in rows and "mixup_off=2" in rows
    assert not any(row.startswith("seed") for row in rows)
    assert "trials with an outcome" in section and "significant" in section


def test_freeze_thaw_table_counts_each_way_a_paused_trial_ended() -> None:
    """a: paused, thawed on new evidence, finished. b: paused, one idle epoch, stopped when the search was over.
    c: paused, stopped as hopeless when a trial finished. d: paused when the run was interrupted."""
    from clp_tune.report.scheduler import _freeze_thaw

    rows = [
        ("a", 2, "pause", "P(beat k-th best) 0.030 < 0.05: paused"),
        ("a", 2, "thaw", "trial x finished below its prediction: P(beat k-th best) 0.200 >= 0.05"),
        ("b", 3, "pause", "P(beat k-th best) 0.020 < 0.05: paused"),
        ("b", 3, "thaw", "a slot would idle: the likeliest paused trial runs one more epoch"),
        ("b", 4, "pause", "P(beat k-th best) 0.030 < 0.05: paused"),
        ("b", 4, "stop", "the search is over: nothing runs or waits, and one more epoch did not lift its chance"),
        ("c", 2, "pause", "P(beat k-th best) 0.020 < 0.05: paused"),
        ("c", 2, "stop", "trial x finished below its prediction: P(beat k-th best) 0.001 < hopeless 0.01"),
        ("d", 2, "pause", "P(beat k-th best) 0.020 < 0.05: paused"),
    ]

    def counts(rows: list[tuple[str, int, str, str]]) -> dict[str, str]:
        """The table's row -> count, as the page shows them (a finished at its budget)."""
        decisions = pd.DataFrame(rows, columns=["trial_id", "epoch", "action", "reason"])
        html = _freeze_thaw(decisions, pd.DataFrame({"val_acc": [0.9]}, index=["a"]))
        return dict(re.findall(r'<tr><td data-value="([^"]+)">[^<]*</td><td data-value="(\d+)">', html))

    expected = {
        "paused at least once": "4",
        "thawed on new evidence (a trial finished)": "1",
        "thawed for a slot that would idle": "1",
        "thawed and then finished their budget": "1",
        "paused when the run ended (counted as stopped)": "1",
        "stopped for good while paused (hopeless)": "1",
        "stopped when the search was over (unlikely after an idle epoch)": "1",
    }
    assert counts(rows) == expected
    # Under a limit that counts paused trials, e is stopped to free its slot: its own row, not a hopeless one.
    evicted = [("e", 3, "pause", "P(beat k-th best) 0.020 < 0.05: paused"),
               ("e", 3, "stop", "its slot is needed: the search's concurrency limit counts paused trials")]  # fmt: skip
    evicted_counts = {"paused at least once": "5", "stopped to free a slot for a new trial": "1"}
    assert counts(rows + evicted) == expected | evicted_counts


def test_the_scheduler_section_names_the_users_banks_its_prior_fitted_on(tmp_path: Path) -> None:
    run = write_synthetic_run(tmp_path / "run")
    assert "Prior:" not in _section(write_report(run, tmp_path / "unrecorded").read_text(encoding="utf-8"), "scheduler")
    (run / PRIOR_BANKS_FILE).write_text('["/lib/a.parq')  # torn by a crash: the page still renders, without it
    assert "Prior:" not in _section(write_report(run, tmp_path / "torn").read_text(encoding="utf-8"), "scheduler")
    (run / PRIOR_BANKS_FILE).write_text(json.dumps([]))
    section = _section(write_report(run, tmp_path / "none").read_text(encoding="utf-8"), "scheduler")
    assert "Prior: the shipped suite&#x27;s banks (the bank library had none" in section
    (run / PRIOR_BANKS_FILE).write_text(json.dumps(["/lib/quickstart-1.parquet", "/lib/<b>.parquet"]))
    section = _section(write_report(run, tmp_path / "two").read_text(encoding="utf-8"), "scheduler")
    assert "2 of your bank library&#x27;s, of this dataset and model: quickstart-1, &lt;b&gt;." in section
