"""The project's vocabulary: every list of names that more than one part of clp_tune uses, defined once.

The spec's allowed values, the trial's columns, the predictor's inputs, the report's sections and the benchmark's
flags are all derived from these tables, so adding a dataset, a statistic or a scheduler option is one edit here.
This module imports nothing heavy (no torch, no Ray, no pandas): ``clp-tune validate`` and ``clp-tune --help``
read it and stay fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# --- datasets and models ---------------------------------------------------------------------------------------

#: Input shape of one sample (without the batch dimension) per dataset.
DATASET_SHAPES: dict[str, tuple[int, ...]] = {
    "mnist1d": (40,),
    "digits": (1, 8, 8),
    "tabular": (64,),
    "fashionmnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32),
}
DATASETS = tuple(DATASET_SHAPES)
#: Fraction of each training set held out as the validation split that guides the search.
VALIDATION_FRACTION = 0.1
#: Training-set sizes before the validation split: mnist1d's default args make 4000; digits keeps load_digits()'s
#: 1797 samples less the 20 % test split the loader holds out; tabular draws 5000 (and 1000 test); the torchvision
#: sets as published.
_FULL_TRAIN_SIZES: dict[str, int] = {
    "mnist1d": 4000,
    "digits": 1797 - int(round(1797 * 0.2)),
    "tabular": 5000,
    "fashionmnist": 60000,
    "cifar10": 50000,
    "cifar100": 50000,
}
#: Training-split sizes after the validation split, known without loading anything, so a spec can be checked
#: against them (e.g. high_loss_q x batch_size).
TRAIN_SIZES: dict[str, int] = {name: n - int(round(n * VALIDATION_FRACTION)) for name, n in _FULL_TRAIN_SIZES.items()}

#: Models and the input rank each needs (None: any input, flattened).
MODEL_INPUT_RANK: dict[str, int | None] = {"cnn1d": 1, "mlp": None, "convnet": 3, "resnet18": 3}
MODELS = tuple(MODEL_INPUT_RANK)
#: Datasets whose trials augment by default (``augment:``; clp_tune.trial.augment: random crop with 4-pixel padding
#: and horizontal flip, CIFAR's standard recipe); the others train on the samples as they are.
AUGMENTED_BY_DEFAULT = ("cifar10", "cifar100")


def augments_by_default(dataset: str) -> bool:
    """Whether a trial on ``dataset`` augments when its spec (or config) does not say."""
    return dataset in AUGMENTED_BY_DEFAULT


#: Epochs between checkpoints of a GPU trial when the spec leaves ``checkpoint_every`` out. A ResNet-18 checkpoint
#: (179 MB: weights, SGD momentum, the statistics' reference weights) took 0.47 s to save and copy to storage on
#: this project's 2-core CPU machine, next to ~1800 s for a CPU epoch of CIFAR-10 (so CPU trials keep checkpointing
#: every epoch), where a GPU epoch is expected to take seconds (not measured yet): every 5th epoch keeps the cost
#: under ~0.1 s per epoch, and a resumed or thawed trial repeats at most 4 epochs.
GPU_CHECKPOINT_EVERY = 5

#: Checkpoints Ray keeps per trial (``CheckpointConfig(num_to_keep)``) when the spec leaves ``checkpoints_kept``
#: out. Ray rewrites its whole experiment state whenever one trial has written this many checkpoints since the
#: last rewrite; with 1 that is after every result, a cost that grows with the number of trials
#: (``clp-tune bench driver-load --checkpoints-kept 1,2`` measures both). 2 keeps one older checkpoint per trial.
CHECKPOINTS_KEPT = 2

#: The recipe's categorical knobs (``clp_tune.spec.KNOBS`` validates them, ``clp_tune.trial.recipe`` reads them).
OPTIMIZERS = ("sgd", "adamw")
LR_SCHEDULES = ("cosine", "constant")
MIXUP_KINDS = ("input", "manifold")
EARLY_MIXUP = ("pause", "boost")
#: Denoising-autoencoder pretraining of the MLP, and how its inputs are corrupted.
PRETRAIN_MODES = ("none", "stacked", "gradual")
PRETRAIN_NOISES = ("mask", "gaussian")

# --- what a trial reports ----------------------------------------------------------------------------------------

#: Learning-curve columns every epoch's row carries.
CURVE_COLUMNS = ("val_acc", "val_loss", "train_acc", "train_loss", "lr")
#: Trajectory-statistic groups (what ``statistics:`` in a spec switches) and the columns each writes.
GROUP_COLUMNS: dict[str, tuple[str, ...]] = {
    "grad_norm": ("grad_norm",),
    "grad_noise": ("grad_noise", "grad_noise_ratio"),
    "grad_cosine_distance": ("grad_cosine_distance",),
    "layer_rotation": ("layer_rotation",),
    "weight_distance": ("weight_distance", "path_length"),
    "fisher_trace": ("fisher_trace",),
    "activation_distance": ("activation_distance",),
    "tse": ("tse",),
    "trajectory_complexity": ("trajectory_complexity",),
}
STATISTIC_GROUPS = tuple(GROUP_COLUMNS)
STATISTIC_COLUMNS = tuple(column for columns in GROUP_COLUMNS.values() for column in columns)
#: Critical-period detectors and the column each reads (``clp_tune.trial.detectors`` holds the rules).
DETECTOR_INPUT: dict[str, str] = {
    "layer_rotation": "layer_rotation",
    "grad_cosine_distance": "grad_cosine_distance",
    "fisher_peak": "fisher_trace",
    "acc50": "train_acc",
}
DETECTORS = tuple(DETECTOR_INPUT)


def detector_group(detector: str) -> str | None:
    """The statistic group that must be on for ``detector`` to see its input; None for an always-reported curve."""
    column = DETECTOR_INPUT[detector]
    return next((group for group, columns in GROUP_COLUMNS.items() if column in columns), None)


# --- the search --------------------------------------------------------------------------------------------------

SEARCHERS = ("optuna", "random")
DISTRIBUTIONS = ("uniform", "loguniform", "int", "choice", "grid")
SCHEDULER_TYPES = ("fifo", "asha", "median", "trajectory")


@dataclass(frozen=True)
class Option:
    """One trajectory-scheduler option: its default, type, meaning and valid values (the spec key, the benchmark's
    flag and the scheduler's argument are all built from it)."""

    default: Any
    type: type
    help: str
    valid: Callable[[Any], bool] = lambda value: True
    expected: str = ""


def _fraction(value: Any) -> bool:
    return 0 < value <= 1


#: The trajectory scheduler's options, shared by the spec (``scheduler:``), the scheduler and ``bench schedulers``.
#: The defaults treat the critical period as the first few percent of training (chosen with the benchmark).
TRAJECTORY_OPTIONS: dict[str, Option] = {
    "k": Option(1, int, "stop a trial unlikely to beat the k-th best final", lambda v: v > 0, "an integer > 0"),
    "delta": Option(0.05, float, "stop when P(final > k-th best) < delta", lambda v: 0 < v < 1, "a number in (0, 1)"),
    "min_fraction": Option(0.025, float, "earliest judgement, as a fraction of the budget", _fraction, "in (0, 1]"),
    "max_fraction": Option(
        0.05, float, "latest a critical-period detector may hold a trial back (budget fraction)", _fraction, "in (0, 1]"
    ),
    "detector": Option(
        "acc50",
        str,
        "critical-period detector whose firing starts judgement",
        lambda v: v in DETECTORS,
        "one of " + ", ".join(DETECTORS),
    ),  # fmt: skip
    "noise_grace": Option(False, bool, "lengthen the grace under dropout and label noise"),
    "noise_factor": Option(
        0.5,
        float,
        "grace x (1 + noise_factor x (dropout + label_noise))",
        lambda v: 0 <= v < math.inf,  # .inf passed, then failed the first judgement: grace x inf (x 0 = nan)
        "a finite number >= 0",
    ),  # fmt: skip
    "freeze_thaw": Option(True, bool, "pause (freeze) a trial unlikely to win instead of stopping it; thaw it later"),
    "hopeless": Option(
        0.01,
        float,
        "stop for good (never thaw) when P(final > k-th best) < hopeless (<= delta)",
        lambda v: 0 < v < 1,
        "a number in (0, 1)",
    ),  # fmt: skip
}

# --- files of a run directory -------------------------------------------------------------------------------------

SPEC_FILE = "spec.yaml"
TRAJECTORIES_FILE = "trajectories.parquet"
TRIALS_FILE = "trials.parquet"
DECISIONS_FILE = "decisions.parquet"
#: How ``decisions.parquet`` words the trajectory scheduler's freeze-thaw moves that the report counts: a thaw for a
#: slot that would idle, the stop of a paused trial when the search is over, and the stop of a paused trial whose
#: slot a new trial needs (under a concurrency limit that counts paused trials).
IDLE_THAW_REASON = "a slot would idle"
SEARCH_OVER_REASON = "the search is over"
SLOT_NEEDED_REASON = "its slot is needed"
SCHEDULER_STATE_FILE = "scheduler_state.json"
SCHEDULER_JOURNAL_FILE = "scheduler_state.journal.jsonl"
#: The banks of the user's library that the trajectory scheduler's prior fits on, chosen when the search starts.
PRIOR_BANKS_FILE = "prior_banks.json"
REPORT_DIR = "report"
REPORT_PAGE = "index.html"
#: Outcomes a trial can have in ``trials.parquet``.
OUTCOMES = ("finished", "stopped", "diverged", "error", "unfinished")
