"""``clp-tune bench ...``: measurements that print figures, compared side by side within one run.

Speed and accuracy goals live here rather than in timed tests, because a shared machine makes timings noisy:
each benchmark measures the things it compares in the same process, interleaved.
"""

from __future__ import annotations

import argparse
import statistics as stats
import time
from typing import Any

import torch

from clp_tune.spec import KNOBS
from clp_tune.statistics import STATISTIC_GROUPS

REFERENCE_TARGET = 0.92


def reference_config(epochs: int, statistics: str = "") -> dict[str, Any]:
    """The default mnist1d recipe: the reference 1-D CNN, AdamW at 1e-2, batch 100, cosine decay, no Mixup."""
    config = {name: knob.default for name, knob in KNOBS.items()}
    config.update(dataset="mnist1d", model="cnn1d", epochs=epochs, statistics=statistics)
    return config


def _train(config: dict[str, Any], rows: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    from clp_tune.trainable import run_trial

    rows = [] if rows is None else rows
    run_trial(config, lambda row, state: rows.append(row))
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


def statistics_overhead(args: argparse.Namespace) -> int:
    """Epoch time with all statistics vs none on the quickstart model, interleaved run by run."""
    torch.set_num_threads(args.threads)
    timings: dict[str, list[float]] = {"off": [], "on": []}
    for repeat in range(args.repeats):
        for label, enabled in (("off", ""), ("on", ",".join(STATISTIC_GROUPS))):
            rows = _train(reference_config(args.epochs, enabled) | {"seed": repeat})
            timings[label].extend(row["epoch_seconds"] for row in rows[1:])  # the first epoch warms caches
    off, on = stats.median(timings["off"]), stats.median(timings["on"])
    overhead = (on - off) / off
    print(f"median epoch time without statistics: {off * 1000:.1f} ms")
    print(f"median epoch time with all statistics: {on * 1000:.1f} ms")
    print(f"statistics overhead: {overhead:.1%} of an epoch (target <= 10%)")
    return 0


def schedulers(args: argparse.Namespace) -> int:
    from clp_tune.replay import run_scheduler_benchmark

    run_scheduler_benchmark(args.bank, repetitions=args.repetitions, out_json=args.json)
    return 0


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print measured figures")
    kinds = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")

    reference = kinds.add_parser("mnist1d-reference", help="train the default mnist1d CNN recipe; print test accuracy")
    reference.add_argument("--epochs", type=int, default=100)
    reference.add_argument("--seeds", type=int, default=3)
    reference.add_argument("--threads", type=int, default=1)
    reference.set_defaults(handler=mnist1d_reference)

    overhead = kinds.add_parser("statistics-overhead", help="cost of the trajectory statistics per epoch")
    overhead.add_argument("--epochs", type=int, default=8)
    overhead.add_argument("--repeats", type=int, default=3)
    overhead.add_argument("--threads", type=int, default=1)
    overhead.set_defaults(handler=statistics_overhead)

    sched = kinds.add_parser("schedulers", help="replay a trajectory bank under FIFO, ASHA, median and trajectory")
    sched.add_argument("--bank", help="bank Parquet (default: the one shipped with the package)")
    sched.add_argument("--repetitions", type=int, default=5, help="orders of the trials to average over")
    sched.add_argument("--json", default="bench_schedulers.json", help="where to write the results as JSON")
    sched.set_defaults(handler=schedulers)
