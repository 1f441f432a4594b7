"""``clp-tune bench scheduler-cost``: what the trajectory scheduler costs Tune's driver, per result and in memory.

Every result of every trial passes through ``on_trial_result`` on the driver, one at a time: a slow call holds up
the whole search, and state that grows with the trials grows the driver. So a large simulated search (a synthetic
bank, :func:`clp_tune.bench.synthetic.synthetic_bank`, under :func:`clp_tune.bench.simulator.simulate`) times
each call and samples the driver's resident memory, with the scheduler a search on a new dataset gets (no bank:
the predictor learns from the search's own finished trials, and refits as they come).
"""

from __future__ import annotations

import os
import resource
import statistics as stats
import time
from typing import Any

import numpy as np

from clp_tune.bench.simulator import result_rows, simulate
from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.stopping.factory import build_scheduler
from clp_tune.stopping.predictor import FinalAccuracyPredictor

_MB = 1024 * 1024


def _rss() -> int:
    """The process's resident memory now, in bytes (its peak where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def scheduler_cost(
    trials: int = 2000, epochs: int = 100, workers: int = 8, seed: int = 0, judged_epochs: int | None = None
) -> dict[str, Any]:
    """Time every ``on_trial_result`` of a simulated search of ``trials`` x ``epochs`` under the trajectory
    scheduler; ``judged_epochs`` reports only each trial's first epochs (then no trial finishes its budget)."""
    bank = synthetic_bank(trials, epochs, seed)
    if judged_epochs is not None:
        bank = bank[bank["epoch"] <= judged_epochs]
    rows = result_rows(bank)
    order = [str(t) for t in np.random.default_rng(seed).permutation(list(rows))]
    scheduler = build_scheduler("trajectory", epochs, predictor=FinalAccuracyPredictor(None))
    seconds: list[float] = []
    rss = {"before": _rss(), "peak": 0}
    judge = scheduler.on_trial_result

    def timed(controller: Any, trial: Any, result: dict) -> str:
        started = time.perf_counter()
        decision = judge(controller, trial, result)
        seconds.append(time.perf_counter() - started)
        if len(seconds) % 256 == 0:
            rss["peak"] = max(rss["peak"], _rss())
        return decision

    scheduler.on_trial_result = timed
    started = time.perf_counter()
    run = simulate(scheduler, order, rows, workers)
    wall = time.perf_counter() - started
    rss["peak"] = max(rss["peak"], _rss())
    return {
        "trials": trials, "epochs": epochs, "workers": workers, "judged_epochs": judged_epochs,
        "results": len(seconds), "finished": sum(c.epochs >= epochs for c in run),
        "median_ms": 1000 * stats.median(seconds), "p99_ms": 1000 * float(np.percentile(seconds, 99)),
        "max_ms": 1000 * max(seconds), "mean_ms": 1000 * stats.mean(seconds), "wall_s": wall,
        "rss_before_mb": rss["before"] / _MB, "rss_peak_mb": rss["peak"] / _MB,
        "rss_growth_mb": max(0, rss["peak"] - rss["before"]) / _MB,
    }  # fmt: skip


def print_cost(cost: dict[str, Any]) -> None:
    judged = "every epoch" if cost["judged_epochs"] is None else (
        f"only the first {cost['judged_epochs']} of {cost['epochs']} epochs of each trial (capped)")  # fmt: skip
    print(
        f"trajectory scheduler, no prior, on a synthetic bank of {cost['trials']} trials x {cost['epochs']} epochs "
        f"({judged} reported), {cost['workers']} workers, simulated"
    )
    print(
        f"{cost['results']} results judged, {cost['finished']} trials ran their whole budget, "
        f"{cost['wall_s']:.0f} s in all"
    )
    print(
        f"on_trial_result wall time: median {cost['median_ms']:.2f} ms, 99th percentile {cost['p99_ms']:.2f} ms, "
        f"max {cost['max_ms']:.0f} ms, mean {cost['mean_ms']:.2f} ms"
    )
    print(
        f"driver memory (resident): {cost['rss_before_mb']:.0f} MB before the search, peak {cost['rss_peak_mb']:.0f} "
        f"MB, growth {cost['rss_growth_mb']:.0f} MB"
    )
