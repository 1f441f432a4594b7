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

from clp_tune.vocabulary import CHECKPOINTS_KEPT, DETECTORS, TRAJECTORY_OPTIONS

#: ``--prior``; the modes are ``clp_tune.bench.priors.PRIOR_MODES`` (not imported here: it needs pandas).
PRIOR_HELP = (
    "the trajectory predictor's prior: other-tasks (default) = the shipped suite banks recorded on another dataset "
    "than the evaluated bank (its task's dataset, else its config/dataset column; every shipped bank when it has "
    "none), so never a trial of the evaluated task or of another task on its dataset; none = no prior (the "
    "predictor learns from the search alone; a search always has the shipped banks); crossfit = the evaluated "
    "bank itself, cross-fitted by trial: an upper bound, not a result; or PATH = a bank Parquet. The trajectory "
    "rows of other-tasks, none and crossfit are always run; the chosen prior's row is marked *"
)


def _lazy(module: str, function: str) -> Callable[[argparse.Namespace], int]:
    """A handler that imports ``module`` only when the command runs."""

    def handler(args: argparse.Namespace) -> int:
        return getattr(importlib.import_module(module), function)(args)

    return handler


def add_bench_parser(commands: argparse._SubParsersAction) -> None:
    bench = commands.add_parser("bench", help="benchmarks that print measured figures")
    kinds = bench.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    benchmarks = "clp_tune.bench.benchmarks"

    reference = kinds.add_parser(
        "mnist1d-reference", help="train the default mnist1d CNN recipe; print test accuracy",
        description="Train the default mnist1d CNN recipe once per seed, without Ray, and print each seed's test "
        "accuracy and their mean against the reference target; exit 1 when the mean misses it.",
    )  # fmt: skip
    reference.add_argument("--epochs", type=at_least_one, default=100, help="epochs per seed (default 100)")
    reference.add_argument("--seeds", type=at_least_one, default=3, help="seeds 0..N-1 (default 3)")
    reference.add_argument("--threads", type=at_least_one, default=1, help="torch threads (default 1)")
    reference.set_defaults(handler=_lazy(benchmarks, "mnist1d_reference"))

    overhead = kinds.add_parser(
        "statistics-overhead", help="cost of the trajectory statistics per epoch",
        description="Train the quickstart model with every trajectory statistic and with none, run by run in turn, "
        "and print the time spent inside the statistics and the two median epoch times side by side.",
    )  # fmt: skip
    overhead.add_argument("--epochs", type=at_least_one, default=8, help="epochs per run; the first is not timed "
                          "(default 8)")  # fmt: skip
    overhead.add_argument("--repeats", type=at_least_one, default=3, help="runs each way (default 3)")
    overhead.add_argument("--threads", type=at_least_one, default=1, help="torch threads (default 1)")
    overhead.set_defaults(handler=_lazy(benchmarks, "statistics_overhead"))

    sched = kinds.add_parser(
        "schedulers", help="every early-stopping baseline and the trajectory scheduler on recorded banks",
        description="Replay the trials of a bank (or of every bank of the suite, leave-task-out) under no stopping, "
        "ASHA and the median rule at Ray's defaults and at the product's settings, top-k after one epoch, the "
        "delta rule on curve extrapolation alone, the trajectory scheduler with each prior, and its rule told every "
        "trial's true final (traj-oracle: what the rule spends with exact predictions); the same seeded "
        "orders for all, on a simulated clock with 1 and 8 workers (or through real Ray Tune with --ray). Prints "
        "epochs, regret, misses, epochs to a near-best trial, the regret area and Spearman correlations.",
    )  # fmt: skip
    where = sched.add_mutually_exclusive_group()
    where.add_argument("--bank", help="any bank Parquet: trial_id, epoch, val_acc, config/<knob> (default: the "
                       "shipped mnist1d bank)")  # fmt: skip
    where.add_argument("--task", help="a task of the suite (clp_tune.stopping.bank_library.SUITE)")
    where.add_argument("--suite", action="store_true", help="every task of the suite whose bank is on disk, each "
                       "judged with priors that never saw it; one table per task and a summary")  # fmt: skip
    sched.add_argument("--prior", default="other-tasks", help=PRIOR_HELP)
    sched.add_argument("--orders", type=int, default=10, help="seeded orders of the trials (default 10)")
    sched.add_argument("--workers", type=int, action="append", help="concurrent trial slots; repeat for several "
                       "(default: 1 and 8)")  # fmt: skip
    sched.add_argument("--seed", type=int, default=0, help="seed of the first order")
    sched.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="processes for the simulated runs")
    sched.add_argument("--ray", action="store_true", help="replay through real Ray Tune (one worker, slow): the "
                       "reference the simulator is checked against")  # fmt: skip
    sched.add_argument("--top-k-fraction", type=float, help="top-k after one epoch: the fraction of the epoch-1 "
                       "values seen so far a trial must be among to go on (default: a tenth)")  # fmt: skip
    sched.add_argument("--schedulers", help="only these rows, comma-separated (names as in the table's legend)")
    sched.add_argument("--json", help="write every figure (per order, per bank, the summary) as JSON here")
    for name, option in TRAJECTORY_OPTIONS.items():
        default = ("on" if option.default else "off") if option.type is bool else option.default
        flag, help_text = f"--{name.replace('_', '-')}", f"trajectory scheduler: {option.help} (default {default})"
        if option.type is bool:  # --name turns it on, --no-name off; neither: the default
            sched.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif name == "detector":
            sched.add_argument(flag, choices=DETECTORS, help=help_text)
        else:
            sched.add_argument(flag, type=option.type, help=help_text)
    sched.set_defaults(handler=_lazy(benchmarks, "schedulers"))

    cost = kinds.add_parser(
        "scheduler-cost", help="the trajectory scheduler's own cost per result, and the driver's memory",
        description="A simulated search on a synthetic bank under the trajectory scheduler with its default "
        "predictor: wall time per on_trial_result (the first, which fits the prior; then median, 99th percentile, "
        "max) and the driver's resident memory.",
    )  # fmt: skip
    _add_synthetic_search(cost, epochs=100, workers_help="concurrent trial slots (default 8)")
    cost.add_argument("--judged-epochs", type=at_least_one, help="report only the first N epochs of each trial to the "
                      "scheduler (default: all); the output says so")  # fmt: skip
    cost.add_argument("--bank", help="bank Parquet for the prior (default: every shipped bank, as a search)")
    cost.set_defaults(handler=_lazy(benchmarks, "scheduler_cost"))

    transfer = kinds.add_parser(
        "transfer", help="the predictor's ranking of the finals on tasks its prior never saw (leave-task-out)",
        description="For each task of the suite, fit the prior on the other tasks' banks and cut every complete "
        "trajectory of the task at 10, 25 and 50 % of its budget, the task's other trials up to that epoch being "
        "its search (none finished: a new search's start). Prints the Spearman correlation of predicted and true "
        "finals for the prior, no prior and the prior judging each trial alone, next to the last value's, the "
        "prior's 90 % interval's coverage, and whether the ranking target is met at 10 %: at least the last "
        "value's, and 0.1 above it where that is below 0.85. About half a minute per task of the suite on 2 cores.",
    )  # fmt: skip
    transfer.add_argument("--task", action="append", help="a task of the suite; repeat for several, at least two "
                          "(default: every task whose bank is on disk)")  # fmt: skip
    transfer.set_defaults(handler=_lazy(benchmarks, "transfer"))

    fit = kinds.add_parser(
        "prior-fit", help="the default prior's first fits: with the fit cache off, into an empty one, from it",
        description="Build the prior a search builds (every shipped bank) and make its first fits -- the gain "
        "trees and the in-context model, which a search makes inside its first results, on Tune's driver -- three "
        "times in a row: with the fit cache off, into an empty cache (a machine's first search), and from that "
        "cache (every later search: ~/.cache/clp_tune/fits, or $CLP_TUNE_FIT_CACHE, off: none). Prints the seconds "
        "of each, their ratio and whether the predictions are identical (exit 1 if not).",
    )  # fmt: skip
    fit.add_argument("--seed", type=int, default=0, help="seed of the synthetic search asked about (default 0)")
    fit.set_defaults(handler=_lazy(benchmarks, "prior_fit"))

    packing = kinds.add_parser(
        "packing", help="real trials of a spec packed 1, 2, 4, 8 to a device: epoch time, trials/hour, memory",
        description="For each packing, start that many real trials of SPEC side by side (one process each, as Ray "
        "runs them) and print the epoch time per trial, trials per hour at the spec's budget, peak device memory "
        "per trial and the cost of one checkpoint. Synthetic data of the spec's shape when its dataset is not on "
        "this machine; CPU trials with the cores split between them when there is no CUDA device (both said so).",
    )  # fmt: skip
    packing.add_argument("spec", help="a search-space YAML file")
    packing.add_argument("--per-device", default="1,2,4,8", help="trials per device, comma-separated (default 1,2,4,8)")
    packing.add_argument("--epochs", type=int, default=2, help="epochs per trial; the first is not timed (default 2)")
    packing.add_argument("--train-size", type=int, help="training samples per epoch (default: the whole training "
                         "split; synthetic data: the dataset's size)")  # fmt: skip
    packing.set_defaults(handler=_lazy("clp_tune.bench.packing", "packing_command"))

    load = kinds.add_parser(
        "driver-load", help="a large replayed search through real Ray Tune: the driver's peak memory, the run's size",
        description="Replay a synthetic bank's trials (no training) through real Ray Tune under the trajectory "
        "scheduler, which persists its state in the run directory as in a search; print the results per second, "
        "the driver's peak resident memory and the run directory's size. Takes many minutes at the defaults.",
    )  # fmt: skip
    _add_synthetic_search(load, epochs=20, workers_help="max_concurrent_trials (default 8)")
    load.add_argument("--checkpoints-kept", default=str(CHECKPOINTS_KEPT), help="comma-separated num_to_keep "
                      f"values, one run each (default {CHECKPOINTS_KEPT}, the spec's checkpoints_kept)")  # fmt: skip
    load.add_argument("--dir", help="where the temporary run directories go, made if missing (default: the "
                      "system's temp dir)")  # fmt: skip
    load.add_argument("--bank", help="bank Parquet for the prior (default: every shipped bank, as a search)")
    load.set_defaults(handler=_lazy("clp_tune.bench.driver_load", "driver_load_command"))


def at_least_one(text: str) -> int:
    """An argparse type: an integer >= 1 (argparse names the option and exits 2 otherwise)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return value


def _add_synthetic_search(parser: argparse.ArgumentParser, epochs: int, workers_help: str) -> None:
    """The size of the synthetic search (``clp_tune.bench.synthetic``) a cost benchmark replays."""
    parser.add_argument("--trials", type=at_least_one, default=2000, help="trials of the synthetic bank (default 2000)")
    parser.add_argument("--epochs", type=at_least_one, default=epochs, help=f"epochs per trial (default {epochs})")
    parser.add_argument("--workers", type=at_least_one, default=8, help=workers_help)
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic bank and the order (default 0)")


def positive_integers(flag: str, text: str, example: str) -> list[int]:
    """A comma-separated list of integers > 0 given to ``flag``; SpecError (exit 2) naming the flag otherwise."""
    from clp_tune.spec_checks import SpecError

    try:
        values = [int(part) for part in text.split(",")]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise SpecError(f"{flag}: expected comma-separated integers > 0 (like {example}), got {text!r}")
    return values


def add_bank_parser(commands: argparse._SubParsersAction) -> None:
    bank = commands.add_parser(
        "bank", help="trajectory banks (the predictor's prior): record one, or manage the library of your own",
        description="Banks are the learning curves the trajectory scheduler's prior is fitted on. `record` trains "
        "a bank of the shipped suite; `list`, `add` and `remove` manage your own library, which every finished "
        "search adds its trajectories to (default ~/.cache/clp_tune/banks, or $CLP_TUNE_BANKS, or a spec's "
        "bank_library key) and which later searches of the same dataset and model fit on.",
    )  # fmt: skip
    actions = bank.add_subparsers(dest="bank_action", required=True, metavar="ACTION")
    library = argparse.ArgumentParser(add_help=False)
    library.add_argument("--library", help="the library directory (default: $CLP_TUNE_BANKS, else "
                         "~/.cache/clp_tune/banks)")  # fmt: skip
    listing = actions.add_parser(
        "list", parents=[library], help="the library's banks: dataset, model, trials, and which a new search fits on"
    )
    listing.set_defaults(handler=_lazy("clp_tune.stopping.user_banks", "list_command"))
    add = actions.add_parser("add", parents=[library], help="copy a bank Parquet into the library",
                             description="Copy a bank Parquet into the library as <its stem>.parquet; refused when "
                             "the library already has a bank of that name.")  # fmt: skip
    add.add_argument("path", type=Path, help="a bank with config/dataset, config/model and complete columns")
    add.set_defaults(handler=_lazy("clp_tune.stopping.user_banks", "add_command"))
    remove = actions.add_parser("remove", parents=[library], help="delete a bank from the library")
    remove.add_argument("name", help="the bank's name, as `bank list` shows it")
    remove.set_defaults(handler=_lazy("clp_tune.stopping.user_banks", "remove_command"))
    record = actions.add_parser(
        "record", help="train sampled configurations to the end, without stopping, and store them as a bank",
        description="Train sampled configurations to the end of their budget, without Ray or early stopping, in a "
        "process pool, and write their trajectories as a bank Parquet. With --task, a task of the shipped suite is "
        "recorded again with its own dataset, model, optimizer, budget, trials and seed; without it, the mnist1d "
        "CNN with --trials, --epochs, --seed and --space, written to --out.",
    )  # fmt: skip
    record.add_argument(
        "--task",
        help="a task of the shipped suite (clp_tune.stopping.bank_library.SUITE): "
        "records it again with its own dataset, model, optimizer, budget, trials and seed",
    )
    record.add_argument("--out", type=Path, help="where the bank goes (with --task, default: the task's shipped "
                        "file, which it replaces; without --task, required)")  # fmt: skip
    record.add_argument("--trials", type=at_least_one, default=200, help="configurations (default 200)")
    record.add_argument("--epochs", type=at_least_one, default=40, help="epochs each (default 40)")
    record.add_argument("--workers", type=at_least_one, default=os.cpu_count(), help="processes (default: the "
                        "machine's cores)")  # fmt: skip
    record.add_argument("--seed", type=int, default=0, help="seed of the configurations' draw (default 0)")
    record.add_argument("--space", default="wide", help="where lr and dropout are sampled: wide, regularized or "
                        "sgd (default wide)")  # fmt: skip
    record.set_defaults(handler=_lazy("clp_tune.bench.record", "record_command"))
