"""The simulated Tune controller, the priors that must never see the evaluated task, and the benchmark's inputs."""

from __future__ import annotations

import copy
import io
import re
from contextlib import redirect_stdout
from pathlib import Path

import pandas as pd
import pytest
from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, TrialScheduler

from clp_tune.bench.baselines import ORACLE_ROW, CurveOnlyPredictor, FinalsOracle, TopKAfterFirstEpoch
from clp_tune.bench.crossfit import fit_lazy_models, spearman_table
from clp_tune.bench.metrics import Reference, score
from clp_tune.bench.priors import BenchInputError, bank_at, build_prior, other_tasks, task_bank
from clp_tune.bench.simulator import result_rows, simulate
from clp_tune.bench.suite import Setup, run_benchmark
from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.bench.tables import print_task
from clp_tune.cli import main
from clp_tune.stopping.bank_library import SHIPPED_BANK, SUITE, BankTask
from clp_tune.stopping.factory import build_scheduler
from clp_tune.stopping.features import trajectories_from_frame
from clp_tune.stopping.predictor import FinalAccuracyPredictor
from clp_tune.stopping.prior import pooled


class Recording(FIFOScheduler):
    """Records every hook call; stops or pauses where told (trial id -> (epoch, decision))."""

    def __init__(self, act: dict[str, tuple[int, str]] | None = None):
        super().__init__()
        self.act = dict(act or {})
        self.calls: list[tuple] = []

    def on_trial_add(self, tune_controller, trial):
        self.calls.append(("add", trial.trial_id))

    def on_trial_result(self, tune_controller, trial, result):
        self.calls.append(("result", trial.trial_id, result["epoch"], result["time_total_s"]))
        epoch, decision = self.act.get(trial.trial_id, (None, None))
        if epoch == result["epoch"]:
            del self.act[trial.trial_id]
            return decision
        return TrialScheduler.CONTINUE

    def on_trial_complete(self, tune_controller, trial, result):
        self.calls.append(("complete", trial.trial_id, result["epoch"]))


def _rows(lengths: dict[str, int]) -> dict[str, list[dict]]:
    return {tid: [{"epoch": e, "val_acc": 0.1 * e} for e in range(1, n + 1)] for tid, n in lengths.items()}


def test_two_workers_follow_the_simulated_clock() -> None:
    # A has 3 epochs, B 1, C 2; two slots. Clock: A and B start at 0; at 1 both report, B ends and C starts;
    # at 2 A and C report; at 3 A (started first) then C report their last epochs.
    scheduler = Recording()
    run = simulate(scheduler, ["A", "B", "C"], _rows({"A": 3, "B": 1, "C": 2}), workers=2)
    results = [c[1:3] for c in scheduler.calls if c[0] == "result"]
    assert results == [("A", 1), ("B", 1), ("A", 2), ("C", 1), ("A", 3), ("C", 2)]
    assert scheduler.calls.index(("add", "C")) == scheduler.calls.index(("complete", "B", 1)) + 1
    assert [(c.trial_id, c.epochs, c.spent, c.time) for c in run] == [
        ("B", 1, 2, 1.0), ("A", 3, 5, 3.0), ("C", 2, 6, 3.0)
    ]  # fmt: skip
    assert [c[3] for c in scheduler.calls if c[:2] == ("result", "C")] == [1.0, 2.0]  # C's own running time


def test_a_stop_frees_the_slot_for_the_next_trial_and_a_pause_keeps_it() -> None:
    stop = Recording({"A": (1, TrialScheduler.STOP)})
    run = simulate(stop, ["A", "B"], _rows({"A": 3, "B": 2}), workers=1)
    assert [(c.trial_id, c.epochs, c.spent) for c in run] == [("A", 1, 1), ("B", 2, 3)]
    pause = Recording({"A": (1, TrialScheduler.PAUSE)})
    run = simulate(pause, ["A", "B"], _rows({"A": 3, "B": 2}), workers=1)
    # A paused trial is still live for the searcher (max_concurrent_trials), so no new trial is created and
    # FIFO's choose_trial_to_run resumes it at its next epoch.
    results = [c[1:3] for c in pause.calls if c[0] == "result"]
    assert results == [("A", 1), ("A", 2), ("A", 3), ("B", 1), ("B", 2)]
    assert [(c.trial_id, c.epochs, c.spent) for c in run] == [("A", 3, 3), ("B", 2, 5)]


def test_asha_sees_results_as_tune_sends_them() -> None:
    bank = synthetic_bank(6, 4, seed=1)
    rows = result_rows(bank)
    run = simulate(AsyncHyperBandScheduler(time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2),
                   sorted(rows), rows)  # fmt: skip
    first = {tid: rows[tid][0]["val_acc"] for tid in sorted(rows)}
    # Rung 1 keeps a trial only at or above the median of the epoch-1 values recorded before it.
    seen, expected = [], {}
    for tid in sorted(rows):
        expected[tid] = not seen or first[tid] >= pd.Series(seen).quantile(0.5)
        seen.append(first[tid])
    assert {c.trial_id: c.epochs > 1 for c in run} == expected


def test_top_k_after_one_epoch_keeps_the_best_fraction_seen_so_far() -> None:
    values = {"a": 0.5, "b": 0.4, "c": 0.6, "d": 0.55, "e": 0.2}
    rows = {tid: [{"epoch": 1, "val_acc": v}, {"epoch": 2, "val_acc": v}] for tid, v in values.items()}
    run = simulate(TopKAfterFirstEpoch(0.5), list(values), rows)
    # k = ceil(n / 2) over the n values seen: a (1 of 1), b (2nd of 2, k 1), c (1st), d (2nd of 4, k 2), e (5th)
    assert {c.trial_id: c.epochs for c in run} == {"a": 2, "b": 1, "c": 2, "d": 2, "e": 1}


def test_score_counts_only_trials_that_ran_their_budget() -> None:
    bank = synthetic_bank(3, 4, seed=0)
    trajectories = {t.config["trial_id"]: t for t in trajectories_from_frame(bank)}
    ids = list(trajectories)
    finals = {tid: t.final for tid, t in trajectories.items()}
    rows = result_rows(bank)
    run = simulate(Recording({ids[1]: (2, TrialScheduler.STOP)}), ids, rows)
    s = score(run, Reference.of(trajectories))
    best_ran = max(finals[ids[0]], finals[ids[2]])
    assert s["epochs"] == 10 and s["epoch_ratio"] == pytest.approx(10 / 12)
    assert s["regret"] == pytest.approx(100 * (max(finals.values()) - best_ran))
    # area: worst-final regret for the first 4 epochs, then trial 0's, from epoch 10 the best of trials 0 and 2
    worst, best = min(finals.values()), max(finals.values())
    r0, r2 = 100 * (best - finals[ids[0]]), 100 * (best - best_ran)
    assert s["regret_area"] == pytest.approx((100 * (best - worst) * 4 + r0 * 6 + r2 * 2) / 12)


def _suite(tmp_path: Path) -> dict[str, BankTask]:
    """Three small banks: two on dataset a (different models), one on dataset b; trial ids repeat across them, as
    in the shipped banks (bank000 ...)."""
    suite = {}
    for i, (dataset, model) in enumerate((("a", "mlp"), ("a", "cnn1d"), ("b", "mlp"))):
        name = f"{dataset}_{model}"
        bank = synthetic_bank(10, 6, seed=10 + i)
        bank.assign(trial_id=bank["trial_id"].str.replace(r"^s\d+_", "bank", regex=True)).to_parquet(
            tmp_path / f"{name}.parquet"
        )
        suite[name] = BankTask(name, dataset, model, "sgd", 6, 10, "wide", i, str(tmp_path / f"{name}.parquet"))
    return suite


def test_other_tasks_never_fits_on_the_evaluated_dataset(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    evaluated = task_bank(suite["a_mlp"])
    prior = build_prior("other-tasks", evaluated, suite)
    raw_ids = set(pd.read_parquet(suite["b_mlp"].path)["trial_id"])
    assert raw_ids == set(evaluated.frame["trial_id"])  # the ids repeat across banks: only the prefix tells them apart
    assert prior.sources == ("b_mlp",)
    assert prior.trial_ids == {f"b_mlp/{tid}" for tid in raw_ids}
    assert set(prior.predictor.prior_trial_ids) == prior.trial_ids  # what the predictor's prior really holds


def test_other_tasks_on_the_shipped_suite_leaves_out_each_dataset() -> None:
    """Which banks the prior pools (what the predictor then holds is checked on a small suite above)."""
    present = [t for t in SUITE.values() if t.path.is_file()]
    for task in present:
        chosen, missing = other_tasks(task_bank(task))
        assert {t.name for t in chosen} == {t.name for t in present if t.dataset != task.dataset}  # never its own
        assert not missing


def test_fitting_the_prior_before_the_copies_changes_no_decision() -> None:
    prior = pooled({f"task{i}": synthetic_bank(10, 8, seed=20 + i) for i in range(2)})
    bank = synthetic_bank(12, 8, seed=7)
    rows, order = result_rows(bank), sorted(set(bank["trial_id"]))
    warm = FinalAccuracyPredictor(prior)
    spearman_table(bank, {"warm": warm})
    fit_lazy_models(warm, bank)
    runs = [simulate(build_scheduler("trajectory", 8, predictor=p), order, rows, workers=2)
            for p in (FinalAccuracyPredictor(prior), warm)]  # fmt: skip
    assert runs[0] == runs[1]
    assert sum(c.epochs for c in runs[0]) < 12 * 8  # it stopped trials: the decisions compared are not all "go on"


def test_the_online_spearman_table_learns_a_copy_and_scores_the_other_trials() -> None:
    """With n trials finished first, a copy of the predictor learns them (the caller's predictor is untouched)
    and only the other trials are scored; with none, every complete trial is."""
    bank = synthetic_bank(30, 8, seed=9)
    predictor = FinalAccuracyPredictor(None)
    scored: list[int] = []

    class Counting:
        def __init__(self, inner: FinalAccuracyPredictor) -> None:
            self.inner = inner

        def __deepcopy__(self, memo: dict) -> Counting:
            return Counting(copy.deepcopy(self.inner, memo))

        def predict(self, history, config, budget):
            scored.append(config["trial_id"])
            return self.inner.predict(history, config, budget)

        def observe_finished(self, rows) -> None:
            self.inner.observe_finished(rows)

    complete = [t for t in trajectories_from_frame(bank) if t.epochs >= t.budget]
    spearman_table(bank, {"p": Counting(predictor)}, finished=0)
    assert len(set(scored)) == len(complete)
    scored.clear()
    table = spearman_table(bank, {"p": Counting(predictor)}, finished=10)
    assert len(set(scored)) == len(complete) - 10 and set(table) == {"p", "last-value"}
    assert predictor._own == []  # the copy learned them, not the caller's predictor


def test_a_bank_outside_the_suite_works_with_every_prior(tmp_path: Path) -> None:
    suite = _suite(tmp_path)
    outside = synthetic_bank(8, 6, seed=4).assign(**{"config/dataset": "a"})
    outside.to_parquet(tmp_path / "mine.parquet")
    synthetic_bank(12, 6, seed=5).to_parquet(tmp_path / "prior.parquet")
    bank = bank_at(tmp_path / "mine.parquet", "--bank", suite)
    for mode, row in (("other-tasks", "traj-other"), ("none", "traj-none"), ("crossfit", "traj-crossfit"),
                      (tmp_path / "prior.parquet", "traj-file")):  # fmt: skip
        result = run_benchmark(Setup([bank], mode, orders=1, workers=(1,), only=["fifo", row], suite=suite))
        task = result["tasks"][0]
        assert list(task["schedulers"]["1"]) == ["fifo", row] and task["headline"] == row
        assert task["schedulers"]["1"]["fifo"]["epoch_ratio"] == 1
    assert task["priors"]["traj-file"]["sources"] == ["prior"]
    other = run_benchmark(Setup([bank], "other-tasks", orders=1, workers=(1,), only=["traj-other"], suite=suite))
    assert other["tasks"][0]["priors"]["traj-other"]["sources"] == ["b_mlp"]  # dataset a is left out


def test_eight_workers_give_the_same_tables_for_the_same_seed(tmp_path: Path) -> None:
    bank = bank_at(_write(tmp_path, synthetic_bank(24, 8, seed=6)), "--bank")
    setup = Setup([bank], "none", orders=3, workers=(8,), seed=3, jobs=2,
                  only=["fifo", "asha-ray", "median-t10", "top-k-1ep", "traj-none"])  # fmt: skip
    printed = []
    for _ in range(2):
        out = io.StringIO()
        with redirect_stdout(out):
            print_task(run_benchmark(setup)["tasks"][0], setup.orders)
        printed.append(out.getvalue())
    assert printed[0] == printed[1] and "-- 8 workers --" in printed[0]
    inline = run_benchmark(Setup([bank], "none", orders=3, workers=(8,), seed=3, jobs=1, only=setup.only))
    forked = run_benchmark(setup)
    for name in setup.only:
        inline_epochs = [o["trial_epochs"] for o in inline["tasks"][0]["schedulers"]["8"][name]["per_order"]]
        assert inline_epochs == [o["trial_epochs"] for o in forked["tasks"][0]["schedulers"]["8"][name]["per_order"]]


def test_the_oracle_row_predicts_each_final_and_never_loses_the_best(tmp_path: Path) -> None:
    frame = synthetic_bank(24, 8, seed=7)
    finals = {str(t.config["trial_id"]): t.final for t in trajectories_from_frame(frame)}
    oracle = FinalsOracle(finals)
    assert all(oracle.predict({"val_acc": [0.1]}, {"trial_id": t}, 8).mean == f for t, f in finals.items())
    bank = bank_at(_write(tmp_path, frame), "--bank")
    result = run_benchmark(Setup([bank], "none", orders=3, workers=(1, 8), only=["fifo", ORACLE_ROW]))
    for workers, rows in result["tasks"][0]["schedulers"].items():
        exact = rows[ORACLE_ROW]
        assert exact["misses"] == 0 and exact["regret_worst"] == 0, (workers, exact)
        assert exact["epoch_ratio"] < rows["fifo"]["epoch_ratio"], (workers, exact)


def _write(tmp_path: Path, frame: pd.DataFrame, name: str = "bank.parquet") -> Path:
    frame.to_parquet(tmp_path / name)
    return tmp_path / name


def test_bad_inputs_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    bad = _write(tmp_path, synthetic_bank(2, 3, seed=0).drop(columns=["val_acc"]), "bad.parquet")
    (tmp_path / "junk.parquet").write_text("not parquet")
    junk, missing = str(tmp_path / "junk.parquet"), str(tmp_path / "missing.parquet")
    cases = {
        ("--prior", "sometimes"): "--prior", ("--prior", str(bad)): "--prior", ("--prior", junk): "--prior",
        ("--bank", str(bad)): "--bank", ("--bank", missing): "--bank", ("--bank", junk): "--bank",
        ("--task", "nope"): "--task", ("--workers", "0"): "--workers", ("--ray", "--workers", "8"): "--workers",
        ("--schedulers", "fifo,nope"): "--schedulers", ("--delta", "2"): "0 < delta < 1",
    }  # fmt: skip
    for arguments, named in cases.items():
        assert main(["bench", "schedulers", *arguments]) == 2, arguments
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and named in err, (arguments, err)


def test_a_missing_suite_bank_says_how_to_record_it(tmp_path: Path) -> None:
    task = BankTask("gone_mlp_sgd_5", "digits", "mlp", "sgd", 5, 10, "sgd", 0, str(tmp_path / "gone.parquet"))
    with pytest.raises(BenchInputError, match=r"gone\.parquet.*clp-tune bank record --task gone_mlp_sgd_5"):
        task_bank(task)


def test_scheduler_cost_times_every_result(tmp_path: Path, capsys) -> None:
    prior = _write(tmp_path, synthetic_bank(12, 6, seed=8), "prior.parquet")
    common = ["bench", "scheduler-cost", "--trials", "30", "--epochs", "6", "--bank", str(prior)]
    assert main(common) == 0
    out = capsys.readouterr().out
    assert 30 < int(re.search(r"(\d+) results judged", out).group(1)) <= 30 * 6 and "(every epoch)" in out
    assert re.search(r"median [\d.]+ ms, 99th percentile [\d.]+ ms", out) and "driver resident memory" in out
    assert main([*common, "--judged-epochs", "2"]) == 0
    out = capsys.readouterr().out
    assert int(re.search(r"(\d+) results judged", out).group(1)) <= 30 * 2 and "capped" in out


def test_benchmarks_and_recording_refuse_bad_sizes_and_banks_with_exit_2(tmp_path: Path, capsys) -> None:
    """Each of these was a traceback (exit 1) after the search or the recording had started, and `bank record`
    without --task or --out replaced the shipped bank, every search's prior."""
    for arguments in (["bench", "scheduler-cost", "--trials", "0"], ["bench", "scheduler-cost", "--workers", "x"],
                      ["bench", "scheduler-cost", "--judged-epochs", "0"], ["bank", "record", "--trials", "0"],
                      ["bank", "record", "--epochs", "0"], ["bench", "mnist1d-reference", "--seeds", "0"],
                      ["bench", "statistics-overhead", "--repeats", "0"]):  # fmt: skip
        with pytest.raises(SystemExit) as refused:
            main(arguments)
        last = capsys.readouterr().err.strip().splitlines()[-1]
        assert refused.value.code == 2 and arguments[2] in last and "expected an integer >= 1" in last, arguments
    (tmp_path / "junk.parquet").write_text("not parquet")
    for bank in (tmp_path / "missing.parquet", tmp_path / "junk.parquet"):
        assert main(["bench", "scheduler-cost", "--trials", "5", "--bank", str(bank)]) == 2
        captured = capsys.readouterr()
        assert captured.err.startswith("error: --bank: ") and len(captured.err.strip().splitlines()) == 1
        assert "results judged" not in captured.out
    shipped = SHIPPED_BANK.stat().st_mtime_ns
    assert main(["bank", "record", "--trials", "1", "--epochs", "1"]) == 2
    assert "--out" in capsys.readouterr().err and SHIPPED_BANK.stat().st_mtime_ns == shipped


def test_the_curve_only_baseline_predicts_what_a_predictor_without_trees_does() -> None:
    """The δ rule's baseline keeps one prediction per val_acc curve for all its runs: that holds only while such a
    predictor reads nothing but the curve and the budget, whatever else the trial reports and whatever it has seen."""
    bank = synthetic_bank(30, 12, seed=3)
    fresh = FinalAccuracyPredictor(bank=None, refit_every=0, min_trials=10**9)
    baseline = CurveOnlyPredictor()
    baseline.observe_finished(bank)
    for trajectory in trajectories_from_frame(bank)[:10]:
        for epoch in (1, 2, 3, 7, 12):
            history = trajectory.upto(epoch)
            expected = fresh.predict(history, trajectory.config, trajectory.budget)
            assert baseline.predict(history, trajectory.config, trajectory.budget) == expected
            assert baseline.predict({"val_acc": history["val_acc"]}, {}, trajectory.budget) == expected
