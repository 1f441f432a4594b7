"""``clp-tune bench schedulers``: the whole lineup on one bank, or on every bank of the suite leave-task-out.

Every scheduler (:func:`clp_tune.bench.baselines.lineup`) sees the same trials in the same seeded orders, with
each worker count, on the simulator (:mod:`clp_tune.bench.simulator`) or, as a check, through real Ray Tune
(:mod:`clp_tune.bench.replay`). The trajectory predictor's priors (:mod:`clp_tune.bench.priors`) are fitted once
per bank, before any run, and each run gets a copy (``copy.deepcopy`` shares the fitted trees; what a run learns
online stays its own), so no order pays for the prior's fit and none sees another's online state.

The runs are independent, so they are spread over ``jobs`` forked processes (the fits too): the results are
the same for any number of jobs, in the same order.
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clp_tune.bench.baselines import TOP_K_FRACTION, CurveOnlyPredictor, Entry, lineup
from clp_tune.bench.crossfit import spearman_table
from clp_tune.bench.metrics import Reference, across_tasks, mean_spearman, score, summarize
from clp_tune.bench.priors import PATH_ROW, PRIOR_MODES, PRIOR_ROWS, Bank, Prior, build_prior, prior_row
from clp_tune.bench.simulator import Completion, Rows, result_rows, simulate
from clp_tune.stopping.bank_library import SUITE, BankTask
from clp_tune.stopping.features import trajectories_from_frame
from clp_tune.stopping.predictor import Predictor

#: What forked workers read (set before a pool starts): the banks, their priors and their runs' inputs.
_SHARED: dict[str, Any] = {}


@dataclass
class Setup:
    """One benchmark: which banks, which prior heads the table, how many orders and workers, and how to run.

    Args:
        banks: the banks to evaluate (one, or the suite's).
        prior: the headline prior (a mode of :data:`~clp_tune.bench.priors.PRIOR_MODES` or a bank path); the
            rows of the other modes are always run too.
        orders: seeded orders of the trials (seeds ``seed``, ``seed + 1``, ...).
        workers: concurrent trial slots; each count is a separate set of runs.
        seed: seed of the first order.
        jobs: processes to spread fits and runs over.
        backend: ``simulator`` or ``ray`` (real Ray Tune, one worker, one process).
        trajectory_options: TrajectoryScheduler options for every trajectory row.
        top_k_fraction: the top-k rule's fraction.
        folds: folds of the cross-fitted prior.
        only: run only these lineup rows (None: all).
        suite: the suite the other-tasks prior draws on.
    """

    banks: list[Bank]
    prior: str | Path = "other-tasks"
    orders: int = 10
    workers: tuple[int, ...] = (1, 8)
    seed: int = 0
    jobs: int = 1
    backend: str = "simulator"
    trajectory_options: dict[str, Any] = field(default_factory=dict)
    top_k_fraction: float = TOP_K_FRACTION
    folds: int = 5
    only: Sequence[str] | None = None
    suite: Mapping[str, BankTask] = field(default_factory=lambda: SUITE)


def _pool_map(function: Callable[..., Any], calls: list[tuple], jobs: int) -> list[Any]:
    """``function`` over ``calls``, in forked processes when ``jobs`` > 1; results in the order of ``calls``.

    A process that runs a Ray driver is never forked (the children hang on Ray's threads): it runs them inline.
    """
    ray = sys.modules.get("ray")
    if jobs <= 1 or len(calls) <= 1 or (ray is not None and ray.is_initialized()):
        return [function(*call) for call in calls]
    with ProcessPoolExecutor(min(jobs, len(calls)), mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(function, *call) for call in calls]
        return [future.result() for future in futures]


@dataclass
class _Plan:
    """One bank's part of a benchmark: what its runs are measured against, and their inputs."""

    bank: Bank
    priors: list[Prior]
    reference: Reference
    rows: Rows
    entries: list[Entry]
    orders: list[list[str]]


def _fit_job(task: int, index: int) -> tuple[Predictor, dict[str, float]]:
    """Fit one prior by predicting every complete trial of its bank at the Spearman fractions (the fits each run's
    copy would otherwise repeat); returns the fitted predictor and its Spearman row."""
    bank, prior = _SHARED["banks"][task], _SHARED["priors"][task][index]
    return prior.predictor, spearman_table(bank.frame, {prior.name: prior.predictor})[prior.name]


def _run_job(task: int, entry: int, workers: int, order: int) -> tuple[list[Completion], float]:
    plan: _Plan = _SHARED["plans"][task]
    started = time.perf_counter()
    run = simulate(plan.entries[entry].build(), plan.orders[order], plan.rows, workers)
    return run, time.perf_counter() - started


def row_names() -> list[str]:
    """Every row the lineup can have: the baselines, then one per prior mode and the prior-from-a-file row."""
    return [e.name for e in lineup(10, {})] + list(PRIOR_ROWS.values()) + [PATH_ROW]


def prior_modes(headline: str | Path) -> list[str | Path]:
    """The headline prior first, then every standard mode not already it."""
    return [headline] + [m for m in PRIOR_MODES if m != headline]


def orders_of(trial_ids: Sequence[str], count: int, seed: int) -> list[list[str]]:
    return [[str(t) for t in np.random.default_rng(seed + i).permutation(list(trial_ids))] for i in range(count)]


def _fit_priors(setup: Setup, priors: list[list[Prior]]) -> list[dict[str, dict[str, float]]]:
    """Fit every bank's priors (in place) and return each bank's Spearman table (the priors, the δ rule's curve
    predictor, the last value)."""
    calls = [(t, i) for t, row in enumerate(priors) for i in range(len(row))]
    calls.sort(key=lambda c: priors[c[0]][c[1]].name != PRIOR_ROWS["crossfit"])  # the costliest fits first
    _SHARED.update(banks=setup.banks, priors=priors)
    try:
        fitted = _pool_map(_fit_job, calls, setup.jobs)
    finally:
        _SHARED.clear()
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for (t, i), (predictor, row) in zip(calls, fitted, strict=True):
        priors[t][i].predictor = predictor
        rows[t, i] = row
    return [
        {p.name: rows[t, i] for i, p in enumerate(priors[t])}
        | spearman_table(bank.frame, {"delta-curve": CurveOnlyPredictor()})
        for t, bank in enumerate(setup.banks)
    ]


def _plan(setup: Setup, bank: Bank, priors: list[Prior]) -> _Plan:
    trajectories = {str(x.config["trial_id"]): x for x in trajectories_from_frame(bank.frame)}
    budget = max(x.budget for x in trajectories.values())
    entries = lineup(budget, {p.name: (p.description, p.predictor) for p in priors}, setup.trajectory_options,
                     setup.top_k_fraction)  # fmt: skip
    entries = [e for e in entries if setup.only is None or e.name in setup.only]
    orders = orders_of(list(trajectories), setup.orders, setup.seed)
    return _Plan(bank, priors, Reference.of(trajectories), result_rows(bank.frame), entries, orders)


Call = tuple[int, int, int, int]  # (bank, lineup row, workers, order)


def _run_all(setup: Setup, plans: list[_Plan]) -> dict[Call, tuple[list[Completion], float]]:
    calls = [(t, e, w, o) for t, plan in enumerate(plans) for e in range(len(plan.entries))
             for w in setup.workers for o in range(setup.orders)]  # fmt: skip
    if setup.backend == "ray":
        return dict(zip(calls, _ray_runs(plans, calls), strict=True))
    # the costly runs first, so that the last ones to finish are short
    calls.sort(key=lambda c: (not plans[c[0]].entries[c[1]].trajectory, -plans[c[0]].reference.fifo_epochs))
    _SHARED.update(plans=plans)
    try:
        return dict(zip(calls, _pool_map(_run_job, calls, setup.jobs), strict=True))
    finally:
        _SHARED.clear()


def _ray_runs(plans: list[_Plan], calls: list[Call]) -> list[tuple[list[Completion], float]]:
    from clp_tune.bench.replay import RayReplay, ray_session

    out = []
    with ray_session(), tempfile.TemporaryDirectory(prefix="clp_bench_") as tmp:
        replays = {t: RayReplay(plan.rows) for t, plan in enumerate(plans)}
        for t, e, _, o in calls:
            entry, started = plans[t].entries[e], time.perf_counter()
            run = replays[t].run(entry.build(), plans[t].orders[o], Path(tmp) / f"{t}-{entry.name}-{o}")
            out.append((run, time.perf_counter() - started))
    return out


def run_benchmark(setup: Setup) -> dict[str, Any]:
    """Fit the priors, run every row of the lineup on every bank, order and worker count; return the figures:
    per bank its settings, the priors' sources, the Spearman table and each row's summary per worker count; over
    the banks each row's summary per worker count."""
    if setup.backend == "ray" and set(setup.workers) != {1}:
        raise ValueError("the real-Ray backend replays one trial at a time: workers must be (1,)")
    started = time.perf_counter()
    modes = [m for m in prior_modes(setup.prior) if setup.only is None or prior_row(m) in setup.only]
    priors = [[build_prior(m, b, setup.suite, setup.folds) for m in modes] for b in setup.banks]
    spearman = _fit_priors(setup, priors)
    fit_seconds = time.perf_counter() - started
    plans = [_plan(setup, bank, priors[t]) for t, bank in enumerate(setup.banks)]
    outcomes = _run_all(setup, plans)
    tasks = [_task_result(setup, t, plan, spearman[t], outcomes) for t, plan in enumerate(plans)]
    summary = {
        str(w): {name: across_tasks([task["schedulers"][str(w)][name] for task in tasks])
                 for name in tasks[0]["schedulers"][str(w)]}
        for w in setup.workers
    }  # fmt: skip
    return {
        "settings": {"prior": str(setup.prior), "orders": setup.orders, "workers": list(setup.workers),
                     "seed": setup.seed, "backend": setup.backend, "jobs": setup.jobs, "folds": setup.folds,
                     "trajectory_options": setup.trajectory_options, "top_k_fraction": setup.top_k_fraction},
        "tasks": tasks, "summary": summary, "spearman_mean": mean_spearman([task["spearman"] for task in tasks]),
        "fit_seconds": fit_seconds, "seconds": time.perf_counter() - started,
    }  # fmt: skip


def _task_result(
    setup: Setup, t: int, plan: _Plan, spearman: dict[str, dict[str, float]],
    outcomes: Mapping[Call, tuple[list[Completion], float]],
) -> dict[str, Any]:  # fmt: skip
    schedulers: dict[str, dict[str, Any]] = {}
    for w in setup.workers:
        schedulers[str(w)] = {}
        for e, entry in enumerate(plan.entries):
            done = [outcomes[t, e, w, o] for o in range(setup.orders)]
            row = summarize([score(run, plan.reference) for run, _ in done])
            schedulers[str(w)][entry.name] = row | {"seconds": sum(seconds for _, seconds in done)}
    ref = plan.reference
    return {
        "task": plan.bank.name, "bank": str(plan.bank.path), "trials": len(ref.trajectories),
        "budget": max(x.budget for x in ref.trajectories.values()), "best_final": ref.best,
        "worst_final": ref.worst, "fifo_epochs": ref.fifo_epochs,
        "rows": {e.name: e.description for e in plan.entries}, "headline": prior_row(setup.prior),
        "priors": {p.name: {"sources": list(p.sources), "trials": len(p.trial_ids), "missing": list(p.missing)}
                   for p in plan.priors},
        "spearman": spearman, "schedulers": schedulers,
    }  # fmt: skip
