"""The banks the predictor's prior is fitted on: every shipped suite bank, pooled, each trial id prefixed with its
task's name.

One prior for every dataset: its in-context model (:mod:`clp_tune.stopping.incontext`) reads a trial's position
among the trials of its own search, not its absolute accuracy, so curves of other tasks inform a new one. Trial
ids repeat across banks, so a pooled bank's ids are ``<task>/<trial id>``, and the prefix is also what groups the
pooled trials back into their tasks (a trial is compared only with trials of its own task).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from clp_tune.stopping.bank_library import SUITE, BankTask, load_bank

logger = logging.getLogger(__name__)

TASK_SEPARATOR = "/"
#: The task name of a bank of the user's library is this prefix and the run's name
#: (:func:`clp_tune.stopping.user_banks.load_user_banks`): one task per run, all of the search's dataset and model.
USER_TASK_PREFIX = "user:"
#: The most out-of-fold groups the user's runs take (:func:`fold_labels`).
USER_FOLDS = 3


def task_of(trial_id: str) -> str:
    """The task a pooled trial id belongs to (the part before the first separator; "" for an unprefixed id)."""
    head, separator, _ = trial_id.partition(TASK_SEPARATOR)
    return head if separator else ""


def fold_labels(tasks: Sequence[str | None]) -> np.ndarray:
    """The out-of-fold group of each example of a prior, from its task's name (None: the search's own trials).

    One group per task, so that an error model learns a prior's errors on a task it has not seen -- except the
    user's runs (:data:`USER_TASK_PREFIX`), which are runs of one dataset and model: they share at most
    :data:`USER_FOLDS` groups, round robin in order of appearance (the errors on a run not seen, of a task seen).
    A group per run made the prior's first fit grow with the library, every fold one more fit of the trees.
    """
    runs: dict[str, int] = {}
    groups: dict[object, int] = {}
    labels = []
    for task in tasks:
        key: object = task
        if task is not None and task.startswith(USER_TASK_PREFIX):
            key = (USER_TASK_PREFIX, runs.setdefault(task, len(runs)) % USER_FOLDS)
        labels.append(groups.setdefault(key, len(groups)))
    return np.asarray(labels, dtype=int)


def pooled(banks: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Bank frames by task name in one frame, each trial id prefixed with its task's name."""
    return pd.concat(
        [frame.assign(trial_id=name + TASK_SEPARATOR + frame["trial_id"].astype(str)) for name, frame in banks.items()],
        ignore_index=True,
    )


def suite_banks(tasks: Sequence[str] | None = None, suite: Mapping[str, BankTask] = SUITE) -> dict[str, pd.DataFrame]:
    """The banks of ``tasks`` (default: the whole suite) that exist on disk, by task name; a missing one is
    skipped with a warning (a checkout may lack a bank not yet recorded)."""
    names = list(suite) if tasks is None else list(tasks)
    unknown = [name for name in names if name not in suite]
    if unknown:
        raise ValueError(f"unknown suite tasks {unknown}; expected some of {sorted(suite)}")
    out = {}
    for name in names:
        if suite[name].path.is_file():
            out[name] = load_bank(suite[name].path)
        else:
            logger.warning(
                "prior: the bank of suite task %s is missing (%s); fitting without it", name, suite[name].path
            )
    return out


def suite_frame(tasks: Sequence[str] | None = None, suite: Mapping[str, BankTask] = SUITE) -> pd.DataFrame | None:
    """The pooled frame of :func:`suite_banks`, or None when none of them exists."""
    banks = suite_banks(tasks, suite)
    return pooled(banks) if banks else None
