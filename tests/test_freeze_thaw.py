"""Freeze-thaw: the trajectory scheduler pauses a trial that is unlikely to win, thaws it when new evidence raises
its chance, and keeps that state across a restore. The predictor is scripted (its predictions are the test's
input; what is tested is the scheduler's bookkeeping); the Ray test runs a real Tune search of a tiny trainable
that checkpoints every epoch."""

from __future__ import annotations

import pickle
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from ray.tune.schedulers import TrialScheduler

from clp_tune.bench.simulator import SimController, SimTrial
from clp_tune.stopping.persistence import StateStore, compact, read_decisions, stopped_outcomes
from clp_tune.stopping.predictor import Prediction
from clp_tune.stopping.scheduler import TrajectoryScheduler
from clp_tune.vocabulary import DECISIONS_FILE, SLOT_NEEDED_REASON

BUDGET = 6
#: val_acc per epoch: "a" sets the bar (final 0.6); "b" looks poor early; "c" finishes below the bar.
CURVES = {
    "a": [0.3, 0.45, 0.52, 0.56, 0.58, 0.60],
    "b": [0.2, 0.30, 0.40, 0.50, 0.60, 0.70],
    "c": [0.3, 0.40, 0.45, 0.50, 0.52, 0.54],
    "d": [0.5, 0.70, 0.80, 0.85, 0.88, 0.90],
    "e": [0.2, 0.30, 0.40, 0.50, 0.60, 0.70],
}


class ScriptedPredictor:
    """Predicted finals by trial name. P(b beats a's 0.6) is 0.02 with the first spread (paused, not hopeless);
    once two trials have finished (c fell short of the bar) the spread widens and it is 0.30 (thawed)."""

    means = {"a": 0.6, "b": 0.4975, "c": 0.55, "d": 0.9, "e": 0.49}

    def __init__(self) -> None:
        self.finished = 0
        self.asked: list[str] = []

    def predict(self, history, config, budget) -> Prediction:
        self.asked.append(config["name"])
        return Prediction(self.means[config["name"]], 0.05 if self.finished < 2 else 0.2)

    def observe_finished(self, rows) -> None:
        self.finished += len(rows)


def scheduler(state_dir: Path) -> TrajectoryScheduler:
    made = TrajectoryScheduler(
        budget=BUDGET, k=1, delta=0.05, hopeless=0.01, min_fraction=0.3, max_fraction=0.3, noise_grace=False,
        state_dir=str(state_dir), predictor=ScriptedPredictor(),
    )  # fmt: skip
    made.set_search_properties("val_acc", "max")
    return made


def report(scheduler: TrajectoryScheduler, controller: SimController, trial: SimTrial, epoch: int) -> str:
    trial.status = "RUNNING"
    result = {"epoch": epoch, "val_acc": CURVES[trial.config["name"]][epoch - 1], "config/name": trial.config["name"]}
    decision = scheduler.on_trial_result(controller, trial, result)
    if decision == TrialScheduler.PAUSE:
        trial.status = "PAUSED"
    elif epoch == BUDGET:
        scheduler.on_trial_complete(controller, trial, result)
        trial.status = "TERMINATED"
    return decision


def add(scheduler: TrajectoryScheduler, controller: SimController, name: str) -> SimTrial:
    trial = SimTrial(name, {"name": name})
    controller.get_trials().append(trial)
    scheduler.on_trial_add(controller, trial)
    return trial


def test_pause_and_thaw_state_survive_a_restore(tmp_path: Path) -> None:
    first = scheduler(tmp_path)
    pickled = pickle.dumps(first)  # Ray pickles the scheduler when the search starts and restores that copy
    controller = SimController(1, end_paused=lambda trial: None)
    a, b = add(first, controller, "a"), add(first, controller, "b")
    assert [report(first, controller, a, e) for e in range(1, BUDGET + 1)] == [TrialScheduler.CONTINUE] * BUDGET
    assert report(first, controller, b, 1) == TrialScheduler.CONTINUE  # before its grace point
    assert report(first, controller, b, 2) == TrialScheduler.PAUSE
    assert controller.search_alg.frozen == {"b"}  # its slot is free for a new trial

    restored = pickle.loads(pickled)
    state = restored._state.trials["b"]
    assert state.status == "paused" and state.epochs == [1, 2] and abs(state.p_beat - 0.0202) < 1e-3
    assert stopped_outcomes(tmp_path) == {"b": "stopped"}  # paused, not thawed: the tables count it as stopped

    controller = SimController(1, end_paused=lambda trial: None)  # the restored search: b comes back PENDING
    a.status, b.status = "TERMINATED", "PENDING"
    controller.get_trials().extend([a, b])
    c = add(restored, controller, "c")
    assert restored.choose_trial_to_run(controller) is c  # the new trial, not the frozen one
    assert b.status == "PAUSED" and controller.search_alg.frozen == {"b"}
    for epoch in range(1, BUDGET + 1):
        assert report(restored, controller, c, epoch) == TrialScheduler.CONTINUE
    assert restored._state.trials["b"].status == "running"  # c fell short of its bar: b's chance rose; queued
    assert restored.choose_trial_to_run(controller) is b
    assert restored.choose_trial_to_run(controller) is b  # idempotent
    assert controller.search_alg.frozen == frozenset()
    actions = read_decisions_now(restored)
    assert actions.loc[actions["trial_id"] == "b", "action"].tolist() == ["continue", "pause", "thaw"]
    assert stopped_outcomes(tmp_path) == {}


def read_decisions_now(scheduler: TrajectoryScheduler) -> pd.DataFrame:
    scheduler._store.snapshot(scheduler._state)
    return read_decisions(Path(scheduler._store.state_dir) / DECISIONS_FILE)


def idle_thawed(tmp_path: Path) -> tuple[TrajectoryScheduler, SimController, SimTrial]:
    """One slot: "a" finishes and sets the bar, "b" is paused at epoch 2 and, nothing new waiting, thawed."""
    sched = scheduler(tmp_path)
    controller = SimController(1, end_paused=lambda trial: None)
    a = add(sched, controller, "a")
    for epoch in range(1, BUDGET + 1):
        report(sched, controller, a, epoch)
    b = add(sched, controller, "b")
    report(sched, controller, b, 1)
    assert report(sched, controller, b, 2) == TrialScheduler.PAUSE
    assert sched.choose_trial_to_run(controller) is b  # nothing new waits, a slot would idle
    return sched, controller, b


def test_an_idle_slot_thaws_the_likeliest_paused_trial_one_epoch_at_a_time(tmp_path: Path) -> None:
    sched, controller, b = idle_thawed(tmp_path)
    assert report(sched, controller, b, 3) == TrialScheduler.PAUSE  # still unlikely: frozen again after one epoch
    reasons = sched.decisions_frame().query("trial_id == 'b'")["reason"].tolist()
    assert reasons[2].startswith("a slot would idle")


def test_each_paused_trial_gets_one_idle_epoch_then_the_search_is_over(tmp_path: Path) -> None:
    """b had its epoch for an idle slot and stayed unlikely: another would repeat the verdict, so while the searcher
    may still suggest a trial nothing happens, and once it has none left, nothing runs and nothing waits, b is
    stopped for good and the search can end. The probe survives a restore."""
    sched, controller, b = idle_thawed(tmp_path)
    assert report(sched, controller, b, 3) == TrialScheduler.PAUSE
    ended: list[SimTrial] = []
    controller._end_paused = ended.append
    assert sched.choose_trial_to_run(controller) is None and ended == []  # the searcher is not done yet
    assert StateStore(tmp_path).load().trials["b"].probed  # journaled: a restored search does not probe it again
    controller.search_alg.finished = True
    assert sched.choose_trial_to_run(controller) is None
    assert ended == [b] and sched._state.trials["b"].status == "stopped"
    last = sched.decisions_frame().query("trial_id == 'b'").iloc[-1]
    assert last["action"] == "stop" and last["reason"].startswith("the search is over")
    assert stopped_outcomes(tmp_path) == {"b": "stopped"}


def test_paused_trials_resume_side_by_side_while_tune_starts_them(tmp_path: Path) -> None:
    """Two slots would idle and b and e are paused: while Tune starts the first one chosen (PENDING, as Tune marks a
    trial it resumes), the next call gives the other slot to e, instead of b again (which resumed paused trials one
    actor start at a time); with both starting, the slots are full."""
    sched = scheduler(tmp_path)
    controller = SimController(2, end_paused=lambda trial: None)
    a = add(sched, controller, "a")
    for epoch in range(1, BUDGET + 1):
        report(sched, controller, a, epoch)
    b, e = add(sched, controller, "b"), add(sched, controller, "e")
    for trial in (b, e):
        report(sched, controller, trial, 1)
        assert report(sched, controller, trial, 2) == TrialScheduler.PAUSE
    assert sched.choose_trial_to_run(controller) is b  # the likelier of the two
    b.status = "PENDING"
    assert sched.choose_trial_to_run(controller) is e
    e.status = "PENDING"
    assert sched.choose_trial_to_run(controller) is None
    assert controller.search_alg.frozen == frozenset()


def test_a_running_trial_keeps_the_search_going(tmp_path: Path) -> None:
    """Nothing is ended while another trial runs: its end may be new evidence that thaws the paused ones."""
    sched, controller, b = idle_thawed(tmp_path)
    assert report(sched, controller, b, 3) == TrialScheduler.PAUSE
    controller.search_alg.finished = True
    controller._end_paused = lambda trial: pytest.fail("ended while a trial runs")
    c = add(sched, controller, "c")
    c.status = "RUNNING"
    controller.search_alg.max_concurrent = 2  # a free slot, and b already had its idle epoch
    assert sched.choose_trial_to_run(controller) is None
    assert sched._state.trials["b"].status == "paused"


def test_a_trial_that_raises_the_bar_ends_hopeless_paused_trials_without_asking_the_predictor(tmp_path) -> None:
    """d finishes as predicted (0.9): no new evidence, only a higher bar; b's latest prediction scores P < hopeless
    against it, so b is stopped for good, and the predictor is not asked about b again."""
    sched, controller, b = idle_thawed(tmp_path)
    assert report(sched, controller, b, 3) == TrialScheduler.PAUSE
    ended: list[SimTrial] = []
    controller._end_paused = ended.append
    d = add(sched, controller, "d")
    asked = sched._predictor.asked
    before = len(asked)
    for epoch in range(1, BUDGET + 1):
        report(sched, controller, d, epoch)
    assert "b" not in asked[before:] and sched._state.trials["d"].final == 0.9
    assert sched._state.trials["b"].status == "stopped" and ended == [b]
    last = sched.decisions_frame().query("trial_id == 'b'").iloc[-1]
    assert last["action"] == "stop" and "trial d raised the bar" in last["reason"]


def _real_search(tmp_path: Path, names: list[str], monkeypatch, limit_counts_paused: bool = False) -> tuple[Any, Path]:
    """A real Tune search, one trial at a time, of a tiny trainable that reports CURVES[name] with a checkpoint per
    epoch (and the epoch it resumed from), under the scripted scheduler; returns its results and state directory.
    The one-trial limit leaves paused trials out (the product's), or with ``limit_counts_paused`` counts them
    (Ray's own); a time budget ends a search that would otherwise wait for ever."""
    monkeypatch.setenv("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")  # a checkpoint per epoch
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from clp_tune.stopping.slots import FrozenSlotsVariantGenerator

    limit = BasicVariantGenerator if limit_counts_paused else FrozenSlotsVariantGenerator

    def trainable(config: dict) -> None:
        checkpoint = tune.get_checkpoint()
        start = 0
        if checkpoint is not None:
            with checkpoint.as_directory() as directory:
                start = int(Path(directory, "epoch").read_text())
        for epoch in range(start + 1, BUDGET + 1):
            with tempfile.TemporaryDirectory() as directory:
                Path(directory, "epoch").write_text(str(epoch))
                metrics = {"epoch": epoch, "val_acc": CURVES[config["name"]][epoch - 1], "resumed_from": start}
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    state_dir = tmp_path / "state"
    tuner = tune.Tuner(
        trainable,
        param_space={"name": tune.grid_search(names)},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", scheduler=scheduler(state_dir), search_alg=limit(max_concurrent=1),
            time_budget_s=120,
        ),
        run_config=tune.RunConfig(name="freeze", storage_path=str(tmp_path / "runs"), verbose=0,
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=1)),
    )  # fmt: skip
    results = tuner.fit()
    assert not results.errors
    compact(state_dir)  # as a search does when it ends
    return results, state_dir


def test_a_real_search_thaws_a_paused_trial_from_its_checkpoint(ray_local, tmp_path: Path, monkeypatch) -> None:
    results, state_dir = _real_search(tmp_path, ["a", "b", "c"], monkeypatch)
    history = {r.config["name"]: r.metrics_dataframe for r in results}
    ids = {r.config["name"]: r.metrics["trial_id"] for r in results}
    b = history["b"]
    assert b["epoch"].tolist() == list(range(1, BUDGET + 1))  # every epoch once: no restart, no repeat
    assert b.loc[b["epoch"] > 2, "resumed_from"].eq(2).all()  # thawed from the checkpoint of epoch 2
    assert history["c"]["epoch"].max() == BUDGET  # c ran while b was frozen
    decisions = read_decisions(state_dir / DECISIONS_FILE)
    b_rows = decisions[decisions["trial_id"] == ids["b"]]
    assert b_rows["action"].tolist()[:3] == ["continue", "pause", "thaw"]
    assert "trial" in b_rows["reason"].tolist()[2] and "finished" in b_rows["reason"].tolist()[2]
    assert stopped_outcomes(state_dir) == {}


def test_a_real_search_ends_a_paused_trial_that_nothing_thawed(ray_local, tmp_path: Path, monkeypatch) -> None:
    """a sets the bar, b is paused, gets its one idle epoch, stays unlikely: with nothing left to run, Tune's
    search ends (a paused trial would keep it alive for ever) and b is stopped from its state, not errored."""
    results, state_dir = _real_search(tmp_path, ["a", "b"], monkeypatch)
    epochs = {r.config["name"]: r.metrics_dataframe["epoch"].tolist() for r in results}
    assert epochs == {"a": list(range(1, BUDGET + 1)), "b": [1, 2, 3]}  # paused at 2, one idle epoch, then over
    decisions = read_decisions(state_dir / DECISIONS_FILE)
    b_id = _trial_id(results, "b")
    actions = decisions.loc[decisions["trial_id"] == b_id, "action"].tolist()
    assert actions == ["continue", "pause", "thaw", "pause", "stop"]
    assert stopped_outcomes(state_dir) == {b_id: "stopped"}


def _trial_id(results: Any, name: str) -> str:
    """The Tune trial id of the trial of ``name`` in a real search's results."""
    return next(r.metrics["trial_id"] for r in results if r.config["name"] == name)


def test_epochs_re_run_after_a_thaw_are_not_judged_again(tmp_path: Path) -> None:
    """A trial that checkpoints every few epochs resumes before the epoch it was paused at; judging those epochs
    again would freeze it where it was, for ever."""
    sched, controller, b = idle_thawed(tmp_path)
    assert report(sched, controller, b, 1) == TrialScheduler.CONTINUE  # resumed from its checkpoint of epoch 0
    assert report(sched, controller, b, 2) == TrialScheduler.CONTINUE  # re-run: not judged again
    assert report(sched, controller, b, 3) == TrialScheduler.PAUSE  # new: judged


def test_a_limit_that_counts_paused_trials_gets_a_slot_freed(ray_local, tmp_path: Path, monkeypatch) -> None:
    """Under Ray's own limit, b paused in the only slot keeps the searcher from ever suggesting c, and nothing
    thaws b: after its idle epoch b is stopped to free the slot, and c runs its budget."""
    results, state_dir = _real_search(tmp_path, ["a", "b", "c"], monkeypatch, limit_counts_paused=True)
    epochs = {r.config["name"]: r.metrics_dataframe["epoch"].tolist() for r in results}
    assert epochs == {"a": list(range(1, BUDGET + 1)), "b": [1, 2, 3], "c": list(range(1, BUDGET + 1))}, epochs
    b_id = _trial_id(results, "b")
    decisions = read_decisions(state_dir / DECISIONS_FILE)
    b_rows = decisions[decisions["trial_id"] == b_id]
    assert b_rows["action"].tolist() == ["continue", "pause", "thaw", "pause", "stop"]
    assert b_rows["reason"].iloc[-1].startswith(SLOT_NEEDED_REASON)
    assert stopped_outcomes(state_dir) == {b_id: "stopped"}
