"""``clp-tune bench schedulers``: the whole lineup on one bank, or on every bank of the suite leave-task-out.

Every scheduler (:func:`clp_tune.bench.baselines.lineup`) sees the same trials in the same seeded orders, with
each worker count, on the simulator (:mod:`clp_tune.bench.simulator`) or, as a check, through real Ray Tune
(:mod:`clp_tune.bench.replay`). The trajectory predictor's priors (:mod:`clp_tune.bench.priors`) are fitted once
per bank before any run that uses them -- every model the predictor would fit lazily on first use included (the
in-context model, the trees for a trial judged alone: :func:`~clp_tune.bench.crossfit.fit_lazy_models`) -- and
each run gets a copy (``copy.deepcopy`` shares the fitted models; what a run learns online stays its own). So no
run pays for a prior's fits, none sees another's online state, and a run decides as a fresh predictor would: its
fits are deterministic functions of its bank and of the trials it saw finish.

The runs are independent, so they are spread over ``jobs`` forked processes: first the fits together with the
runs that need no prior, then the trajectory scheduler's runs. The results are the same for any number of jobs.
"""

from __future__ import annotations

import multiprocessing
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_info

from clp_tune.bench.baselines import TOP_K_FRACTION, CurveOnlyPredictor, Entry, lineup
from clp_tune.bench.crossfit import SPEARMAN_SETTINGS, fit_lazy_models, spearman_table
from clp_tune.bench.metrics import Reference, across_tasks, mean_spearman, score, summarize
from clp_tune.bench.priors import PATH_ROW, PRIOR_MODES, PRIOR_ROWS, Bank, Prior, build_prior, prior_row
from clp_tune.bench.simulator import Completion, Rows, result_rows, simulate
from clp_tune.stopping.bank_library import SUITE, BankTask
from clp_tune.stopping.features import trajectories_from_frame
from clp_tune.stopping.predictor import Predictor

#: The packages whose versions decide the predictor's fits (its trees are scikit-learn's): the figures of a run
#: hold for these versions, which the project does not pin, and for its machine (:func:`machine_record`), so every
#: run records both.
NUMERIC_PACKAGES = ("scikit-learn", "numpy", "scipy", "pandas")
_CPUINFO = Path("/proc/cpuinfo")  # Linux: the processor's model name, family and model
#: What forked workers read (set before a pool starts): each bank's plan, with its priors.
_SHARED: dict[str, Any] = {}
Job = tuple[Callable[..., Any], tuple]  # a function and its arguments, for a forked process
Call = tuple[int, int, int, int]  # a run: (bank, lineup row, workers, order)
Outcome = tuple[list[Completion], float]  # a run's completions and its wall time


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


def machine_record() -> dict[str, str]:
    """The processor and the BLAS kernels the numeric packages chose for it: with the same packages, the learned
    predictor's rows differed between two machines (the stock rules' did not), so every run records where it ran as
    well as with what."""
    cpu = platform.processor() or platform.machine()
    if _CPUINFO.is_file():
        lines = (line.split(":", 1) for line in _CPUINFO.read_text().splitlines() if ":" in line)
        fields = {key.strip(): value.strip() for key, value in lines}
        if "model name" in fields:
            cpu = f"{fields['model name']} (family {fields.get('cpu family', '?')}, model {fields.get('model', '?')})"
    blas = sorted({f"{i['internal_api']} {i.get('version')} {i.get('architecture')}" for i in threadpool_info()
                   if i.get("user_api") == "blas"})  # fmt: skip
    return {"cpu": cpu, "architecture": platform.machine(), "blas": "; ".join(blas) or "none found"}


def _pool_map(jobs: list[Job], processes: int) -> list[Any]:
    """Each ``function(*args)`` of ``jobs``, in forked processes when ``processes`` > 1; results in the order of
    ``jobs`` (a process takes the next job when it is free, so the costliest should come first).

    A process that runs a Ray driver is never forked (the children hang on Ray's threads): it runs them inline.
    """
    ray = sys.modules.get("ray")
    if processes <= 1 or len(jobs) <= 1 or (ray is not None and ray.is_initialized()):
        return [function(*args) for function, args in jobs]
    with ProcessPoolExecutor(min(processes, len(jobs)), mp_context=multiprocessing.get_context("fork")) as pool:
        futures = [pool.submit(function, *args) for function, args in jobs]
        return [future.result() for future in futures]


@dataclass
class _Plan:
    """One bank's part of a benchmark: what its runs are measured against, and their inputs."""

    bank: Bank
    frame: pd.DataFrame  # its rows as a search reports them (Bank.as_searched)
    priors: list[Prior]
    reference: Reference
    rows: Rows
    entries: list[Entry]
    orders: list[list[str]]


def _fit_job(task: int, index: int) -> tuple[Predictor, dict[str, dict[str, float]]]:
    """Fit one prior's lazily fitted models (which each run's copy would otherwise fit again); returns the
    fitted predictor and its Spearman row in each setting (:data:`~clp_tune.bench.crossfit.SPEARMAN_SETTINGS`)."""
    plan: _Plan = _SHARED["plans"][task]
    prior = plan.priors[index]
    rows = {key: spearman_table(plan.frame, {prior.name: prior.predictor}, finished)[prior.name]
            for key, finished in SPEARMAN_SETTINGS.items()}  # fmt: skip
    fit_lazy_models(prior.predictor, plan.frame)
    return prior.predictor, rows


def _run_job(task: int, entry: int, workers: int, order: int) -> Outcome:
    plan: _Plan = _SHARED["plans"][task]
    started = time.perf_counter()
    run = simulate(plan.entries[entry].build(), plan.orders[order], plan.rows, workers)
    return run, time.perf_counter() - started


def row_names() -> list[str]:
    """Every row the lineup can have: the baselines, then one per prior mode and the prior-from-a-file row."""
    return [e.name for e in lineup(10, {}, finals={})] + list(PRIOR_ROWS.values()) + [PATH_ROW]


def prior_modes(headline: str | Path) -> list[str | Path]:
    """The headline prior first, then every standard mode not already it."""
    return [headline] + [m for m in PRIOR_MODES if m != headline]


def orders_of(trial_ids: Sequence[str], count: int, seed: int) -> list[list[str]]:
    return [[str(t) for t in np.random.default_rng(seed + i).permutation(list(trial_ids))] for i in range(count)]


def _plan(setup: Setup, bank: Bank, frame: pd.DataFrame, priors: list[Prior]) -> _Plan:
    trajectories = {str(x.config["trial_id"]): x for x in trajectories_from_frame(frame)}
    budget = max(x.budget for x in trajectories.values())
    rows = {p.name: (p.description, lambda p=p: p.predictor) for p in priors}  # read once fitted
    finals = {trial_id: x.final for trial_id, x in trajectories.items()}
    entries = lineup(budget, rows, setup.trajectory_options, setup.top_k_fraction, finals)
    entries = [e for e in entries if setup.only is None or e.name in setup.only]
    orders = orders_of(list(trajectories), setup.orders, setup.seed)
    return _Plan(bank, frame, priors, Reference.of(trajectories), result_rows(frame), entries, orders)


def _run_all(setup: Setup, plans: list[_Plan]) -> tuple[dict[tuple[int, int], dict[str, float]], dict[Call, Outcome]]:
    """Fit the priors (in place) and run every call; returns the priors' Spearman rows by (bank, prior) and the
    runs' outcomes.

    Two rounds of forked processes: the fits with the runs that need no prior (those fill the processes while
    the last fits finish), then the runs of the trajectory scheduler, forked once the priors are fitted.
    """
    fits = [(t, i) for t, plan in enumerate(plans) for i in range(len(plan.priors))]
    fits.sort(key=lambda c: plans[c[0]].priors[c[1]].name != PRIOR_ROWS["crossfit"])  # the costliest first
    calls = [(t, e, w, o) for t, plan in enumerate(plans) for e in range(len(plan.entries))
             for w in setup.workers for o in range(setup.orders)]  # fmt: skip
    calls.sort(key=lambda c: (not plans[c[0]].entries[c[1]].trajectory, -plans[c[0]].reference.fifo_epochs))
    needs_prior = [plans[c[0]].entries[c[1]].name in {p.name for p in plans[c[0]].priors} for c in calls]
    now = [c for c, needs in zip(calls, needs_prior, strict=True) if not needs and setup.backend != "ray"]
    later = [c for c, needs in zip(calls, needs_prior, strict=True) if needs or setup.backend == "ray"]
    _SHARED.update(plans=plans)
    try:
        done = _pool_map([(_fit_job, c) for c in fits] + [(_run_job, c) for c in now], setup.jobs)
        spearman = {}
        for (t, i), (predictor, row) in zip(fits, done[: len(fits)], strict=True):
            plans[t].priors[i].predictor = predictor
            spearman[t, i] = row
        outcomes = dict(zip(now, done[len(fits) :], strict=True))
        if setup.backend == "ray":
            outcomes |= dict(zip(later, _ray_runs(plans, later), strict=True))
        else:
            outcomes |= dict(zip(later, _pool_map([(_run_job, c) for c in later], setup.jobs), strict=True))
    finally:
        _SHARED.clear()
    return spearman, outcomes


def _spearman_of(
    plan: _Plan, t: int, rows: Mapping[tuple[int, int], dict[str, dict[str, float]]]
) -> dict[str, dict[str, dict[str, float]]]:
    """The bank's Spearman tables, one per setting: its priors' rows, the δ rule's curve predictor, the last value."""
    out = {}
    for key, finished in SPEARMAN_SETTINGS.items():
        curve = spearman_table(plan.frame, {"delta-curve": CurveOnlyPredictor()}, finished)
        out[key] = {p.name: rows[t, i][key] for i, p in enumerate(plan.priors)} | curve
    return out


def _ray_runs(plans: list[_Plan], calls: list[Call]) -> list[Outcome]:
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
    plans = [_plan(setup, bank, bank.as_searched(), priors[t]) for t, bank in enumerate(setup.banks)]
    spearman, outcomes = _run_all(setup, plans)
    tasks = [_task_result(setup, t, plan, _spearman_of(plan, t, spearman), outcomes) for t, plan in enumerate(plans)]
    summary = {
        str(w): {name: across_tasks([task["schedulers"][str(w)][name] for task in tasks])
                 for name in tasks[0]["schedulers"][str(w)]}
        for w in setup.workers
    }  # fmt: skip
    return {
        "settings": {"prior": str(setup.prior), "orders": setup.orders, "workers": list(setup.workers),
                     "seed": setup.seed, "backend": setup.backend, "jobs": setup.jobs, "folds": setup.folds,
                     "trajectory_options": setup.trajectory_options, "top_k_fraction": setup.top_k_fraction},
        "tasks": tasks, "summary": summary,
        **{f"{key}_mean": mean_spearman([task[key] for task in tasks]) for key in SPEARMAN_SETTINGS},
        "packages": {name: version(name) for name in NUMERIC_PACKAGES},
        "machine": machine_record(),
        "seconds": time.perf_counter() - started,
    }  # fmt: skip


def _task_result(
    setup: Setup, t: int, plan: _Plan, spearman: dict[str, dict[str, dict[str, float]]],
    outcomes: Mapping[Call, Outcome],
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
        **spearman, "schedulers": schedulers,
    }  # fmt: skip
