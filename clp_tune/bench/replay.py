"""``clp-tune bench schedulers``: replay a trajectory bank through real Ray Tune under each scheduler.

Every scheduler sees the same recorded trials in the same order (one at a time, ``max_concurrent_trials=1``),
so the differences are the schedulers' alone. A replay trainable reports the recorded rows of its trial epoch
by epoch (with the trial's ``config/<key>`` columns, as a real result carries them), without sleeping.

Compared, per order of the trials (seeded shuffles) and then averaged:

* no stopping (FIFO); ASHA (``AsyncHyperBandScheduler``: time_attr=epoch, max_t=T, grace_period=max(1, T//10),
  reduction_factor=3 -- the product's settings, ``clp_tune.stopping.factory``); the median stopping rule
  (``MedianStoppingRule``: grace_period=max(1, T//10), min_samples_required=3); the trajectory scheduler;
* total epochs (and the ratio to no stopping), best final val_acc among trials that ran their whole budget,
  regret to the bank's best final (points), epochs until a trial within 0.5 points of the best had finished;
* regret at matched budgets: the best final among trials *finished within* ASHA's epochs in that order (and
  twice them), read off each run's timeline (a scheduler that used fewer epochs keeps its final result);
* Spearman correlation of predicted vs true final accuracy at 10, 25 and 50 % of the budget, for the
  trajectory predictor and two baselines (the last value; the curve extrapolation alone).

Leave-bank-out: the predictor must never be fitted on the trial it judges. The bank's trials are split into
``folds`` folds by trial and each fold is judged by a predictor whose prior was fitted on the other folds
(cross-fitting); the predictor also learns online, as in a real search, from trials finished in the replay.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import statistics as stats
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from clp_tune.bench.crossfit import CrossFitPredictor, spearman_table
from clp_tune.stopping.bank_library import SHIPPED_BANK, load_bank
from clp_tune.stopping.factory import build_scheduler, stock_scheduler_args
from clp_tune.stopping.features import Trajectory, is_complete, trajectories_from_frame
from clp_tune.vocabulary import SCHEDULER_TYPES

NEAR_BEST = 0.005  # "within 0.5 points of the bank's best"


def _replay_rows(bank: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Per trial, the rows the replay trainable reports: finite numbers and strings only (JSON-safe results)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for trial_id, rows in bank.groupby("trial_id", sort=False):
        records = []
        for record in rows.drop(columns=["trial_id"]).to_dict("records"):
            clean = {}
            for key, value in record.items():
                if isinstance(value, str):
                    clean[key] = value
                elif value is not None and not isinstance(value, (list, dict)):
                    number = float(value)
                    clean[key] = number if math.isfinite(number) else math.nan
            clean["epoch"] = int(record["epoch"])
            records.append(clean)
        out[str(trial_id)] = records
    return out


def make_replay_trainable() -> Callable[..., None]:
    """The replay trainable: reports the recorded rows of ``config["trial_id"]``, one per epoch, no sleeping.

    It is built inside a function so that cloudpickle ships it by value: the trial actor then never imports
    this module (pandas, scipy, the predictor), which would cost seconds per replay on a small machine.
    """

    def replay(config: dict[str, Any], rows: dict[str, list[dict[str, Any]]]) -> None:
        from ray import tune

        for row in rows[config["trial_id"]]:
            tune.report(row)

    return replay


@contextlib.contextmanager
def _quiet_tune():
    """A replay without Tune's console output and its CSV and TensorBoard loggers (~40 % of a replay's time).

    Tune prints banners even at verbose=0, and warns about "slow" scheduler calls when the predictor refits;
    the trials' result.json files are kept.
    """
    key, previous = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS")
    tune_logger = logging.getLogger("ray.tune")
    level = tune_logger.level
    os.environ[key] = "1"
    tune_logger.setLevel(logging.ERROR)
    try:
        with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
            yield
    finally:
        tune_logger.setLevel(level)
        if previous is None:
            del os.environ[key]
        else:
            os.environ[key] = previous


def _replay_once(
    name: str, order: list[str], trainable: Any, budget: int, predictor: CrossFitPredictor, run_dir: Path, options: dict
) -> list[tuple[str, int]]:
    """Run one scheduler over the trials in ``order``; returns (trial_id, epochs reported) in execution order."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    reported: dict[str, int] = {}
    started: list[str] = []

    class Recorder(tune.Callback):
        def on_trial_start(self, iteration, trials, trial, **info):
            started.append(trial.config["trial_id"])

        def on_trial_result(self, iteration, trials, trial, result, **info):
            reported[trial.config["trial_id"]] = int(result["epoch"])

    scheduler = build_scheduler(name, budget, state_dir=run_dir, trajectory_options=options, predictor=predictor)
    tuner = tune.Tuner(
        trainable,
        param_space={"trial_id": tune.grid_search(order)},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", scheduler=scheduler, max_concurrent_trials=1, reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=str(run_dir.parent), verbose=0,
            callbacks=[Recorder(), JsonLoggerCallback()],
        ),
    )  # fmt: skip
    with _quiet_tune():
        results = tuner.fit()
    if results.errors:
        raise RuntimeError(f"replay under {name} failed: {results.errors[0]}")
    if started != order:
        raise RuntimeError(f"Ray Tune ran the trials out of order under {name}")
    return [(trial_id, reported.get(trial_id, 0)) for trial_id in started]


def _timeline_metrics(
    timeline: list[tuple[str, int]], trajectories: Mapping[str, Trajectory], best: float, fifo_epochs: int
) -> dict[str, Any]:
    """Totals, best final, regret and the time-to-near-best of one run."""
    cumulative, finished = 0, []  # (cumulative epochs when it finished, final)
    for trial_id, epochs in timeline:
        cumulative += epochs
        t = trajectories[trial_id]
        if is_complete(t) and epochs >= t.budget:
            finished.append((cumulative, t.final))
    best_found = max((f for _, f in finished), default=math.nan)
    near = next((c for c, f in finished if f >= best - NEAR_BEST - 1e-9), None)
    return {
        "total_epochs": cumulative,
        "epoch_ratio": cumulative / fifo_epochs,
        "best_final": best_found,
        "regret_points": 100 * (best - best_found),
        "epochs_to_near_best": near,
        "finished": finished,
    }


def _regret_within(finished: list[tuple[int, float]], budget: float, best: float) -> float:
    found = [f for c, f in finished if c <= budget]
    return 100 * (best - max(found)) if found else math.nan


def _summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean over orders, plus the per-order values (and min / max for regret and epochs)."""
    out: dict[str, Any] = {}
    for key in ("total_epochs", "epoch_ratio", "best_final", "regret_points", "epochs_to_near_best",
                "regret_at_asha_budget", "regret_at_2x_asha_budget", "seconds"):  # fmt: skip
        values = [r[key] for r in runs]
        present = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
        out[key] = stats.mean(present) if present else None
        out[f"{key}_per_order"] = values
    out["regret_points_max"] = max(r["regret_points"] for r in runs)
    out["epoch_ratio_max"] = max(r["epoch_ratio"] for r in runs)
    return out


def _targets(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The issue's targets for the trajectory scheduler, each with the measured values and whether it is met."""
    spearman = result["spearman"]
    out: dict[str, dict[str, Any]] = {
        "spearman_at_25pct_ge_0.92": {"value": spearman["trajectory"]["0.25"]},
        "spearman_at_10pct_ge_last_value_plus_0.1": {
            "value": spearman["trajectory"]["0.1"], "last_value": spearman["last_value"]["0.1"]
        },
    }  # fmt: skip
    out["spearman_at_25pct_ge_0.92"]["met"] = out["spearman_at_25pct_ge_0.92"]["value"] >= 0.92
    ten = out["spearman_at_10pct_ge_last_value_plus_0.1"]
    ten["met"] = ten["value"] >= ten["last_value"] + 0.1
    runs = result["schedulers"]
    if "trajectory" in runs and "fifo" in runs:
        t = runs["trajectory"]
        out["epochs_le_0.15_and_regret_le_0.1_every_order"] = {  # epochs averaged over orders, regret in each
            "epoch_ratio": t["epoch_ratio"], "epoch_ratio_max": t["epoch_ratio_max"],
            "regret_points_max": t["regret_points_max"],
            "met": t["epoch_ratio"] <= 0.15 and t["regret_points_max"] <= 0.1,
        }  # fmt: skip
    if "trajectory" in runs and "asha" in runs:
        for key in ("regret_at_asha_budget", "regret_at_2x_asha_budget"):
            ours, asha = runs["trajectory"][key], runs["asha"][key]
            tied = ours is not None and ours == asha == 0  # neither lost the best trial: nothing to win
            met = ours is not None and asha is not None and ours < asha
            out[f"{key}_below_asha"] = {"trajectory": ours, "asha": asha, "met": met, "tied_at_zero": tied}
    return out


def _print_table(result: dict[str, Any]) -> None:
    print(f"bank: {result['bank']}  ({result['trials']} trials, budget {result['budget']} epochs, "
          f"best final val_acc {result['bank_best']:.4f}; {result['repetitions']} orders)")  # fmt: skip
    header = f"{'scheduler':<11}{'epochs':>9}{'ratio':>7}{'max':>7}{'best':>8}{'regret':>8}{'max reg':>8}"
    header += f"{'to<=0.5pt':>10}{'reg@ASHA':>9}{'reg@2xA':>8}{'s/run':>7}"
    print(header)

    def fmt(v: Any, spec: str) -> str:
        missing = v is None or (isinstance(v, float) and math.isnan(v))
        return format("-", f">{spec.split('.')[0]}") if missing else format(v, spec)

    for name, s in result["schedulers"].items():
        print(f"{name:<11}{fmt(s['total_epochs'], '9.0f')}{fmt(s['epoch_ratio'], '7.3f')}"
              f"{fmt(s['epoch_ratio_max'], '7.3f')}"
              f"{fmt(s['best_final'], '8.4f')}{fmt(s['regret_points'], '8.2f')}{fmt(s['regret_points_max'], '8.2f')}"
              f"{fmt(s['epochs_to_near_best'], '10.0f')}{fmt(s['regret_at_asha_budget'], '9.2f')}"
              f"{fmt(s['regret_at_2x_asha_budget'], '8.2f')}{fmt(s['seconds'], '7.1f')}")  # fmt: skip
    print("Spearman(predicted, true final) at fraction of budget:")
    for name, row in result["spearman"].items():
        print(f"  {name:<11}" + "  ".join(f"{f}: {fmt(v, '.3f')}" for f, v in row.items()))

    def verdict(target: dict[str, Any]) -> str:
        return "met" if target["met"] else "tied (both 0)" if target.get("tied_at_zero") else "MISSED"

    print("targets: " + ", ".join(f"{name} {verdict(t)}" for name, t in result["targets"].items()))


def run_scheduler_benchmark(
    bank_path: str | None,
    repetitions: int = 5,
    out_json: str | None = None,
    folds: int = 5,
    seed: int = 0,
    schedulers: Sequence[str] = SCHEDULER_TYPES,
    trajectory_options: dict[str, Any] | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Replay ``bank_path`` under each scheduler for ``repetitions`` seeded orders; print a table, return results.

    Args:
        bank_path: bank Parquet (None: the shipped mnist1d bank).
        repetitions: number of orders of the trials (seeded shuffles ``seed``, ``seed + 1``, ...).
        out_json: where to write the results as JSON (None: not written).
        folds: cross-fitting folds for the predictor's prior (leave-bank-out).
        seed: seed of the first order.
        schedulers: which of ``SCHEDULER_TYPES`` to replay (``asha`` is needed for the matched-budget regrets).
        trajectory_options: extra TrajectoryScheduler arguments (k, delta, min_fraction, ...).
        quiet: do not print the table.
    """
    import ray

    started = time.perf_counter()
    bank = load_bank(bank_path)
    trajectories = {t.config["trial_id"]: t for t in trajectories_from_frame(bank)}
    complete = {tid: t.final for tid, t in trajectories.items() if is_complete(t)}
    if not complete:
        raise ValueError("the bank has no trial that ran its whole budget")
    best = max(complete.values())
    budget = max(t.budget for t in trajectories.values())
    fifo_epochs = sum(t.epochs for t in trajectories.values())

    predictor = CrossFitPredictor(bank, folds=folds)
    fit_started = time.perf_counter()
    spearman = spearman_table(bank, predictor)  # also fits every fold's prior once, before the copies
    fit_seconds = time.perf_counter() - fit_started

    own_ray = not ray.is_initialized()
    if own_ray:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ray.init(num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in schedulers}
    try:
        from ray import tune

        trainable = tune.with_parameters(
            make_replay_trainable(), rows=_replay_rows(bank)
        )  # one copy in the object store
        with tempfile.TemporaryDirectory(prefix="clp_bench_") as tmp:
            for repetition in range(repetitions):
                order = [str(t) for t in np.random.default_rng(seed + repetition).permutation(list(trajectories))]
                for name in schedulers:
                    began = time.perf_counter()
                    run_dir = Path(tmp) / f"{name}-{repetition}"
                    timeline = _replay_once(
                        name, order, trainable, budget, predictor, run_dir, trajectory_options or {}
                    )
                    metrics = _timeline_metrics(timeline, trajectories, best, fifo_epochs)
                    metrics["seconds"] = time.perf_counter() - began
                    runs[name].append(metrics)
                asha = runs["asha"][-1]["total_epochs"] if "asha" in runs else None
                for name in schedulers:
                    run = runs[name][-1]
                    for key, factor in (("regret_at_asha_budget", 1), ("regret_at_2x_asha_budget", 2)):
                        run[key] = _regret_within(run["finished"], factor * asha, best) if asha else None
    finally:
        if own_ray:
            ray.shutdown()
    for name in schedulers:
        for run in runs[name]:
            del run["finished"]
    result = {
        "bank": str(bank_path or SHIPPED_BANK),
        "trials": len(trajectories),
        "complete_trials": len(complete),
        "budget": budget,
        "bank_best": best,
        "fifo_epochs": fifo_epochs,
        "repetitions": repetitions,
        "orders_seed": seed,
        "folds": folds,
        "settings": {
            "asha": stock_scheduler_args("asha", budget),
            "median": stock_scheduler_args("median", budget),
            "trajectory": trajectory_options or {},
        },
        "schedulers": {name: _summarize(r) for name, r in runs.items()},
        "spearman": spearman,
        "predictor_fit_seconds": fit_seconds,
        "seconds": time.perf_counter() - started,
    }
    result["targets"] = _targets(result)
    if not quiet:
        _print_table(result)
    if out_json:
        Path(out_json).write_text(json.dumps(_json_safe(result), indent=2, allow_nan=False))
    return result


def _json_safe(value: Any) -> Any:
    """NaN and infinities become null (strict JSON); numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
