"""The user's own bank library: priors that grow with use.

Every finished search adds its trajectories (complete and partial, marked by the ``complete`` column) to a local
library, one Parquet file per run, keyed by the dataset and model it trained (``config/dataset``,
``config/model``). A later search on the same dataset and model fits its prior on the newest of those banks (up to
:data:`PRIOR_TRIALS` complete trials) on top of the shipped suite (``TrajectoryScheduler(user_banks=...)``): a
user's tenth search on a dataset no longer starts from other tasks' curves alone. The predictor reads only complete
trials, and only in its gain trees: a run's complete trials are the ones its stopper let finish, not a search, so the
in-context model leaves them out. Partial trials are kept for a later use.

The library is ``~/.cache/clp_tune/banks/``, or ``$CLP_TUNE_BANKS``, or a spec's ``bank_library:`` key (``off``
turns it off). A file that cannot be read, or that is not a bank, is skipped with a warning: a library is a
cache, and a damaged entry must never stop a search.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clp_tune.inputs import blocking_file, one_line
from clp_tune.stopping.bank_library import load_bank
from clp_tune.vocabulary import PRIOR_BANKS_FILE

if TYPE_CHECKING:  # pandas and the prior are imported where used: `clp-tune validate` checks the library's place
    import pandas as pd

logger = logging.getLogger(__name__)

LIBRARY_ENV = "CLP_TUNE_BANKS"
DEFAULT_LIBRARY = Path("~/.cache/clp_tune/banks")
#: The spec's ``bank_library:`` value that turns the library off.
OFF = "off"
#: The most complete trials of the library a search's prior fits on (:func:`newest`). The prior's fits -- at the
#: search's first predictions and at every refit, in the driver -- grow with the rows they are given, and the
#: library grows by a bank per finished search: a bound keeps a user's hundredth search as quick to start as the
#: tenth. The newest runs are the closest to the recipe being searched.
PRIOR_TRIALS = 1000


def library_dir(override: str | None = None) -> Path | None:
    """The library's directory: ``override`` (a spec's key), else ``$CLP_TUNE_BANKS``, else the default; None
    when it is turned off."""
    chosen = override or os.environ.get(LIBRARY_ENV) or str(DEFAULT_LIBRARY)
    return None if chosen == OFF else Path(chosen).expanduser()


def library_problem(override: str | None = None, key: str = "bank_library") -> str | None:
    """Why the library (:func:`library_dir` of ``override``) cannot be used, naming where it was set (``key``, the
    environment or the default): a file at its path or above it (a missing directory is made when the first bank
    is added); None when it can."""
    directory = library_dir(override)
    blocking = blocking_file(directory) if directory is not None else None
    if blocking is None:
        return None
    where = key if override else f"${LIBRARY_ENV}" if os.environ.get(LIBRARY_ENV) else "the default"
    return f"{where}: expected a directory for the bank library (or {OFF}), but {blocking} is a file"


@dataclass(frozen=True)
class UserBank:
    """One bank of the library: its file, what it trained, how many trials it holds (complete ones apart), and when
    it was written (a resumed run rewrites its bank)."""

    name: str
    path: Path
    dataset: str
    model: str
    trials: int
    complete: int
    modified: float


#: What the library reads of each file to list and match it: the full bank is read (and checked) only when a
#: matching search fits on it (:func:`load_user_banks`).
_SUMMARY_COLUMNS = ["trial_id", "complete", "config/dataset", "config/model"]


def _summary(path: Path) -> UserBank:
    """The bank at ``path``, read from its summary columns only (a search lists the whole library at its start, and
    a library grows by a file per finished search). A run with no complete trial is a valid entry that no search
    fits on yet.

    Raises:
        pyarrow.ArrowException, OSError, ValueError: it is not a readable bank with a dataset and model; the caller
            decides what that means (a damaged library entry is skipped, a file given to ``bank add`` refused).
    """
    import pyarrow.parquet as pq

    names = pq.read_schema(path).names
    missing = [c for c in _SUMMARY_COLUMNS if c not in names]
    if missing:
        raise ValueError(f"not a library bank: no {', '.join(missing)} column")
    frame = pq.read_table(path, columns=_SUMMARY_COLUMNS).to_pandas()
    if frame.empty:
        raise ValueError("no rows")
    modified = path.stat().st_mtime
    trials = frame.groupby("trial_id")["complete"].last().astype(bool)
    return UserBank(path.stem, path, str(frame["config/dataset"].iloc[0]), str(frame["config/model"].iloc[0]),
                    len(trials), int(trials.sum()), modified)  # fmt: skip


def _read(path: Path) -> UserBank | None:
    """The library entry at ``path``, or None with a warning when it is not a readable bank (:func:`_summary`): a
    library is a cache, and a damaged entry must never stop a search."""
    import pyarrow

    try:
        return _summary(path)
    except (pyarrow.ArrowException, OSError, ValueError) as error:  # a cache entry: any damage means skip it
        logger.warning("bank library: skipping %s (%s)", path, one_line(error))
        return None


def list_banks(directory: Path | None) -> list[UserBank]:
    """Every readable bank of the library, by name; unreadable files are skipped with a warning."""
    if directory is None or not directory.is_dir():
        return []
    return [bank for path in sorted(directory.glob("*.parquet")) if (bank := _read(path)) is not None]


def matching(banks: Sequence[UserBank], dataset: str, model: str) -> list[UserBank]:
    """The ``banks`` of ``dataset`` and ``model`` that hold complete trials."""
    return [b for b in banks if (b.dataset, b.model) == (dataset, model) and b.complete]


def newest(banks: Sequence[UserBank], trials: int) -> list[UserBank]:
    """The newest of ``banks`` until they hold ``trials`` complete trials (the bank that reaches it is kept whole:
    a prior fits on whole runs), newest first.

    Example: banks of 400, 300 and 500 complete trials, oldest first, give the last two for 600 trials."""
    chosen: list[UserBank] = []
    held = 0
    for bank in sorted(banks, key=lambda b: (b.modified, b.name), reverse=True):
        if held >= trials:
            break
        chosen.append(bank)
        held += bank.complete
    return chosen


def bank_rows(trajectories: pd.DataFrame, dataset: str, model: str, budget: int) -> pd.DataFrame:
    """A run's trajectory rows as a library bank: its dataset and model, and each trial marked complete or not."""
    import pandas as pd

    last = trajectories.groupby("trial_id")["epoch"].transform("max")
    diverged = trajectories.get("diverged", pd.Series(0, index=trajectories.index)).fillna(0)
    ended_diverged = diverged.groupby(trajectories["trial_id"]).transform("last") == 1
    return trajectories.assign(**{"config/dataset": dataset, "config/model": model,
                                  "complete": (last >= budget) & ~ended_diverged})  # fmt: skip


def add_run(
    directory: Path | None, name: str, trajectories: pd.DataFrame, dataset: str, model: str, budget: int
) -> Path | None:
    """Add (or, for a resumed run, replace) run ``name``'s trajectories; returns the bank's path, None when the
    library is off, there is nothing to add, or writing failed (a warning, never fatal)."""
    if directory is None or trajectories.empty:
        return None
    from clp_tune.store import write_table

    try:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"{name}.parquet"
        write_table(bank_rows(trajectories, dataset, model, budget), path)
        return path
    except OSError as error:
        logger.warning("bank library: could not add run %s to %s (%s)", name, directory, error)
        return None


def add_file(directory: Path, source: Path) -> UserBank:
    """Copy a bank Parquet into the library as ``<its stem>.parquet`` (a search lists only those); ValueError when it
    is not a library bank (see :func:`bank_rows`), FileExistsError when the library has a bank of that name.

    Copied to a temporary file first and renamed: a copy cut short never shows as a bank."""
    import pyarrow

    load_bank(source)  # ValueError naming the column when its values are not a bank's
    try:  # not _read: that warns and skips, for entries already in the library; a file given here is refused, once
        bank = _summary(source)
    except (pyarrow.ArrowException, OSError, ValueError) as error:
        raise ValueError(
            f"{source}: {one_line(error)}; expected a bank with the config/dataset, config/model and complete "
            f"columns a finished search writes to the library"
        ) from None
    from clp_tune.store import atomic_replace

    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{source.stem}.parquet"
    if target.exists():
        raise FileExistsError(target)
    atomic_replace(target, lambda partial: shutil.copyfile(source, partial))
    return replace(bank, path=target, modified=target.stat().st_mtime)


def remove(directory: Path, name: str) -> Path:
    """Delete bank ``name`` (a file stem) from the library; KeyError when there is none."""
    path = directory / f"{name}.parquet"
    if not path.is_file():
        raise KeyError(name)
    path.unlink()
    return path


def keep_banks(run_dir: Path, paths: Sequence[str]) -> None:
    """Record in ``run_dir`` the library banks its search's prior fits on (:data:`PRIOR_BANKS_FILE`)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / PRIOR_BANKS_FILE).write_text(json.dumps(list(paths)))


def kept_banks(run_dir: Path) -> list[str] | None:
    """The library banks :func:`keep_banks` recorded in ``run_dir``; None when none were recorded (another scheduler,
    an older run, a search not started yet) or the file was torn by a crash as it was written."""
    try:
        return [str(path) for path in json.loads((run_dir / PRIOR_BANKS_FILE).read_text())]
    except (OSError, ValueError):
        return None


def load_user_banks(paths: Sequence[str]) -> dict[str, pd.DataFrame]:
    """The banks at ``paths`` by task name (:data:`~clp_tune.stopping.prior.USER_TASK_PREFIX` and the file's stem),
    each unreadable one skipped with a warning."""
    from clp_tune.stopping.prior import USER_TASK_PREFIX

    out = {}
    for path in map(Path, paths):
        try:
            frame = load_bank(path)
            out[USER_TASK_PREFIX + path.stem] = frame[frame["complete"].astype(bool)]
        except Exception as error:  # the library changed under a running search: go on without that bank
            logger.warning("bank library: skipping %s (%s)", path, one_line(error))
    return out


# -- `clp-tune bank list | add | remove` ------------------------------------------------------------------------


_OFF = f"the bank library is off (${LIBRARY_ENV}={OFF}); give --library DIR"


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def _chosen_library(args) -> tuple[Path | None, str | None]:
    """The library a ``bank`` command works on (None when it is off), and why it cannot be used (or None)."""
    return library_dir(args.library), library_problem(args.library, "--library")


def _needs_library(command: Callable[[Any, Path], int]) -> Callable[[Any], int]:
    """A command that changes the library, given its directory; exit 2 when the library is off."""

    @functools.wraps(command)
    def run(args) -> int:
        directory, problem = _chosen_library(args)
        return _error(_OFF) if directory is None else _error(problem) if problem else command(args, directory)

    return run


def list_command(args) -> int:
    directory, problem = _chosen_library(args)
    if directory is None:
        print(f"the bank library is off (${LIBRARY_ENV}={OFF})")
        return 0
    if problem:
        return _error(problem)
    banks = list_banks(directory)
    print(f"bank library {directory}: {len(banks)} bank(s); a search fits on the newest of its dataset and model, "
          f"up to {PRIOR_TRIALS} complete trials")  # fmt: skip
    fitted = {b.path for kind in {(b.dataset, b.model) for b in banks}
              for b in newest(matching(banks, *kind), PRIOR_TRIALS)}  # fmt: skip
    for bank in banks:
        use = "fitted on" if bank.path in fitted else "left out (older)" if bank.complete else "no complete trial"
        print(f"  {bank.name:<40} {bank.dataset:<14} {bank.model:<10} {bank.trials:>5} trials, "
              f"{bank.complete:>5} complete  {use}")  # fmt: skip
    return 0


@_needs_library
def add_command(args, directory: Path) -> int:
    if not args.path.is_file():
        return _error(f"{args.path}: no such file")
    try:
        bank = add_file(directory, args.path)
    except ValueError as error:
        return _error(str(error))
    except FileExistsError:
        return _error(f"{directory} already has a bank named {args.path.stem!r}: `clp-tune bank remove "
                      f"{args.path.stem}` first, or copy the file under another name")  # fmt: skip
    print(f"added {bank.name} ({bank.dataset}, {bank.model}: {bank.trials} trials, {bank.complete} complete) to "
          f"{directory}")  # fmt: skip
    return 0


@_needs_library
def remove_command(args, directory: Path) -> int:
    try:
        path = remove(directory, args.name)
    except KeyError:
        known = ", ".join(b.name for b in list_banks(directory)) or "none"
        return _error(f"no bank {args.name!r} in {directory} (banks: {known})")
    print(f"removed {path}")
    return 0
