"""``clp-tune bench ...``: measurements that print figures, compared side by side within one run.

Speed and accuracy goals live here rather than in timed tests, because a shared machine makes timings noisy:
each benchmark measures the things it compares in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import statistics as stats
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from clp_tune.knobs import KNOBS
from clp_tune.trial.statistics import TrajectoryStatistics
from clp_tune.vocabulary import STATISTIC_GROUPS, TRAJECTORY_OPTIONS

if TYPE_CHECKING:
    import pandas as pd

    from clp_tune.bench.priors import Bank
    from clp_tune.bench.suite import Setup

REFERENCE_TARGET = 0.92


def reference_config(epochs: int, statistics: str = "") -> dict[str, Any]:
    """The default mnist1d recipe: the reference 1-D CNN, AdamW at 1e-2, batch 100, cosine decay, no Mixup."""
    config = {name: knob.default for name, knob in KNOBS.items()}
    config.update(dataset="mnist1d", model="cnn1d", epochs=epochs, statistics=statistics)
    return config


def _train(config: dict[str, Any], statistics_type: type[TrajectoryStatistics] = TrajectoryStatistics) -> list[dict]:
    from clp_tune.trial.recipe import run_trial

    rows: list[dict[str, Any]] = []
    run_trial(config, lambda row, state: rows.append(row), statistics_type=statistics_type)
    return rows


def mnist1d_reference(args: argparse.Namespace) -> int:
    torch.set_num_threads(args.threads)
    accuracies = []
    for seed in range(args.seeds):
        config = reference_config(args.epochs) | {"seed": seed}
        started = time.perf_counter()
        rows = _train(config)
        accuracies.append(rows[-1]["test_acc"])
        print(
            f"seed {seed}: test accuracy {rows[-1]['test_acc']:.4f}  (val {rows[-1]['val_acc']:.4f}, "
            f"{args.epochs} epochs in {time.perf_counter() - started:.1f} s)"
        )
    mean = stats.mean(accuracies)
    verdict = "meets" if mean >= REFERENCE_TARGET else "MISSES"
    print(f"mnist1d reference CNN: mean test accuracy {mean:.4f} over {args.seeds} seed(s); "
          f"{verdict} the {REFERENCE_TARGET:.2f} target (paper: 0.94)")  # fmt: skip
    return 0 if mean >= REFERENCE_TARGET else 1


class _TimedStatistics(TrajectoryStatistics):
    """TrajectoryStatistics that adds up the wall time spent inside it (CPU work has no hidden async)."""

    seconds = 0.0

    def observe_step(self, *args: Any) -> None:
        started = time.perf_counter()
        super().observe_step(*args)
        _TimedStatistics.seconds += time.perf_counter() - started

    def end_epoch(self, *args: Any) -> dict[str, float]:
        started = time.perf_counter()
        values = super().end_epoch(*args)
        _TimedStatistics.seconds += time.perf_counter() - started
        return values


def statistics_overhead(args: argparse.Namespace) -> int:
    """Cost of all statistics on the quickstart model, two ways measured in one run.

    Inside: time spent in the statistics calls divided by the rest of the epoch (robust on a busy machine).
    Side by side: median epoch time with all statistics vs none, interleaved run by run.
    """
    torch.set_num_threads(args.threads)
    timings: dict[str, list[float]] = {"off": [], "on": []}
    inside, rest = 0.0, 0.0
    for repeat in range(args.repeats):
        for label, enabled in (("off", ""), ("on", ",".join(STATISTIC_GROUPS))):
            _TimedStatistics.seconds = 0.0
            rows = _train(reference_config(args.epochs, enabled) | {"seed": repeat}, _TimedStatistics)
            timings[label].extend(row["epoch_seconds"] for row in rows[1:])  # the first epoch warms caches
            if label == "on":
                inside += _TimedStatistics.seconds
                rest += sum(row["epoch_seconds"] for row in rows) - _TimedStatistics.seconds
    off, on = stats.median(timings["off"]), stats.median(timings["on"])
    print(f"model cnn1d on mnist1d, batch {KNOBS['batch_size'].default}, {args.threads} thread(s), "
          f"{args.repeats} x {args.epochs} epochs each way")  # fmt: skip
    print(f"time inside the statistics: {inside / rest:.1%} of the training epoch (target <= 10%)")
    print(f"side by side: median epoch {off * 1000:.1f} ms without, {on * 1000:.1f} ms with all statistics "
          f"({(on - off) / off:+.1%})")  # fmt: skip
    return 0


def _scheduler_banks(args: argparse.Namespace) -> list[Bank]:
    """The banks ``--bank`` / ``--task`` / ``--suite`` name (default: the shipped mnist1d bank)."""
    from clp_tune.bench.priors import BenchInputError, bank_at, missing_bank_message, task_bank
    from clp_tune.stopping.bank_library import SHIPPED_BANK, SUITE

    if args.suite:
        for task in SUITE.values():
            if not task.path.is_file():
                print(f"note: {missing_bank_message(task)}; left out of the suite and of every prior", file=sys.stderr)
        banks = [task_bank(task, "--suite") for task in SUITE.values() if task.path.is_file()]
        if not banks:
            raise BenchInputError("--suite: no bank of the suite is on disk")
        return banks
    if args.task is not None:
        if args.task not in SUITE:
            raise BenchInputError(f"--task: expected one of {', '.join(SUITE)}, got {args.task!r}")
        return [task_bank(SUITE[args.task])]
    return [bank_at(args.bank or SHIPPED_BANK, "--bank")]


def _scheduler_setup(args: argparse.Namespace) -> Setup:
    """The benchmark ``bench schedulers`` asks for; BenchInputError names the first bad option."""
    from clp_tune.bench.baselines import TOP_K_FRACTION
    from clp_tune.bench.priors import BenchInputError, parse_prior
    from clp_tune.bench.suite import Setup, row_names
    from clp_tune.stopping.scheduler import TrajectoryScheduler

    workers = tuple(dict.fromkeys(args.workers or ((1,) if args.ray else (1, 8))))
    top_k = TOP_K_FRACTION if args.top_k_fraction is None else args.top_k_fraction
    for flag, value, valid in (("--orders", args.orders, args.orders >= 1), ("--jobs", args.jobs, args.jobs >= 1),
                               ("--workers", min(workers), min(workers) >= 1),
                               ("--top-k-fraction", top_k, 0 < top_k <= 1)):  # fmt: skip
        if not valid:
            raise BenchInputError(f"{flag}: {value} is out of range")
    if args.ray and workers != (1,):
        raise BenchInputError(f"--workers: --ray replays one trial at a time, got workers {list(workers)}")
    options = {name: getattr(args, name) for name in TRAJECTORY_OPTIONS if getattr(args, name) is not None}
    try:
        TrajectoryScheduler(budget=1, **options)  # checks the options' ranges (the predictor is built lazily)
    except ValueError as error:
        raise BenchInputError(f"trajectory scheduler options: {error}") from None
    only = None if args.schedulers is None else [name.strip() for name in args.schedulers.split(",")]
    unknown = sorted(set(only or ()) - set(row_names()))
    if unknown:
        raise BenchInputError(f"--schedulers: unknown {', '.join(unknown)} (known: {', '.join(row_names())})")
    prior = parse_prior(args.prior)
    return Setup(_scheduler_banks(args), prior, args.orders, workers, args.seed, 1 if args.ray else args.jobs,
                 "ray" if args.ray else "simulator", options, top_k, only=only)  # fmt: skip


def schedulers(args: argparse.Namespace) -> int:
    """``clp-tune bench schedulers``: exit 2 with one line on bad input, before anything is fitted."""
    from clp_tune.bench.priors import BenchInputError
    from clp_tune.bench.suite import run_benchmark
    from clp_tune.bench.tables import print_legend, print_summary, print_task, write_json

    try:
        result = run_benchmark(_scheduler_setup(args))
    except BenchInputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print_legend(result)
    for task in result["tasks"]:
        print_task(task, result["settings"]["orders"])
    if len(result["tasks"]) > 1:
        print_summary(result)
    packages = ", ".join(f"{name} {number}" for name, number in result["packages"].items())
    where = result["machine"]
    print(f"\n{result['seconds']:.0f} s wall, {result['settings']['jobs']} process(es), backend "
          f"{result['settings']['backend']}; fitted with {packages} on {where['cpu']}, {where['architecture']}, "
          f"BLAS {where['blas']}")  # fmt: skip
    if args.json:
        write_json(result, args.json)
    return 0


def scheduler_cost(args: argparse.Namespace) -> int:
    """``clp-tune bench scheduler-cost``: exit 2 with one line on a bad ``--bank``, before the search starts."""
    from clp_tune.bench.cost import print_cost
    from clp_tune.bench.cost import scheduler_cost as measure
    from clp_tune.bench.priors import BenchInputError, bank_at

    if args.bank is not None:
        try:
            bank_at(args.bank, "--bank")
        except BenchInputError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    print_cost(measure(args.trials, args.epochs, args.workers, args.seed, args.judged_epochs, args.bank))
    return 0


def transfer(args: argparse.Namespace) -> int:
    """``clp-tune bench transfer``: exit 2 with one line on a bad ``--task``, before anything is fitted."""
    from clp_tune.stopping.bank_library import SUITE

    tasks = list(dict.fromkeys(args.task or [name for name, task in SUITE.items() if task.path.is_file()]))
    error = _bad_transfer_tasks(tasks)
    if error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from clp_tune.stopping.prior import suite_banks

    print_transfer(suite_banks(tasks))
    return 0


def _bad_transfer_tasks(tasks: list[str]) -> str | None:
    """What is wrong with ``--task`` for ``bench transfer``, or None."""
    from clp_tune.stopping.bank_library import SUITE

    unknown = [name for name in tasks if name not in SUITE]
    if unknown:
        return f"--task: expected tasks of the suite ({', '.join(SUITE)}), got {', '.join(map(repr, unknown))}"
    missing = [name for name in tasks if not SUITE[name].path.is_file()]
    if missing:
        return f"--task: no bank on disk for {', '.join(missing)} (clp-tune bank record --task NAME)"
    if len(tasks) < 2:
        return f"--task: leave-task-out needs at least two tasks, got {', '.join(tasks) or 'none'}"
    return None


def print_transfer(banks: Mapping[str, pd.DataFrame]) -> None:
    """Leave-task-out on ``banks`` (task name -> bank frame, at least two), printed task by task as each is done."""
    from clp_tune.stopping.transfer import INTERVAL, TARGET_FRACTION, TaskTransfer, leave_task_out, target

    started, verdicts = time.perf_counter(), []
    print(f"leave-task-out on {len(banks)} tasks: each judged by a prior fitted on the other {len(banks) - 1}; "
          f"Spearman correlation of predicted and true finals at the start of a search (none finished), and how "
          f"often the true final falls in the prior's {INTERVAL:.0%} interval", flush=True)  # fmt: skip

    def report(result: TaskTransfer) -> None:
        table = result.table.set_index("fraction")
        print(f"\n== {result.task} ({time.perf_counter() - started:.0f} s) ==")
        print(f"{'fraction':>8}{'prior':>8}{'no prior':>10}{'prior alone':>13}{'last value':>12}{'coverage':>10}")
        for fraction, row in table.iterrows():
            print(f"{fraction:>8.0%}{row['prior']:>8.3f}{row['no_prior']:>10.3f}{row['prior_alone']:>13.3f}"
                  f"{row['last_value']:>12.3f}{row['coverage']:>10.2f}")  # fmt: skip
        if TARGET_FRACTION in table.index:
            prior, last = table.loc[TARGET_FRACTION, "prior"], table.loc[TARGET_FRACTION, "last_value"]
            verdicts.append((prior >= last, prior >= target(last)))
            print(f"at {TARGET_FRACTION:.0%}: prior {prior:.3f}, last value {last:.3f}, target {target(last):.3f}: "
                  f"{'met' if verdicts[-1][1] else 'missed'}", flush=True)  # fmt: skip

    leave_task_out(banks, progress=report)
    print(
        f"\nat {TARGET_FRACTION:.0%} of the budget the prior ranks at or above the last value on "
        f"{sum(above for above, _ in verdicts)} of {len(verdicts)} tasks; the target (the last value's, + 0.1 where "
        f"it is below 0.85) is met on {sum(met for _, met in verdicts)}; {time.perf_counter() - started:.0f} s"
    )


def prior_fit(args: argparse.Namespace) -> int:
    """``clp-tune bench prior-fit``: exit 1 when the cache changed a prediction."""
    from clp_tune.bench.cost import print_prior_fit, prior_fit_cost

    cost = prior_fit_cost(args.seed)
    print_prior_fit(cost)
    return 0 if cost["same"] else 1
