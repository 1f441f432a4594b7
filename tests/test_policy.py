"""The trajectory stopping rule on hand-made trial states, without Ray, and the state's round trip through disk."""

from __future__ import annotations

import copy
import json
import math
import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.persistence import SchedulerState, StateStore
from clp_tune.stopping.policy import Decision, TrajectoryPolicy, TrialState, search_context
from clp_tune.stopping.predictor import Prediction
from clp_tune.vocabulary import SCHEDULER_JOURNAL_FILE, SCHEDULER_STATE_FILE

BUDGET = 20


class ConfiguredPredictor:
    """Predicts N(config["final"], 0.02) for every trial and counts its calls: the tests choose each outcome."""

    def __init__(self) -> None:
        self.calls = 0

    def predict(self, history: Mapping[str, Sequence[float]], config: Mapping[str, Any], budget: int) -> Prediction:
        self.calls += 1
        return Prediction(config["final"], 0.02)


def policy(**options: Any) -> TrajectoryPolicy:
    """A policy judging from 10 % of the budget, a detector holding trials back up to 50 %, no noise grace."""
    return TrajectoryPolicy(**{"k": 1, "min_fraction": 0.1, "max_fraction": 0.5, "noise_grace": False, **options})


def trial(final: float, epochs: int, train_acc: Sequence[float] | None = None, **config: Any) -> TrialState:
    """A running trial of ``epochs`` results (val_acc 0.3, train_loss 1.0; train_acc when given)."""
    state = TrialState(budget=BUDGET, config={"final": final, "epochs": BUDGET, **config})
    for epoch in range(1, epochs + 1):
        row = {"epoch": epoch, "val_acc": 0.3, "train_loss": 1.0}
        if train_acc is not None:
            row["train_acc"] = train_acc[epoch - 1]
        state.observe(row, BUDGET)
    return state


def finished(final: float) -> TrialState:
    state = trial(final, BUDGET)
    state.status, state.final = "finished", final
    return state


def last_result(state: TrialState, **extra: Any) -> dict[str, Any]:
    """The result the state's latest epoch came from (what Ray handed the scheduler)."""
    return {"epoch": state.epochs[-1], "val_acc": state.history["val_acc"][-1], "train_loss": 1.0, **extra}


def decide(rule: TrajectoryPolicy, trials: dict[str, TrialState], trial_id: str, **extra: Any) -> Decision:
    return rule.decide(trial_id, trials, last_result(trials[trial_id], **extra), ConfiguredPredictor())


# --- grace -------------------------------------------------------------------------------------------------------


def test_grace_without_detector_input_is_min_fraction() -> None:
    """No train_acc: acc50 cannot be evaluated, so min_fraction alone sets the grace (2 epochs of 20)."""
    trials = {"ref": finished(0.9), "poor": trial(0.2, 1)}
    early = decide(policy(), trials, "poor")
    assert (early.action, early.reason, early.grace) == ("continue", "grace until epoch 2", 2)
    trials["poor"] = trial(0.2, 2)
    assert decide(policy(), trials, "poor").action == "stop"


def test_grace_follows_the_detector_up_to_max_fraction() -> None:
    fires_at_7 = [0.2] * 6 + [0.6] * 14
    never_fires = [0.2] * BUDGET
    rule = policy()
    assert rule.grace(trial(0.2, 7, fires_at_7), {}) == 7
    assert rule.grace(trial(0.2, 12, never_fires), {}) == 10  # held back, but only up to max_fraction
    assert rule.grace(trial(0.2, 3, [0.9] * BUDGET), {}) == 2  # fired at epoch 1: min_fraction still applies
    assert rule.grace(trial(0.2, 3, never_fires), {"cp_end_acc50": 4.0}) == 4  # the trainable's report wins
    assert rule.grace(trial(0.2, 3), {"cp_end_acc50": math.nan}) == 10  # reported as not fired yet
    assert policy(max_fraction=0.1).grace(trial(0.2, 12, never_fires), {}) == 2  # at min_fraction: never delays


def test_grace_detector_holds_a_hopeless_trial_until_it_fires() -> None:
    fires_at_7 = [0.2] * 6 + [0.6] * 14
    trials = {"ref": finished(0.9), "poor": trial(0.2, 6, fires_at_7)}
    assert decide(policy(), trials, "poor").reason == "grace until epoch 10"  # not fired by epoch 6
    trials["poor"] = trial(0.2, 7, fires_at_7)
    assert decide(policy(), trials, "poor").action == "stop"


def test_noise_grace_lengthens_the_grace_to_the_nearest_epoch() -> None:
    noisy = trial(0.2, 3, dropout=0.5, label_noise=0.25)
    assert policy(noise_grace=True, noise_factor=1.0, min_fraction=0.2, max_fraction=0.2).grace(noisy, {}) == 7
    weak = trial(0.2, 3, dropout=0.1)  # 4 x 1.05 epochs rounds to 4
    assert policy(noise_grace=True, noise_factor=0.5, min_fraction=0.2, max_fraction=0.2).grace(weak, {}) == 4
    assert policy(noise_grace=False, min_fraction=0.2, max_fraction=0.2).grace(noisy, {}) == 4
    never_fires = trial(0.2, 3, [0.2] * BUDGET, dropout=0.5)  # the detector's hold is lengthened too
    assert policy(noise_grace=True, noise_factor=1.0).grace(never_fires, {}) == 15
    # Off by default (measured on the suite benchmark: it cost epochs and kept no best trial): noise adds nothing.
    assert TrajectoryPolicy(min_fraction=0.2, max_fraction=0.2).grace(noisy, {}) == 4


def test_grace_never_passes_the_budget() -> None:
    noisy = trial(0.2, 3, dropout=1.0, label_noise=1.0)
    assert policy(noise_grace=True, noise_factor=4.0, min_fraction=0.5).grace(noisy, {}) == BUDGET


# --- the k-th best ---------------------------------------------------------------------------------------------


def test_no_stop_while_fewer_than_k_references() -> None:
    trials = {"ref": finished(0.9), "poor": trial(0.2, 5)}
    decision = decide(policy(k=2), trials, "poor")
    assert (decision.action, decision.reason) == ("continue", "fewer than k=2 reference trials")
    assert math.isnan(decision.threshold) and math.isnan(decision.p_beat)


def test_running_trials_past_their_grace_fill_in_the_kth_best_at_a_pessimistic_quantile() -> None:
    rule = policy(k=2)
    running = trial(0.7, 5)
    running.pred_mean, running.pred_std, running.grace = 0.7, 0.05, 2
    young = trial(0.95, 1)  # before its grace point: its prediction does not count
    young.pred_mean, young.pred_std, young.grace = 0.95, 0.05, 2
    stopped = trial(0.99, 5)
    stopped.pred_mean, stopped.pred_std, stopped.grace, stopped.status = 0.99, 0.05, 2, "stopped"
    trials = {"ref": finished(0.8), "running": running, "young": young, "stopped": stopped, "poor": trial(0.2, 5)}
    expected = Prediction(0.7, 0.05).quantile(0.1)
    assert rule.threshold(trials, exclude="poor") == pytest.approx(expected)
    assert rule.threshold(trials, exclude="running") is None  # a trial never sets its own bar
    decision = decide(rule, trials, "poor")
    assert decision.action == "stop" and decision.status == "stopped"
    assert decision.threshold == pytest.approx(expected)
    assert decision.p_beat == pytest.approx(Prediction(0.2, 0.02).prob_above(expected))
    assert decision.reason == f"P(beat k-th best) {decision.p_beat:.3f} < hopeless {rule.hopeless}"


def test_finals_alone_once_k_have_finished() -> None:
    running = trial(0.99, 5)
    running.pred_mean, running.pred_std, running.grace = 0.99, 0.01, 2
    trials = {"a": finished(0.8), "b": finished(0.75), "c": finished(0.6), "running": running}
    assert policy(k=2).threshold(trials, exclude=None) == 0.75


def test_a_likely_winner_continues_with_its_decision_row() -> None:
    trials = {"ref": finished(0.8), "good": trial(0.85, 5)}
    decision = decide(policy(), trials, "good")
    assert decision.action == "continue" and decision.status == "running"
    assert decision.row() == {
        "trial_id": "good", "epoch": 5, "pred_mean": 0.85, "pred_std": 0.02, "threshold": 0.8,
        "p_beat": decision.p_beat, "action": "continue",
        "reason": f"P(beat k-th best) {decision.p_beat:.3f} >= {policy().delta}",
    }  # fmt: skip
    assert decision.p_beat == pytest.approx(Prediction(0.85, 0.02).prob_above(0.8))


def test_budget_reached_is_never_stopped() -> None:
    trials = {"ref": finished(0.9), "last": trial(0.1, BUDGET)}
    decision = decide(policy(), trials, "last")
    assert (decision.action, decision.reason, decision.grace) == ("continue", "budget reached", None)
    assert decision.prediction == Prediction(0.1, 0.02)


class ContextReader(ConfiguredPredictor):
    """Also reads the search's context, and keeps the last one it was handed."""

    context: SearchContext | None = None

    def predict_in_context(
        self, history: Mapping[str, Sequence[float]], config: Mapping[str, Any], budget: int, context: SearchContext
    ) -> Prediction:
        self.context = context
        return self.predict(history, config, budget)


def test_a_predictor_that_reads_the_search_gets_the_other_trials() -> None:
    stopped, diverged = trial(0.2, 3), trial(0.2, 2)
    stopped.status, diverged.status = "stopped", "diverged"
    trials = {"ref": finished(0.9), "stopped": stopped, "diverged": diverged, "running": trial(0.5, 4),
              "poor": trial(0.2, 5)}  # fmt: skip
    reader = ContextReader()
    decision = policy().decide("poor", trials, last_result(trials["poor"]), reader)
    assert decision.action == "stop" and reader.calls == 1
    context = reader.context
    assert context == search_context("poor", trials)
    assert set(context.curves) == {"ref", "stopped", "running"}  # never the trial itself, nor a diverged one
    assert context.finals == {"ref": 0.9} and context.ended == {"stopped"}
    assert context.curves["running"] == [0.3] * 4


# --- divergence ------------------------------------------------------------------------------------------------


class NoPredictor:
    """A predictor that must not be asked: a diverged trial is stopped before any prediction."""

    def predict(self, history: Mapping[str, Sequence[float]], config: Mapping[str, Any], budget: int) -> Prediction:
        raise AssertionError("predicted a diverged trial")


@pytest.mark.parametrize(
    ("rows", "reason"),
    [
        ([{"epoch": 1, "val_acc": 0.1, "train_loss": 2.3, "diverged": 1}], "diverged: the trainable reported"),
        ([{"epoch": 1, "val_acc": 0.1, "train_loss": math.nan}], "diverged: train_loss is nan"),
        ([{"epoch": 1, "val_acc": 0.1, "val_loss": math.inf}], "diverged: val_loss is inf"),
        ([{"epoch": e, "val_acc": 0.1, "train_loss": 2.0 * 4 ** (e - 1)} for e in (1, 2)], "diverged: train_loss 8"),
    ],
    ids=["flagged", "nan-loss", "inf-loss", "3x-first-loss"],
)
def test_divergence_stops_at_once(rows: list[dict[str, Any]], reason: str) -> None:
    state = TrialState(budget=BUDGET, config={})
    for row in rows:
        state.observe(row, BUDGET)
    decision = policy().decide("t", {"t": state}, rows[-1], NoPredictor())
    assert (decision.action, decision.status) == ("stop", "diverged")
    assert decision.reason.startswith(reason)
    assert decision.prediction is None


def test_a_loss_below_three_times_its_first_is_not_divergence() -> None:
    state = TrialState(budget=BUDGET, config={})
    for epoch, loss in ((1, 2.0), (2, 5.9)):
        state.observe({"epoch": epoch, "val_acc": 0.1, "train_loss": loss}, BUDGET)
    assert TrajectoryPolicy.divergence(state, {"train_loss": 5.9}) is None


# --- purity and arguments --------------------------------------------------------------------------------------


def test_decide_changes_no_state_and_apply_keeps_what_it_found() -> None:
    trials = {"ref": finished(0.9), "poor": trial(0.2, 5)}
    before = copy.deepcopy(trials)
    decision = decide(policy(), trials, "poor")
    assert trials == before
    trials["poor"].apply(decision)
    assert (trials["poor"].status, trials["poor"].grace) == ("stopped", 2)
    assert (trials["poor"].pred_mean, trials["poor"].pred_std) == (0.2, 0.02)


def test_no_val_acc_continues_without_a_prediction() -> None:
    state = trial(0.2, 5)
    predictor = ConfiguredPredictor()
    decision = policy().decide("t", {"t": state}, {"epoch": 5, "train_loss": 1.0}, predictor)
    assert (decision.action, decision.reason, predictor.calls) == ("continue", "no val_acc in this result", 0)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("k", 0, "k > 0"),
        ("delta", 1.0, "0 < delta < 1"),
        ("delta", 0.0, "0 < delta < 1"),
        ("min_fraction", 0.0, "min_fraction in (0, 1]"),
        ("max_fraction", 1.5, "max_fraction in (0, 1]"),
        ("detector", "nope", "detector in"),
        ("noise_factor", -0.1, "noise_factor >= 0"),
        ("noise_factor", math.nan, "noise_factor >= 0"),
    ],
)
def test_each_bad_argument_is_named(option: str, value: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"need {message}")):
        TrajectoryPolicy(**{option: value})


def test_policy_and_persistence_import_no_ray() -> None:
    """The rule is tested, and the run's tables read the scheduler's outcomes, without starting or importing Ray."""
    code = "import sys, clp_tune.stopping.policy, clp_tune.stopping.persistence; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


# --- persistence -------------------------------------------------------------------------------------------------


def _record(state: SchedulerState, store: StateStore, trial_id: str, rows: list[dict[str, Any]]) -> None:
    """What the scheduler does per result: record it, decide, keep the decision, journal it."""
    rule, predictor = policy(), ConfiguredPredictor()
    for row in rows:
        state.trials[trial_id].observe(row, BUDGET)
        decision = rule.decide(trial_id, state.trials, row, predictor)
        state.trials[trial_id].apply(decision)
        state.decisions.append(decision.row())
        store.journal(state, trial_id, decision.row())


def _rows(epochs: range, **extra: Any) -> list[dict[str, Any]]:
    return [{"epoch": e, "val_acc": 0.1 * e, "train_loss": 1.0 / e, "train_acc": 0.1 * e, **extra} for e in epochs]


def test_state_round_trips_exactly_through_snapshot_and_journal(tmp_path: Path) -> None:
    store = StateStore(tmp_path, snapshot_every=100)
    state = SchedulerState()
    state.trials["a"] = TrialState(budget=4, config={"final": 0.9, "epochs": 4, "lr": 0.01, "optimizer": "sgd"})
    _record(state, store, "a", _rows(range(1, 5)))
    state.trials["a"].status, state.trials["a"].final = "finished", 0.4
    state.trials["a"].scores = [["trees", 0.5, 0.02, 0.03]]
    state.finished_order.append("a")
    store.snapshot(state)
    assert not (tmp_path / SCHEDULER_JOURNAL_FILE).exists()  # the snapshot holds it all

    state.trials["b"] = TrialState(budget=BUDGET, config={"final": 0.2, "epochs": BUDGET, "dropout": 0.5})
    _record(state, store, "b", _rows(range(1, 4)) + _rows(range(2, 4), val_loss=0.5))  # resumed: 2, 3 again
    state.trials["c"] = TrialState(budget=BUDGET, config={"final": 0.1})
    _record(state, store, "c", [{"epoch": 1, "val_acc": 0.1, "train_loss": math.inf}])  # diverged at once
    state.trials["d"] = TrialState(budget=2, config={"final": 0.5, "epochs": 2})
    _record(state, store, "d", _rows(range(1, 3)))
    state.trials["d"].status, state.trials["d"].final = "finished", 0.2
    state.trials["d"].scores = [["context", 0.5, -0.1, 0.05], ["context", 1.0, 0.0, 0.01]]
    state.finished_order.append("d")
    store.journal(state, "d", None)  # a finish, journaled with its calibration scores as the scheduler does
    assert len((tmp_path / SCHEDULER_JOURNAL_FILE).read_text().splitlines()) == 9

    loaded = StateStore(tmp_path).load()
    assert loaded is not None
    assert loaded.trials == state.trials and loaded.finished_order == state.finished_order
    pd.testing.assert_frame_equal(loaded.decisions_frame(), state.decisions_frame())
    assert loaded.trials["b"].epochs == [1, 2, 3] and loaded.trials["c"].status == "diverged"

    again = StateStore(tmp_path / "again")
    (tmp_path / "again").mkdir()
    again.snapshot(loaded)
    store.snapshot(state)
    assert json.loads((tmp_path / "again" / SCHEDULER_STATE_FILE).read_text()) == json.loads(
        (tmp_path / SCHEDULER_STATE_FILE).read_text()
    )


def test_store_without_a_directory_keeps_nothing(tmp_path: Path) -> None:
    store = StateStore(None)
    state = SchedulerState(trials={"a": TrialState(budget=4, config={"final": 0.5})})
    _record(state, store, "a", _rows(range(1, 3)))
    store.snapshot(state)
    assert store.load() is None and StateStore(tmp_path).load() is None
    assert list(tmp_path.iterdir()) == []
