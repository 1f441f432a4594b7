"""The prior that transfers: in-context features, online recalibration and the leave-task-out evaluation."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from scipy.stats import norm

from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.cli import main
from clp_tune.stopping.calibration import COVERAGE, ConformalCalibration
from clp_tune.stopping.context import CONTEXT_FEATURES, LevelCache, SearchContext, context_features
from clp_tune.stopping.policy import TrialState, search_context
from clp_tune.stopping.prior import pooled, task_of
from clp_tune.stopping.transfer import PREDICTORS, leave_task_out, target


def test_leave_task_out_never_judges_a_task_its_prior_saw() -> None:
    banks = {"small": synthetic_bank(12, 10, seed=5), "long": synthetic_bank(10, 16, seed=6, statistics=False)}
    reported = []
    results = {r.task: r for r in leave_task_out(banks, fractions=(0.25, 0.5), progress=reported.append)}
    assert [r.task for r in reported] == ["small", "long"]  # each task as soon as it is scored
    assert results["small"].prior_trial_ids == {f"long/s6_{i:03d}" for i in range(10)}
    assert results["long"].prior_trial_ids == {f"small/s5_{i:03d}" for i in range(12)}
    for result in results.values():
        table = result.table
        assert list(table["fraction"]) == [0.25, 0.5]
        assert set(PREDICTORS) | {"last_value", "coverage"} <= set(table.columns)
        assert table["coverage"].between(0, 1).all() and table["last_value"].notna().all()
    with pytest.raises(ValueError, match="two banks"):
        leave_task_out({"small": banks["small"]})


def test_the_ranking_target_is_the_last_value_and_a_margin_below_0_85() -> None:
    assert target(0.9) == 0.9 and target(0.85) == 0.85
    assert target(0.8) == pytest.approx(0.9) and target(0.3) == pytest.approx(0.4)


def test_bench_transfer_prints_each_task_and_the_verdict(capsys) -> None:
    from clp_tune.bench.benchmarks import print_transfer

    print_transfer({"small": synthetic_bank(12, 10, seed=5), "long": synthetic_bank(10, 16, seed=6, statistics=False)})
    out = capsys.readouterr().out
    verdicts = re.findall(r"at 10%: prior ([\d.]+), last value ([\d.]+), target ([\d.]+): (met|missed)", out)
    assert out.index("== small") < out.index("== long") and len(verdicts) == 2
    for prior, last, bar, verdict in verdicts:  # printed to 3 decimals: a tie there may go either way
        assert float(bar) == pytest.approx(target(float(last)), abs=1e-3)
        if abs(float(prior) - float(bar)) > 1e-3:
            assert (verdict == "met") == (float(prior) > float(bar)), (prior, bar, verdict)
    met = sum(verdict == "met" for *_, verdict in verdicts)
    assert f"is met on {met};" in out
    if all(abs(float(prior) - float(last)) > 1e-3 for prior, last, _, _ in verdicts):
        above = sum(float(prior) > float(last) for prior, last, _, _ in verdicts)
        assert f"at or above the last value on {above} of 2 tasks" in out


def test_bench_transfer_refuses_bad_tasks_with_exit_2(capsys) -> None:
    one = ["--task", "digits_mlp_sgd_100"]
    for arguments, named in (([*one, "--task", "nope"], "'nope'"), (one, "at least two"), (one + one, "at least two")):
        assert main(["bench", "transfer", *arguments]) == 2, arguments
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, (arguments, err)


def test_pooled_ids_carry_their_task() -> None:
    frame = pooled({"a": synthetic_bank(2, 3, seed=0), "b": synthetic_bank(2, 3, seed=0)})
    assert frame["trial_id"].nunique() == 4  # the same ids in two banks stay apart
    assert {task_of(i) for i in frame["trial_id"]} == {"a", "b"} and task_of("plain_id") == ""


def test_context_features_are_scale_free() -> None:
    """The same standing in a search at 0.6 and in one at 0.97 (the same log-odds steps) reads the same."""

    def logistic(u: float) -> float:
        return 1 / (1 + math.exp(-u))

    def standing(offset: float) -> dict[str, float]:
        curves = {str(i): [logistic(offset + 0.3 * i + 0.1 * e) for e in range(6)] for i in range(6)}
        finals = {"5": logistic(offset + 2.5)}
        mine = [logistic(offset + 0.8 + 0.1 * e) for e in range(6)]
        return context_features(mine, SearchContext(curves, finals))

    low, high = standing(0.4), standing(3.4)
    assert low["ctx_quantile"] == high["ctx_quantile"] == pytest.approx(0.5)
    for name in set(CONTEXT_FEATURES) - {"ctx_log_spread"}:
        assert low[name] == pytest.approx(high[name], abs=0.05), name
    alone = context_features([0.5, 0.6], SearchContext({"a": [0.5, 0.6]}))
    assert all(math.isnan(v) for v in alone.values())  # too few others: the search cannot say
    ended = SearchContext(
        {"stopped": [0.2], "young": [0.5], **{str(i): [0.3] * 4 for i in range(4)}}, {}, frozenset({"stopped"})
    )
    assert sorted(ended.values_at(3)[0]) == pytest.approx([0.2, 0.3, 0.3, 0.3, 0.3])  # not the young one


def test_a_search_read_through_its_level_cache_reads_as_a_fresh_one() -> None:
    """Levels kept from one context to the next give the values computed afresh, as trials grow, end, skip a
    value and are recorded again from an earlier epoch (a resumed trial)."""
    rng = np.random.default_rng(3)
    trials = {str(i): TrialState(budget=12, config={}) for i in range(8)}
    cache = LevelCache()
    for step in range(80):
        state = trials[str(rng.integers(8))]
        if state.status == "stopped":
            continue
        resumed = state.epochs and rng.random() < 0.1
        epoch = int(rng.integers(1, len(state.epochs) + 1)) if resumed else len(state.epochs) + 1
        state.record(epoch, {"val_acc": None if rng.random() < 0.1 else float(rng.random())})
        if rng.random() < 0.05:
            state.status = "stopped"
        for reader in trials:
            cached, fresh = search_context(reader, trials, cache), search_context(reader, trials)
            for at in range(1, 13):
                for a, b in zip(cached.values_at(at), fresh.values_at(at), strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=f"step {step}, reader {reader}, epoch {at}")


def test_conformal_calibration_makes_the_interval_honest_and_shrinks_to_the_prior() -> None:
    nominal = norm.ppf(0.5 + COVERAGE / 2)
    calibration = ConformalCalibration(strength=5.0)
    assert calibration.correct("context", 0.1, 0.8, 0.02) == (0.8, 0.02)  # nothing seen: the prior's own
    rng = np.random.default_rng(0)
    errors = rng.normal(0, 0.06, 400)  # the prior's std 0.02 is three times too small
    for i, error in enumerate(errors):
        calibration.add("context", 0.1, float(error), 0.02)
        if i == 9:
            _, few = calibration.correct("context", 0.1, 0.8, 0.02)
    mean, std = calibration.correct("context", 0.1, 0.8, 0.02)
    assert 0.02 < few < std  # shrunk towards the prior while few have finished
    assert np.mean(np.abs(errors + 0.8 - mean) <= nominal * std) == pytest.approx(COVERAGE, abs=0.03)
    assert calibration.correct("trees", 0.1, 0.8, 0.02) == (0.8, 0.02)  # kept per model
