"""TrajectoryScheduler decisions on hand-made trajectories, driven through its Ray hooks with a fake trial, and the
outcomes it hands to the run's tables (also on a real search)."""

from __future__ import annotations

import copy
import json
import math
import pickle
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from conftest import tiny_spec
from ray.tune.schedulers import TrialScheduler

from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.search import run_search
from clp_tune.spec import parse_spec
from clp_tune.stopping.bank_library import SHIPPED_BANK, SUITE
from clp_tune.stopping.incontext import InContextModel
from clp_tune.stopping.persistence import compact, stopped_outcomes
from clp_tune.stopping.predictor import FinalAccuracyPredictor
from clp_tune.stopping.scheduler import TrajectoryScheduler
from clp_tune.vocabulary import DECISIONS_FILE, SCHEDULER_JOURNAL_FILE, SCHEDULER_STATE_FILE

BUDGET = 20


class FakeTrial:
    """The two attributes of ray.tune.experiment.Trial the scheduler reads."""

    def __init__(self, trial_id: str, config: dict):
        self.trial_id = trial_id
        self.config = config


def curve(a: float, tau: float, dropout: float = 0.0, label_noise: float = 0.0, lr: float = 0.01) -> list[dict]:
    """Result rows of a saturating curve towards ``a`` on time scale ``tau`` (fraction of the budget)."""
    rows = []
    for epoch in range(1, BUDGET + 1):
        x = epoch / BUDGET
        level = 0.1 + (a - 0.1) * (1 - math.exp(-x / tau))
        train_acc = (1 - label_noise) * min(1.0, level + 0.1 * x)
        rows.append({
            "epoch": epoch, "val_acc": level, "train_acc": train_acc, "train_loss": -math.log(max(train_acc, 1e-3)),
            "val_loss": -math.log(level), "lr": lr * 0.5 * (1 + math.cos(math.pi * x)), "diverged": 0,
        })  # fmt: skip
    return rows


def config(dropout: float = 0.0, label_noise: float = 0.0, lr: float = 0.01) -> dict:
    return {"lr": lr, "batch_size": 64, "dropout": dropout, "label_noise": label_noise, "epochs": BUDGET,
            "optimizer": "sgd"}  # fmt: skip


def run_trial(scheduler: TrajectoryScheduler, trial: FakeTrial, rows: list[dict]) -> list[str]:
    """Feed rows as Ray would: results until STOP or the end, then on_trial_complete."""
    scheduler.on_trial_add(None, trial)
    actions = []
    for row in rows:
        actions.append(scheduler.on_trial_result(None, trial, dict(row)))
        if actions[-1] == TrialScheduler.STOP:
            break
    scheduler.on_trial_complete(None, trial, dict(row))
    return actions


@pytest.fixture(scope="module")
def fitted_predictor() -> FinalAccuracyPredictor:
    predictor = FinalAccuracyPredictor(synthetic_bank(100, BUDGET, seed=3))
    rows = curve(0.8, 0.05)
    predictor.predict({"val_acc": [r["val_acc"] for r in rows[:3]]}, config(), BUDGET)  # fit the prior once
    return predictor


def make_scheduler(predictor: FinalAccuracyPredictor, state_dir: Path | None = None, **kw) -> TrajectoryScheduler:
    kw = {"budget": BUDGET, "k": 3, "delta": 0.05, "min_fraction": 0.2, "max_fraction": 0.25, "noise_grace": True,
          "noise_factor": 1.0, **kw}  # fmt: skip
    scheduler = TrajectoryScheduler(predictor=copy.deepcopy(predictor), state_dir=state_dir, **kw)
    scheduler.set_search_properties("val_acc", "max")
    return scheduler


def with_references(scheduler: TrajectoryScheduler) -> None:
    """Three good, fast trials that finish: the k-th best final becomes ~0.78."""
    for i, a in enumerate((0.8, 0.79, 0.78)):
        actions = run_trial(scheduler, FakeTrial(f"ref{i}", config()), curve(a, 0.05))
        assert TrialScheduler.STOP not in actions


def test_hopeless_trial_stops_at_its_grace_point_not_before(fitted_predictor) -> None:
    scheduler = make_scheduler(fitted_predictor)
    with_references(scheduler)
    rows = curve(0.2, 0.05)  # learns quickly to a poor 20 %; train accuracy never reaches 50 %: acc50 never fires
    actions = run_trial(scheduler, FakeTrial("hopeless", config()), rows)
    grace = math.ceil(scheduler.max_fraction * BUDGET)  # the detector never fired: held back up to max_fraction
    assert actions[-1] == TrialScheduler.STOP
    assert len(actions) == grace
    decisions = scheduler.decisions_frame().query("trial_id == 'hopeless'")
    assert decisions["reason"].iloc[0].startswith("grace")
    assert decisions["action"].iloc[-1] == "stop" and decisions["p_beat"].iloc[-1] < 0.05
    assert decisions["threshold"].iloc[-1] == pytest.approx(0.78, abs=1e-6)


def test_grace_follows_the_detector_and_noise(fitted_predictor) -> None:
    scheduler = make_scheduler(fitted_predictor, min_fraction=0.1, max_fraction=0.5)
    with_references(scheduler)
    rows = [dict(r, cp_end_acc50=math.nan if r["epoch"] < 7 else 7.0) for r in curve(0.2, 0.05)]
    assert len(run_trial(scheduler, FakeTrial("late-detector", config()), rows)) == 7
    noisy = make_scheduler(fitted_predictor, min_fraction=0.2, max_fraction=0.2, noise_factor=1.0)
    with_references(noisy)
    actions = run_trial(noisy, FakeTrial("noisy", config(dropout=0.5)), curve(0.2, 0.05))
    assert len(actions) == math.ceil(0.2 * BUDGET * 1.5)  # grace x (1 + dropout + label_noise)
    weak = make_scheduler(fitted_predictor, min_fraction=0.2, max_fraction=0.2, noise_factor=0.5)
    with_references(weak)
    actions = run_trial(weak, FakeTrial("weak-noise", config(dropout=0.1)), curve(0.2, 0.05))
    assert len(actions) == 0.2 * BUDGET  # 4 x 1.05 epochs rounds to 4: weak noise does not lengthen the grace


@pytest.mark.parametrize("defaults", [False, True], ids=["long-grace", "scheduler-defaults"])
def test_late_bloomer_under_high_dropout_is_not_stopped(fitted_predictor, defaults: bool) -> None:
    if defaults:  # a grace of one epoch: only the predictor (which knows dropout slows curves) protects it
        scheduler = TrajectoryScheduler(budget=BUDGET, predictor=copy.deepcopy(fitted_predictor))
        scheduler.set_search_properties("val_acc", "max")
    else:
        scheduler = make_scheduler(fitted_predictor)
    with_references(scheduler)
    rows = curve(0.88, 0.3, dropout=0.5)  # at 20 % of the budget it is far below the references
    assert rows[3]["val_acc"] < 0.5 < 0.78
    actions = run_trial(scheduler, FakeTrial("bloomer", config(dropout=0.5)), rows)
    assert TrialScheduler.STOP not in actions and len(actions) == BUDGET
    assert scheduler._state.trials["bloomer"].status == "finished"


def test_diverged_trials_stop_at_once(fitted_predictor) -> None:
    scheduler = make_scheduler(fitted_predictor)
    nan_rows = [{"epoch": 1, "val_acc": 0.1, "train_loss": math.nan, "val_loss": math.nan, "diverged": 0}]
    assert run_trial(scheduler, FakeTrial("nan", config()), nan_rows) == [TrialScheduler.STOP]
    flagged = [{"epoch": 1, "val_acc": 0.0, "train_loss": 2.3, "diverged": 1}]
    assert run_trial(scheduler, FakeTrial("flagged", config()), flagged) == [TrialScheduler.STOP]
    exploding = [{"epoch": e, "val_acc": 0.1, "train_loss": 2.0 * 4 ** (e - 1)} for e in (1, 2)]
    assert run_trial(scheduler, FakeTrial("exploding", config()), exploding) == [TrialScheduler.CONTINUE, "STOP"]
    reasons = scheduler.decisions_frame().set_index("trial_id")["reason"]
    assert all(reasons[t].startswith("diverged") for t in ("nan", "flagged"))
    assert {s.status for s in scheduler._state.trials.values()} == {"diverged"}


def test_stopped_outcomes_are_the_schedulers_judgement(fitted_predictor, tmp_path: Path) -> None:
    """What the run's tables take as a stopped trial's outcome: diverged by the scheduler's own rule (3x the first
    training loss, a non-finite loss) though the trainable never flagged it, or stopped; read back from the state
    on disk, including a stop still only in the journal (the driver died before the trial completed)."""
    scheduler = make_scheduler(fitted_predictor, tmp_path)
    with_references(scheduler)
    exploding = [{"epoch": e, "val_acc": 0.1, "train_loss": 2.0 * 4 ** (e - 1), "diverged": 0} for e in (1, 2)]
    run_trial(scheduler, FakeTrial("exploding", config()), exploding)
    nan_loss = [{"epoch": 1, "val_acc": 0.1, "train_loss": math.nan, "val_loss": math.nan, "diverged": 0}]
    run_trial(scheduler, FakeTrial("nan", config()), nan_loss)
    run_trial(scheduler, FakeTrial("hopeless", config()), curve(0.2, 0.05))
    assert stopped_outcomes(tmp_path) == {"exploding": "diverged", "nan": "diverged", "hopeless": "stopped"}
    assert {scheduler._state.trials[t].status for t in ("exploding", "nan")} == {"diverged"}

    trial = FakeTrial("crashed", config())
    scheduler.on_trial_add(None, trial)
    for row in exploding:
        scheduler.on_trial_result(None, trial, dict(row))
    assert json.loads((tmp_path / SCHEDULER_JOURNAL_FILE).read_text().splitlines()[-1])["decision"]["action"] == "stop"
    assert stopped_outcomes(tmp_path)["crashed"] == "diverged"
    assert stopped_outcomes(tmp_path / "no-state") == {}


def test_store_takes_the_schedulers_divergence_on_a_real_run(ray_local, tmp_path: Path) -> None:
    """A real search whose one trial's training loss jumps to ~40x its first value at epoch 3 (finite, so the
    trainable does not flag it): the scheduler stops it as diverged, and trials.parquet and the report agree."""
    spec = parse_spec(
        tiny_spec(epochs=4, num_samples=1, statistics=[], scheduler={"type": "trajectory"},
                  params={"optimizer": "sgd", "lr": 0.3, "momentum": 0.99, "lr_schedule": "constant",
                          "batch_size": 128})
    )  # fmt: skip
    paths = run_search(spec, storage_path=tmp_path / "runs", run_name="diverging", reports_dir=tmp_path / "reports")
    rows = pd.read_parquet(paths.run_dir / "trajectories.parquet")
    assert rows["epoch"].tolist() == [1, 2, 3] and (rows["diverged"] == 0).all()
    assert rows["train_loss"].iloc[-1] > 3 * rows["train_loss"].iloc[0]
    trials = pd.read_parquet(paths.run_dir / "trials.parquet")
    assert trials["status"].tolist() == ["diverged"]
    state = json.loads((paths.run_dir / SCHEDULER_STATE_FILE).read_text())
    assert [s["status"] for s in state["trials"].values()] == ["diverged"]
    assert "0 finished, 0 stopped, 1 diverged" in (paths.report_dir / "index.html").read_text()


def test_no_stopping_before_k_references(fitted_predictor) -> None:
    scheduler = make_scheduler(fitted_predictor)
    actions = run_trial(scheduler, FakeTrial("alone", config()), curve(0.2, 0.05))
    assert TrialScheduler.STOP not in actions
    assert "fewer than k=3" in scheduler.decisions_frame()["reason"].iloc[-2]


def test_running_trials_predictions_count_when_few_finished(fitted_predictor) -> None:
    """Concurrent trials: until k finals exist, the predicted finals of running trials fill the k-th best."""
    scheduler = make_scheduler(fitted_predictor)
    good = [FakeTrial(f"run{i}", config()) for i in range(3)]
    for trial in good:
        scheduler.on_trial_add(None, trial)
    for row in curve(0.8, 0.05)[:6]:
        for trial in good:
            assert scheduler.on_trial_result(None, trial, dict(row)) == TrialScheduler.CONTINUE
    assert run_trial(scheduler, FakeTrial("poor", config()), curve(0.2, 0.05))[-1] == TrialScheduler.STOP


def test_rejects_other_metrics(fitted_predictor) -> None:
    scheduler = TrajectoryScheduler(budget=BUDGET, predictor=fitted_predictor)
    scheduler.set_search_properties("val_loss", "min")
    with pytest.raises(ValueError, match="val_acc"):
        scheduler.on_trial_add(None, FakeTrial("t", config()))


def _search(scheduler: TrajectoryScheduler, trials: list[tuple[str, dict, list[dict]]]) -> list:
    out = []
    for trial_id, cfg, rows in trials:
        out.append(run_trial(scheduler, FakeTrial(trial_id, cfg), rows))
    return out


def _trials() -> list[tuple[str, dict, list[dict]]]:
    specs = [(0.8, 0.05, 0.0), (0.79, 0.05, 0.0), (0.78, 0.05, 0.0), (0.3, 0.05, 0.0), (0.88, 0.3, 0.5),
             (0.5, 0.1, 0.2), (0.82, 0.1, 0.0), (0.25, 0.2, 0.5)]  # fmt: skip
    return [(f"t{i}", config(dropout=d), curve(a, tau, dropout=d)) for i, (a, tau, d) in enumerate(specs)]


def test_state_survives_restore(fitted_predictor, tmp_path: Path) -> None:
    """A scheduler rebuilt from state_dir mid-search (constructor, or unpickling the copy Ray saved at the
    start) decides exactly as the uninterrupted one."""
    trials = _trials()
    reference = make_scheduler(fitted_predictor)
    expected = _search(reference, trials)
    expected_decisions = reference.decisions_frame()

    first = make_scheduler(fitted_predictor, tmp_path / "a", snapshot_every=4)
    pickled_at_start = pickle.dumps(first)
    _search(first, trials[:5])
    trial_id, cfg, rows = trials[5]  # interrupted in the middle of a trial
    first.on_trial_add(None, FakeTrial(trial_id, cfg))
    for row in rows[:3]:
        first.on_trial_result(None, FakeTrial(trial_id, cfg), dict(row))
    assert (tmp_path / "a" / SCHEDULER_STATE_FILE).is_file() and (tmp_path / "a" / SCHEDULER_JOURNAL_FILE).is_file()
    with open(tmp_path / "a" / SCHEDULER_JOURNAL_FILE, "a") as f:
        f.write('{"trial_id": "t5", "torn')  # a crash mid-line

    for resumed in (
        make_scheduler(fitted_predictor, tmp_path / "a", snapshot_every=4),
        pickle.loads(pickled_at_start),  # what Tuner.restore does
    ):
        assert resumed._state.trials[trial_id].epochs == [1, 2, 3]
        finished = [s for s in resumed._state.trials.values() if s.status == "finished"]
        assert finished and all(s.scores for s in finished)  # its recalibration, as the search stood at each finish
        # Ray resumes the trial from its last checkpoint: it may re-report an epoch
        actions = []
        resumed.on_trial_add(None, FakeTrial(trial_id, cfg))
        for row in rows[2:]:
            actions.append(resumed.on_trial_result(None, FakeTrial(trial_id, cfg), dict(row)))
            if actions[-1] == TrialScheduler.STOP:
                break
        resumed.on_trial_complete(None, FakeTrial(trial_id, cfg), dict(row))
        rest = _search(resumed, trials[6:])
        assert rest == expected[6:]
        assert len(actions) + 2 == len(expected[5])
        got = resumed.decisions_frame()
        pd.testing.assert_frame_equal(got, expected_decisions)


def test_decisions_stay_cheap_in_context(fitted_predictor) -> None:
    """Every result is decided in the search's context (once enough trials are there) without refitting: a model
    is fitted once per feature set and amount of data, never per decision (decision time: bench scheduler-cost)."""
    scheduler = make_scheduler(fitted_predictor)
    predictor = scheduler._predictor
    fits, decisions = [], 0
    fit, context_fit = predictor._fit, InContextModel._fit

    def recorded(available: frozenset[str]):
        fits.append(("trees", available, predictor._own_at_fit))
        return fit(available)

    def context_recorded(model: InContextModel, available: frozenset[str]):
        fits.append(("context", available, id(model)))
        return context_fit(model, available)

    with (
        mock.patch.object(predictor, "_fit", side_effect=recorded),
        mock.patch.object(InContextModel, "_fit", context_recorded),
    ):
        for trial_id, cfg, rows in _trials() + [(f"x{i}", c, r) for i, (_, c, r) in enumerate(_trials())]:
            scheduler.on_trial_add(None, FakeTrial(trial_id, cfg))
            for row in rows:
                decisions += 1
                if scheduler.on_trial_result(None, FakeTrial(trial_id, cfg), dict(row)) == TrialScheduler.STOP:
                    break
            scheduler.on_trial_complete(None, FakeTrial(trial_id, cfg), dict(row))
    assert any(kind == "context" for kind, _, _ in fits)  # the in-context model did decide
    assert len(fits) == len(set(fits)) and len(fits) < decisions / 10, (len(fits), decisions)


def test_decisions_parquet_is_written(fitted_predictor, tmp_path: Path) -> None:
    scheduler = make_scheduler(fitted_predictor, tmp_path)
    _search(scheduler, _trials()[:3])
    assert not (tmp_path / DECISIONS_FILE).exists()  # journaled: nothing rewritten per trial
    compact(tmp_path)  # what a search does when it ends
    (first_part,) = (tmp_path / DECISIONS_FILE).iterdir()
    first_bytes = first_part.read_bytes()
    scheduler = make_scheduler(fitted_predictor, tmp_path)  # resumed: appends, never rewrites what is saved
    _search(scheduler, _trials()[3:5])
    compact(tmp_path)
    assert len(list((tmp_path / DECISIONS_FILE).iterdir())) == 2 and first_part.read_bytes() == first_bytes
    decisions = pd.read_parquet(tmp_path / DECISIONS_FILE)
    assert list(decisions.columns) == [
        "trial_id", "epoch", "pred_mean", "pred_std", "threshold", "p_beat", "action", "reason"
    ]  # fmt: skip
    assert set(decisions["action"]) <= {"continue", "stop"}
    assert len(decisions) == sum(len(s.epochs) for s in scheduler._state.trials.values())
    finals = sorted(s.final for s in scheduler._state.trials.values() if s.final is not None)
    assert scheduler.debug_string() == (
        f"TrajectoryScheduler (k=3, delta=0.05): 4 finished, 1 stopped; k-th best val_acc {finals[-3]:.4f}"
    )
    assert not list(tmp_path.glob(".*tmp"))  # temp files renamed into place


def test_default_prior_is_every_shipped_bank_for_any_dataset(tmp_path: Path) -> None:
    """Without a bank, the prior is fitted on every shipped suite bank (ids prefixed with their task), whatever the
    search's dataset; a given bank is the prior alone."""
    digits = TrajectoryScheduler(budget=BUDGET)
    digits.set_search_properties("val_acc", "max")
    digits.on_trial_add(None, FakeTrial("d", {**config(), "dataset": "digits"}))
    shipped = [task for task in SUITE.values() if task.path.is_file()]
    assert SHIPPED_BANK.is_file() and shipped, f"the shipped bank {SHIPPED_BANK} is missing"
    assert {i.split("/")[0] for i in digits.predictor.prior_trial_ids} == {task.name for task in shipped}
    synthetic_bank(10, BUDGET, seed=1).to_parquet(tmp_path / "bank.parquet")
    given = TrajectoryScheduler(budget=BUDGET, bank=str(tmp_path / "bank.parquet"))
    given.on_trial_add(None, FakeTrial("d", {**config(), "dataset": "digits"}))
    assert sorted(given.predictor.prior_trial_ids) == [f"s1_{i:03d}" for i in range(10)]
