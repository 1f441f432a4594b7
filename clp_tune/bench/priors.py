"""What the trajectory predictor's prior is fitted on in the scheduler benchmark, and the bank it is judged on.

A prior fitted on the evaluated task's own trials flatters: a user on a new dataset has no such bank. So the
default prior (``other-tasks``) is fitted only on shipped banks of the suite (``bank_library.SUITE``) recorded on
*another dataset* than the evaluated bank: never on a trial of the evaluated task, nor of any other task on its
dataset. The model family may be shared (a user on a new dataset may well train a model the suite has). This is
what the product's default prior (every shipped bank) amounts to for a dataset the suite does not have. The other
modes: ``none`` (no prior at all: the predictor learns from the search alone), ``crossfit`` (the evaluated bank
cross-fitted by trial: an upper bound, labelled so), or a bank Parquet given by path.

Pooled banks go through :func:`clp_tune.stopping.prior.pooled`, as the product's prior does: trial ids repeat
across banks (``bank0000`` ...), so each gets its task's name as a prefix, which also groups them into tasks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from clp_tune.bench.crossfit import CrossFitPredictor
from clp_tune.inputs import one_line
from clp_tune.stopping.bank_library import SUITE, BankTask, load_bank
from clp_tune.stopping.predictor import FinalAccuracyPredictor, Predictor
from clp_tune.stopping.prior import pooled

PRIOR_MODES = ("other-tasks", "none", "crossfit")
#: The benchmark row of each prior mode; a bank given by path is ``traj-file``.
PRIOR_ROWS = {"other-tasks": "traj-other", "none": "traj-none", "crossfit": "traj-crossfit"}
PATH_ROW = "traj-file"


def prior_row(mode: str | Path) -> str:
    return PRIOR_ROWS.get(mode, PATH_ROW) if isinstance(mode, str) else PATH_ROW


class BenchInputError(ValueError):
    """A bad ``--bank``, ``--task`` or ``--prior``: its message is one line that names the option and the input."""


def missing_bank_message(task: BankTask) -> str:
    return f"suite bank {task.path} is missing: record it with `clp-tune bank record --task {task.name}`"


@dataclass(frozen=True)
class Bank:
    """A bank to evaluate on or fit a prior on, and the datasets it comes from.

    Args:
        name: the suite task's name, else the file's stem.
        path: the Parquet file.
        frame: its rows as stored (bank schema, checked).
        datasets: its task's dataset, else the ``config/dataset`` values of its rows (empty: it does not say).
        task: its suite task, if it is one.
    """

    name: str
    path: Path
    frame: pd.DataFrame
    datasets: frozenset[str]
    task: BankTask | None = None

    def same_file(self, path: Path) -> bool:
        return path.is_file() and os.path.samefile(self.path, path)

    def as_searched(self) -> pd.DataFrame:
        """The rows as a search's results carry them: with ``config/dataset`` and ``config/model`` (a suite
        task's, where its rows lack them; the shipped mnist1d bank predates those columns)."""
        if self.task is None:
            return self.frame
        frame = self.frame.copy()
        for key, value in (("config/dataset", self.task.dataset), ("config/model", self.task.model)):
            frame[key] = frame[key].fillna(value) if key in frame else value
        return frame


def _read(path: Path, option: str) -> pd.DataFrame:
    try:
        return load_bank(path)
    except (FileNotFoundError, ValueError, OSError) as error:  # a reader's message may span lines: one line here
        raise BenchInputError(f"{option}: {one_line(error)}") from None


def task_bank(task: BankTask, option: str = "--task") -> Bank:
    """A suite task's bank; a missing file is a BenchInputError that says how to record it."""
    if not task.path.is_file():
        raise BenchInputError(f"{option}: {missing_bank_message(task)}")
    return Bank(task.name, task.path, _read(task.path, option), frozenset({task.dataset}), task)


def bank_at(path: str | Path, option: str, suite: Mapping[str, BankTask] = SUITE) -> Bank:
    """The bank at ``path``: a suite task's (when it is that task's file) or any bank Parquet in the schema."""
    path = Path(path)
    if not path.is_file():
        raise BenchInputError(f"{option}: no bank Parquet at {path}")
    task = next((t for t in suite.values() if t.path.is_file() and os.path.samefile(t.path, path)), None)
    if task is not None:
        return task_bank(task, option)
    frame = _read(path, option)
    datasets = frozenset(frame["config/dataset"].dropna().astype(str)) if "config/dataset" in frame else frozenset()
    return Bank(path.stem, path, frame, datasets)


def other_tasks(evaluated: Bank, suite: Mapping[str, BankTask] = SUITE) -> tuple[list[BankTask], list[BankTask]]:
    """The suite tasks the ``other-tasks`` prior may use for ``evaluated``: (present, missing on disk).

    A task qualifies when its dataset is not one the evaluated bank comes from (all do when the bank does not
    say), and its file is not the evaluated bank's.
    """
    chosen = [t for t in suite.values() if t.dataset not in evaluated.datasets and not evaluated.same_file(t.path)]
    return [t for t in chosen if t.path.is_file()], [t for t in chosen if not t.path.is_file()]


@dataclass
class Prior:
    """A trajectory predictor with its prior, and what the prior was fitted on.

    Args:
        name: the table row (``traj-other``, ``traj-none``, ``traj-crossfit``, ``traj-file``).
        description: the row's meaning, for the legend.
        predictor: the predictor (fitted lazily; the benchmark fits it before copying it for each run).
        sources: the banks its prior was fitted on.
        trial_ids: the trial ids of every row its prior was fitted on (as prefixed in the pool).
        missing: suite banks it would have used but that are not on disk (what to record).
    """

    name: str
    description: str
    predictor: Predictor
    sources: tuple[str, ...]
    trial_ids: frozenset[str]
    missing: tuple[str, ...] = ()


def _fitted_on(name: str, description: str, banks: list[Bank], missing: tuple[str, ...] = ()) -> Prior:
    frame = pooled({b.name: b.frame for b in banks})
    return Prior(name, description, FinalAccuracyPredictor(frame), tuple(b.name for b in banks),
                 frozenset(frame["trial_id"]), missing)  # fmt: skip


def build_prior(mode: str | Path, evaluated: Bank, suite: Mapping[str, BankTask] = SUITE, folds: int = 5) -> Prior:
    """The prior of ``mode`` (one of :data:`PRIOR_MODES`, or a bank path) for judging ``evaluated``."""
    if mode == "none":
        return Prior(PRIOR_ROWS["none"], "the trajectory scheduler without a prior (learns from the search alone)",
                     FinalAccuracyPredictor(None), (), frozenset())  # fmt: skip
    if mode == "crossfit":
        frame = evaluated.as_searched()
        text = f"the trajectory scheduler, prior cross-fitted on the evaluated bank ({folds} folds): an UPPER BOUND"
        return Prior(PRIOR_ROWS["crossfit"], text, CrossFitPredictor(frame, folds=folds), (evaluated.name,),
                     frozenset(frame["trial_id"]))  # fmt: skip
    if mode == "other-tasks":
        present, missing = other_tasks(evaluated, suite)
        if not present:
            detail = "; ".join(missing_bank_message(t) for t in missing) or "the suite has no bank of another dataset"
            raise BenchInputError(f"--prior other-tasks: no shipped bank of another dataset for {evaluated.name}: "
                                  f"{detail}")  # fmt: skip
        text = "the trajectory scheduler, prior fitted on the shipped banks of other datasets"
        return _fitted_on(PRIOR_ROWS["other-tasks"], text, [task_bank(t, "--prior other-tasks") for t in present],
                          tuple(missing_bank_message(t) for t in missing))  # fmt: skip
    prior = bank_at(mode, "--prior", suite)
    if evaluated.same_file(prior.path):
        raise BenchInputError(f"--prior: {prior.path} is the evaluated bank (use --prior crossfit for that bound)")
    return _fitted_on(PATH_ROW, f"the trajectory scheduler, prior fitted on {prior.path}", [prior])


def parse_prior(text: str) -> str | Path:
    """``--prior``'s value: a mode, or the path of an existing file (its schema is checked when it is read)."""
    if text in PRIOR_MODES:
        return text
    if not Path(text).is_file():
        raise BenchInputError(f"--prior: {text!r} is none of {', '.join(PRIOR_MODES)} and no file")
    return Path(text)
