"""``clp-tune bench ...``: measurements that print figures, compared side by side within one run.

Speed and accuracy goals live here rather than in timed tests, because a shared machine makes timings noisy:
each benchmark measures the things it compares in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import statistics as stats
import sys
import time
from typing import Any

import torch

from clp_tune.knobs import KNOBS
from clp_tune.trial.statistics import TrajectoryStatistics
from clp_tune.vocabulary import STATISTIC_GROUPS, TRAJECTORY_OPTIONS

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


def schedulers(args: argparse.Namespace) -> int:
    from clp_tune.bench.replay import run_scheduler_benchmark
    from clp_tune.stopping.bank_library import load_bank
    from clp_tune.stopping.scheduler import TrajectoryScheduler

    try:
        load_bank(args.bank)  # a wrong path or schema fails here, before Ray starts
    except (FileNotFoundError, ValueError) as error:
        print(f"error: --bank: {error}", file=sys.stderr)
        return 2
    options = {name: getattr(args, name) for name in TRAJECTORY_OPTIONS if getattr(args, name) is not None}
    try:
        TrajectoryScheduler(budget=1, **options)  # checks the options' ranges (the predictor is built lazily)
    except ValueError as error:
        print(f"error: trajectory scheduler options: {error}", file=sys.stderr)
        return 2
    run_scheduler_benchmark(args.bank, repetitions=args.repetitions, out_json=args.json, trajectory_options=options)
    return 0
