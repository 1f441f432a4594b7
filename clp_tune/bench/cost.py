"""What the trajectory scheduler costs Tune's driver: ``clp-tune bench scheduler-cost`` (per result, and in memory)
and ``clp-tune bench prior-fit`` (its prior's first fits, with and without the fit cache).

Every result of every trial passes through ``on_trial_result`` on the driver, one at a time: a slow call holds up
the whole search, and state that grows with the trials grows the driver. So a large simulated search (a synthetic
bank, :func:`clp_tune.bench.synthetic.synthetic_bank`, under :func:`clp_tune.bench.simulator.simulate`) times
each call and samples the driver's resident memory, with the scheduler a search gets by default (its prior fitted
on every shipped bank, lazily, on the first result: that first call is reported apart). It fits into an empty fit
cache (:mod:`clp_tune.stopping.fit_cache`): the cost of a machine's first search.
"""

from __future__ import annotations

import os
import resource
import statistics as stats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from clp_tune.bench.simulator import result_rows, simulate
from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.stopping.bank_library import SUITE
from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.factory import build_scheduler
from clp_tune.stopping.features import is_complete, trajectories_from_frame
from clp_tune.stopping.fit_cache import OFF, cache_at
from clp_tune.stopping.predictor import FinalAccuracyPredictor

_MB = 1024 * 1024
#: The scheduler's hooks on the driver that are timed: every result, every trial's end (paused trials are judged
#: again there), every free slot.
HOOKS = ("on_trial_result", "on_trial_complete", "choose_trial_to_run")
#: A call slower than this fitted something (the prior's lazily fitted models, an online refit).
SLOW_S = 0.5


def _rss() -> int:
    """The process's resident memory now, in bytes (its peak where /proc is not there)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def scheduler_cost(
    trials: int = 2000, epochs: int = 100, workers: int = 8, seed: int = 0, judged_epochs: int | None = None,
    bank: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Time every ``on_trial_result``, ``on_trial_complete`` and ``choose_trial_to_run`` of a simulated search of
    ``trials`` x ``epochs`` under the trajectory scheduler with its default predictor (its prior on ``bank`` when
    given), its state written to a temporary directory as a search's is; ``judged_epochs`` reports only each
    trial's first epochs (then no trial finishes its budget, so nothing is learned online)."""
    search = synthetic_bank(trials, epochs, seed)
    if judged_epochs is not None:
        search = search[search["epoch"] <= judged_epochs]
    rows = result_rows(search)
    order = [str(t) for t in np.random.default_rng(seed).permutation(list(rows))]
    with tempfile.TemporaryDirectory() as state_dir, tempfile.TemporaryDirectory() as fits, cache_at(fits):
        # the journal and snapshots a search writes, included; the prior fitted into an empty cache (a first search)
        scheduler = build_scheduler("trajectory", epochs, state_dir=state_dir,
                                    trajectory_options={"bank": bank} if bank else None)  # fmt: skip
        timings: dict[str, list[float]] = {hook: [] for hook in HOOKS}
        rss = {"before": _rss(), "peak": 0}
        for hook in HOOKS:
            setattr(scheduler, hook, _timed(getattr(scheduler, hook), timings[hook], rss))
        started = time.perf_counter()
        timed_complete = scheduler.on_trial_complete

        def on_trial_complete(*args: Any) -> None:  # progress on stderr: the default search takes many minutes
            timed_complete(*args)
            if len(timings["on_trial_complete"]) % 200 == 0:
                print(f"  ... {len(timings['on_trial_complete'])} of {trials} trials ended, "
                      f"{time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)  # fmt: skip

        scheduler.on_trial_complete = on_trial_complete
        run = simulate(scheduler, order, rows, workers)
        wall = time.perf_counter() - started
        rss["peak"] = max(rss["peak"], _rss())
        state_mb = sum(f.stat().st_size for f in Path(state_dir).rglob("*") if f.is_file()) / _MB
    seconds = timings["on_trial_result"]
    return {
        "trials": trials, "epochs": epochs, "workers": workers, "judged_epochs": judged_epochs, "bank": bank,
        "results": len(seconds), "finished": sum(c.epochs >= epochs for c in run),
        "median_ms": 1000 * stats.median(seconds), "p99_ms": 1000 * float(np.percentile(seconds, 99)),
        "max_s": max(seconds), "mean_ms": 1000 * stats.mean(seconds), "wall_s": wall,
        "slow_calls": sum(s > SLOW_S for s in seconds), "slow_s": sum(s for s in seconds if s > SLOW_S),
        "other_hooks": {hook: {"calls": len(t), "median_ms": 1000 * stats.median(t) if t else 0.0,
                               "p99_ms": 1000 * float(np.percentile(t, 99)) if t else 0.0,
                               "total_s": sum(t)} for hook, t in timings.items() if hook != "on_trial_result"},
        "state_mb": state_mb,
        "rss_before_mb": rss["before"] / _MB, "rss_peak_mb": rss["peak"] / _MB,
        "rss_growth_mb": max(0, rss["peak"] - rss["before"]) / _MB,
    }  # fmt: skip


def _timed(hook: Callable[..., Any], seconds: list[float], rss: dict[str, int]) -> Callable[..., Any]:
    """``hook``, appending each call's wall time to ``seconds`` and sampling the resident memory now and then."""

    def call(*args: Any) -> Any:
        started = time.perf_counter()
        out = hook(*args)
        seconds.append(time.perf_counter() - started)
        if len(seconds) % 256 == 0:
            rss["peak"] = max(rss["peak"], _rss())
        return out

    return call


def print_cost(cost: dict[str, Any]) -> None:
    judged = "every epoch" if cost["judged_epochs"] is None else (
        f"only the first {cost['judged_epochs']} of {cost['epochs']} epochs of each trial: capped")  # fmt: skip
    prior = cost["bank"] or "every shipped bank"
    print(f"trajectory scheduler, default predictor (prior on {prior}), synthetic bank of {cost['trials']} trials x "
          f"{cost['epochs']} epochs ({judged}), {cost['workers']} workers, simulated")  # fmt: skip
    print(f"{cost['results']} results judged, {cost['finished']} trials ran their whole budget, "
          f"{cost['wall_s']:.0f} s in all")  # fmt: skip
    print(f"on_trial_result wall time: median {cost['median_ms']:.2f} ms, 99th percentile {cost['p99_ms']:.2f} ms, "
          f"mean {cost['mean_ms']:.2f} ms, max {cost['max_s']:.1f} s; {cost['slow_calls']} calls over {SLOW_S:g} s "
          f"(fitting the prior's models, refits) took {cost['slow_s']:.0f} s of it")  # fmt: skip
    for hook, t in cost["other_hooks"].items():
        print(f"{hook}: {t['calls']} calls, median {t['median_ms']:.2f} ms, 99th percentile {t['p99_ms']:.2f} ms, "
              f"{t['total_s']:.1f} s in all")  # fmt: skip
    print(f"scheduler state written (journal, snapshot, decision parts): {cost['state_mb']:.1f} MB")
    print(f"driver resident memory: {cost['rss_before_mb']:.0f} MB before the search, peak {cost['rss_peak_mb']:.0f} "
          f"MB (+{cost['rss_growth_mb']:.0f} MB)")  # fmt: skip


def prior_fit_cost(seed: int = 0, tasks: Sequence[str] = tuple(SUITE)) -> dict[str, Any]:
    """The default prior's first fits (on the shipped banks of ``tasks``), as a search's first results make them,
    three ways in a row: with the fit cache off, into an empty cache (a machine's first search) and from that cache
    (every search after it). Each builds the predictor a search builds and asks it about one trial of a synthetic
    search twice, alone (the gain trees) and among the others (the in-context model); the predictions must be the
    same all three ways."""
    trials = [t for t in trajectories_from_frame(synthetic_bank(12, 30, seed)) if is_complete(t)]
    probe = trials[0]
    context = SearchContext({str(i): t.history["val_acc"][:3] for i, t in enumerate(trials[1:])})
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name, cache in (("off", OFF), ("empty", folder), ("warm", folder)):
            with cache_at(cache):
                started = time.perf_counter()
                predictor = FinalAccuracyPredictor(None, tasks=tuple(tasks))
                built = time.perf_counter()
                alone = predictor.predict(probe.upto(3), probe.config, probe.budget)
                fitted = time.perf_counter()
                among = predictor.predict(probe.upto(3), probe.config, probe.budget, context)
                done = time.perf_counter()
            runs[name] = {"load_s": built - started, "trees_s": fitted - built, "context_s": done - fitted,
                          "total_s": done - started, "predictions": [alone, among]}  # fmt: skip
        kept_mb = sum(f.stat().st_size for f in Path(folder).iterdir()) / _MB
    same = all(run["predictions"] == runs["off"]["predictions"] for run in runs.values())
    return {"banks": len(tasks), "runs": runs, "same": same, "kept_mb": kept_mb}


def print_prior_fit(cost: dict[str, Any]) -> None:
    print(f"the default prior ({cost['banks']} shipped banks): building it, then its first prediction alone (gain "
          f"trees) and among the search's trials (in-context model)")  # fmt: skip
    for name, label in (("off", "fit cache off"), ("empty", "empty fit cache"), ("warm", "from the fit cache")):
        run = cost["runs"][name]
        print(f"  {label:20s} {run['total_s']:6.1f} s  (load {run['load_s']:.1f} s, trees {run['trees_s']:.1f} s, "
              f"in-context {run['context_s']:.1f} s)")  # fmt: skip
    ratio = cost["runs"]["off"]["total_s"] / cost["runs"]["warm"]["total_s"]
    print(f"from the cache: {ratio:.1f}x faster than fitting; {cost['kept_mb']:.1f} MB kept; predictions "
          f"{'identical' if cost['same'] else 'DIFFERENT'} all three ways")  # fmt: skip
