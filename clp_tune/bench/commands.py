"""The ``clp-tune bench ...`` and ``clp-tune bank ...`` command lines.

Only the parsers live here, so ``clp-tune --help`` stays fast: each handler imports its benchmark (torch, Ray,
the predictor) when it runs.
"""

from __future__ import annotations

import argparse
import importlib
import os
from collections.abc import Callable
from pathlib import Path

from clp_tune.vocabulary import DETECTORS, TRAJECTORY_OPTIONS


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports ``module`` only when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return handler


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print measured figures")
    kinds = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    benchmarks = "clp_tune.bench.benchmarks"

    reference = kinds.add_parser("mnist1d-reference", help="train the default mnist1d CNN recipe; print test accuracy")
    reference.add_argument("--epochs", type=int, default=100)
    reference.add_argument("--seeds", type=int, default=3)
    reference.add_argument("--threads", type=int, default=1)
    reference.set_defaults(handler=_lazy(benchmarks, "mnist1d_reference"))

    overhead = kinds.add_parser("statistics-overhead", help="cost of the trajectory statistics per epoch")
    overhead.add_argument("--epochs", type=int, default=8)
    overhead.add_argument("--repeats", type=int, default=3)
    overhead.add_argument("--threads", type=int, default=1)
    overhead.set_defaults(handler=_lazy(benchmarks, "statistics_overhead"))

    sched = kinds.add_parser(
        "schedulers", help="replay a trajectory bank under FIFO, ASHA, median and trajectory",
        description="Replay every trial of a bank through real Ray Tune, one at a time and in the same seeded "
        "orders, under no stopping, ASHA, the median rule and the trajectory scheduler (its predictor's prior "
        "cross-fitted, never on the trial it judges). Prints epochs, regret, regret at ASHA's budget and "
        "Spearman correlations, and whether the targets are met; writes the same as JSON.",
    )  # fmt: skip
    sched.add_argument("--bank", help="bank Parquet: trial_id, epoch, val_acc, config/<knob> (default: shipped)")
    sched.add_argument("--repetitions", type=int, default=5, help="orders of the trials to average over")
    sched.add_argument("--json", default="bench_schedulers.json", help="where to write the results as JSON")
    for name, option in TRAJECTORY_OPTIONS.items():
        flag, help_text = (
            f"--{name.replace('_', '-')}",
            f"trajectory scheduler: {option.help} (default {option.default})",
        )
        if option.type is bool:  # on by default: the flag turns it off
            sched.add_argument(f"--no-{name.replace('_', '-')}", dest=name, action="store_false", default=None,
                               help=f"trajectory scheduler: do not {option.help}")  # fmt: skip
        elif name == "detector":
            sched.add_argument(flag, choices=DETECTORS, help=help_text)
        else:
            sched.add_argument(flag, type=option.type, help=help_text)
    sched.set_defaults(handler=_lazy(benchmarks, "schedulers"))


def add_bank_parser(commands: argparse._SubParsersAction) -> None:
    bank = commands.add_parser("bank", help="record a trajectory bank (the predictor's prior)")
    actions = bank.add_subparsers(dest="bank_action", required=True, metavar="ACTION")
    record = actions.add_parser("record", help="train sampled mnist1d configurations to the end and store them")
    record.add_argument(
        "--task",
        help="a task of the shipped suite (clp_tune.stopping.bank_library.SUITE): "
        "records it again with its own dataset, model, optimizer, budget, trials and seed",
    )
    record.add_argument("--out", type=Path, help="where the bank goes (default: the task's shipped file)")
    record.add_argument("--trials", type=int, default=200)
    record.add_argument("--epochs", type=int, default=40)
    record.add_argument("--workers", type=int, default=os.cpu_count())
    record.add_argument("--seed", type=int, default=0)
    record.add_argument("--space", default="wide", help="where lr and dropout are sampled: wide or regularized")
    record.set_defaults(handler=_lazy("clp_tune.bench.record", "record_command"))
