"""Fitted trees kept on disk, keyed by what they were fitted on.

A search whose prior is the shipped suite fits the same trees on the same rows as every search before it: tens of
seconds on Tune's driver, inside the first ``on_trial_result`` (Ray warns of it), paid again by every search, every
resumed search and every benchmark. The fits are deterministic functions of their inputs, so they are kept, under
a hash of the inputs (rows, targets, weights, folds, seed) and of what else decides a fit -- the source of
:mod:`clp_tune.stopping.boosting`, which holds every fitting recipe, and scikit-learn's version --, so a change to
either makes a new key, never a stale fit.

An entry is plain arrays: numpy's ``.npz``, read with ``allow_pickle=False``, so a file in the cache cannot run
code. It is written under a temporary name and renamed, so a concurrent search never reads half a file. An entry
that cannot be read is refitted and a folder that cannot be written is skipped, each with a warning: the cache
only ever saves time, and deleting it is always safe. It holds at most :data:`MAX_ENTRIES` entries.

The cache is ``~/.cache/clp_tune/fits/``, or ``$CLP_TUNE_FIT_CACHE`` (``off``: no cache). Each fit made and kept is
logged at INFO with its time: a machine's first search waits for them on the driver, and ``clp-tune run`` shows
them (:func:`show_fits`) where Ray only says that a call was slow.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import tempfile
import time
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

import numpy as np

from clp_tune.environment import environment

logger = logging.getLogger(__name__)

CACHE_ENV = "CLP_TUNE_FIT_CACHE"
DEFAULT_CACHE = Path("~/.cache/clp_tune/fits")
#: The value of :data:`CACHE_ENV` that turns the cache off.
OFF = "off"
#: Entries kept; the least recently used go first. A search's prior makes a few per set of reported columns (about
#: 0.1 MB each), and a new bank in the user's library makes new ones, so without a bound the cache grew with every
#: finished search.
MAX_ENTRIES = 64

Fitted = TypeVar("Fitted")
Arrays = Mapping[str, np.ndarray]
Input = np.ndarray | float | int | str | None


def cache_at(folder: Path | str) -> contextlib.AbstractContextManager[None]:
    """The cache set to ``folder`` (or :data:`OFF`) for the block: a benchmark that times fits chooses its own."""
    return environment(**{CACHE_ENV: str(folder)})


def cache_dir() -> Path | None:
    """The cache's folder: ``$CLP_TUNE_FIT_CACHE``, else the default; None when it is turned off."""
    chosen = os.environ.get(CACHE_ENV) or str(DEFAULT_CACHE)
    return None if chosen == OFF else Path(chosen).expanduser()


@functools.cache
def _recipe() -> bytes:
    """What decides a fit besides its inputs: the fitting code and the library that runs it."""
    import sklearn

    from clp_tune.stopping import boosting

    return Path(boosting.__file__).read_bytes() + sklearn.__version__.encode()


def fit_key(kind: str, *inputs: Input) -> str:
    """The hex digest naming the fit of ``kind`` on ``inputs`` (arrays by dtype, shape and bytes)."""
    digest = hashlib.sha256(_recipe())
    digest.update(kind.encode())
    for value in inputs:
        if isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value)
            digest.update(f"{array.dtype.str}{array.shape}".encode())
            digest.update(array.tobytes())
        else:
            digest.update(repr(value).encode())
        digest.update(b"\0")
    return digest.hexdigest()


def cached(
    kind: str,
    fit: Callable[[], Fitted],
    to_arrays: Callable[[Fitted], Arrays],
    from_arrays: Callable[[Arrays], Fitted],
    *inputs: Input,
    use: bool = True,
) -> Fitted:
    """The result of ``fit()``, read from the cache when a fit of ``kind`` on ``inputs`` was kept there, else fitted
    and kept (as ``to_arrays`` makes it arrays; ``from_arrays`` makes it back). ``use=False`` (a fit that no other
    search repeats) or a cache turned off: fitted, neither read nor kept."""
    folder = cache_dir() if use else None
    if folder is None:
        return fit()
    path = folder / f"{kind}-{fit_key(kind, *inputs)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as entry:
                fitted = from_arrays({name: entry[name] for name in entry.files})  # TypeError: other arrays
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile) as error:
            logger.warning("fit cache: refitting, %s is unreadable (%s)", path, error)
        else:
            with contextlib.suppress(OSError):  # recently used (a read-only cache is still read)
                os.utime(path)
            return fitted
    started = time.perf_counter()
    fitted = fit()
    seconds = time.perf_counter() - started
    if _keep(path, to_arrays(fitted)):
        logger.info("%s trees fitted in %.1f s, kept in %s: later searches read them", kind, seconds, folder)
    return fitted


def _keep(path: Path, arrays: Arrays) -> bool:
    """Write ``arrays`` to ``path`` whole (a temporary file, renamed); or warn, go on and return False."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        try:
            with os.fdopen(descriptor, "wb") as handle:
                np.savez(handle, **arrays)
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)  # gone once renamed; a leftover of a failed write otherwise
    except OSError as error:
        logger.warning("fit cache: not kept, %s (%s=%s turns the cache off)", error, CACHE_ENV, OFF)
        return False
    with contextlib.suppress(OSError):  # another search may be removing the same entries
        entries = sorted(path.parent.glob("*.npz"), key=lambda entry: entry.stat().st_mtime, reverse=True)
        for stale in entries[MAX_ENTRIES:]:
            stale.unlink(missing_ok=True)
    return True


def show_fits() -> None:
    """Print this module's messages to stderr as ``trajectory prior: ...`` lines, its fits included (INFO)."""
    if any(getattr(h, "name", None) == __name__ for h in logger.handlers):
        return
    handler = logging.StreamHandler()  # stderr
    handler.name = __name__
    handler.setFormatter(logging.Formatter("trajectory prior: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
