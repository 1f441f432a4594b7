"""A run whose experiment lives at a URI (``s3://...``): its own files kept in the bucket while it runs, and found
again by ``clp-tune report`` and ``clp-tune resume``.

Ray Tune keeps its own files (experiment state, trial results, checkpoints) at the URI; the driver's run directory
holds ours: ``spec.yaml``, whatever the trajectory scheduler writes into its state directory (its snapshot, journal
and ``decisions.parquet``, today a directory of parts; the set is open) and, at the end, the tables and the report.
They live on the driver's local disk, which dies with the driver's machine, so :class:`RunFileSync` mirrors the
whole directory to the URI after every result the scheduler has judged, with a manifest (:data:`MANIFEST`) of what
it mirrored, and :func:`fetch_run_files` brings exactly those files back before a resumed search rebuilds its
scheduler. The manifest is what tells our files from Ray's in the bucket, whatever names the scheduler uses.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ray.tune import Callback

from clp_tune.inputs import is_uri, one_line
from clp_tune.spec import SpecError
from clp_tune.vocabulary import SPEC_FILE

if TYPE_CHECKING:
    import pyarrow.fs

#: The list of the run's own files in the bucket (paths relative to the run), written after each sync.
MANIFEST = ".clp_tune_files.json"
#: Ray Tune's experiment state file: a run directory without one holds no search to report on or resume.
EXPERIMENT_STATE = "experiment_state-*.json"


@contextlib.contextmanager
def _storage_errors(message: str) -> Iterator[None]:
    """pyarrow's errors as one :class:`~clp_tune.spec.SpecError` line (exit 2) starting with ``message``, not a
    traceback: a URI it cannot parse (an unknown scheme: ArrowInvalid, not an OSError) or a bucket it cannot read
    (S3's errors are OSErrors)."""
    import pyarrow

    try:
        yield
    except (OSError, pyarrow.ArrowException) as error:
        raise SpecError(f"{message} ({one_line(error)})") from None


def _parse_uri(uri: str | Path, name: str) -> tuple[pyarrow.fs.FileSystem, str]:
    """The filesystem and path of ``uri``; SpecError naming ``name`` (the flag or argument that gave it) when it
    names no bucket, which pyarrow reports without the URI, or as a path that cannot start with '/'."""
    scheme, _, rest = str(uri).partition("://")
    if not rest.split("/")[0]:
        raise SpecError(f"{name}: expected {scheme}://BUCKET/PATH, got {str(uri)!r}")
    return _filesystem(str(uri))


def check_storage(path: str | Path, flag: str = "--storage-path") -> None:
    """A URI a search will write to must name a bucket and be reachable from here; otherwise SpecError naming
    ``flag`` (exit 2), before Ray starts. A local path is checked when the command line is read (``run``'s
    ``--storage-path`` type) and made by the search."""
    if not is_uri(path):
        return
    with _storage_errors(f"{flag}: cannot reach {path}"):
        fs, base = _parse_uri(path, flag)
        fs.get_file_info(base)


def local_copy(uri: str) -> Path:
    """Where the driver keeps its copy of the run at ``uri``: ``runs/<run name>`` in the working directory."""
    return (Path("runs") / uri.rstrip("/").rsplit("/", 1)[-1]).resolve()


def _filesystem(uri: str) -> tuple[pyarrow.fs.FileSystem, str]:
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))


def _local_files(local_dir: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``local_dir`` (relative path -> size and modification time), leaving out files being
    written (the scheduler's and the tables' temporaries end in ``.tmp``)."""
    files = {}
    for path in local_dir.rglob("*"):
        if path.is_file() and not path.name.endswith(".tmp"):
            stat = path.stat()
            files[path.relative_to(local_dir).as_posix()] = (stat.st_size, stat.st_mtime_ns)
    return files


def _read_manifest(fs: pyarrow.fs.FileSystem, base: str) -> list[str] | None:
    import pyarrow.fs

    if fs.get_file_info(f"{base}/{MANIFEST}").type != pyarrow.fs.FileType.File:
        return None
    with fs.open_input_stream(f"{base}/{MANIFEST}") as source:
        return list(json.loads(source.readall()))


class RunFileSync(Callback):
    """Mirror the driver's run directory to the experiment's URI while the search runs.

    Tune calls a callback's ``on_trial_result`` after the scheduler's, so the scheduler's journal line for a result
    is in the bucket before the next result is processed; a driver killed mid-sync loses at most the result being
    handled, which the trial reports again from its checkpoint on resume. Only files that changed since the last
    sync are uploaded. A file the driver no longer has (the journal, emptied by a snapshot) is deleted in the bucket
    before anything is uploaded, so the bucket never holds an old journal beside a newer snapshot; the manifest is
    written last.

    Args:
        local_dir: the driver's run directory (the trajectory scheduler's ``state_dir``).
        uri: the experiment's directory at the URI (``s3://bucket/prefix/<run name>``).
    """

    def __init__(self, local_dir: Path, uri: str):
        self.local_dir = Path(local_dir)
        self.uri = uri.rstrip("/")
        self._sent: dict[str, tuple[int, int] | None] | None = None  # None: not yet read from the bucket
        self._located: tuple[pyarrow.fs.FileSystem, str] | None = None  # built on the first sync, then kept

    def __getstate__(self) -> dict[str, Any]:
        """Ray pickles its callbacks into ``tuner.pkl``; what was sent is read from the manifest by the next driver,
        which builds its own filesystem (credentials and endpoint are the next driver's)."""
        return {**self.__dict__, "_sent": None, "_located": None}

    def sync(self) -> None:
        """Delete in the bucket what the driver no longer has, upload what changed, then write the manifest."""
        if self._located is None:  # once, not at every result
            self._located = _filesystem(self.uri)
        fs, base = self._located
        if self._sent is None:  # files mirrored by an earlier driver: their stamps are unknown, so upload again
            self._sent = dict.fromkeys(_read_manifest(fs, base) or [])
        present = _local_files(self.local_dir)
        removed = [name for name in self._sent if name not in present]
        for name in removed:
            with contextlib.suppress(FileNotFoundError):  # gone already: a sync that died before its manifest
                fs.delete_file(f"{base}/{name}")
            del self._sent[name]
        changed = [name for name, stamp in present.items() if self._sent.get(name) != stamp]
        for name in changed:
            with fs.open_output_stream(f"{base}/{name}") as out:
                out.write((self.local_dir / name).read_bytes())
            self._sent[name] = present[name]
        if removed or changed:
            with fs.open_output_stream(f"{base}/{MANIFEST}") as out:
                out.write(json.dumps(sorted(self._sent)).encode())

    def setup(self, **info: Any) -> None:
        self.sync()

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.sync()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sync()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.sync()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.sync()


def push_report(local_dir: Path, uri: str) -> None:
    """Upload the run's own files, now with the tables and report :func:`clp_tune.search.finish` wrote, next to
    Ray's at ``uri``; Ray's own files are left as Ray wrote them."""
    RunFileSync(local_dir, uri).sync()


def fetch_run_files(uri: str, local_dir: Path) -> list[str]:
    """Copy the run's own files (those in its manifest: spec, scheduler state, tables, report) from ``uri`` into
    ``local_dir``, replacing what is there; returns their paths, relative to the run.

    Files in ``local_dir`` that the bucket's manifest lacks are removed: a journal left there by a driver that died
    after the bucket's last snapshot would otherwise be replayed onto it. Raises :class:`~clp_tune.spec.SpecError`
    (bad input, exit 2) naming ``uri`` when it is not a clp-tune run (no ``spec.yaml`` there) or cannot be read (no
    such bucket, no credentials, no endpoint).
    """
    with _storage_errors(f"{uri}: cannot read the run"):
        return _fetch(*_parse_uri(uri, uri), uri, local_dir)


def _fetch(fs: pyarrow.fs.FileSystem, base: str, uri: str, local_dir: Path) -> list[str]:
    """:func:`fetch_run_files` from the run at ``base`` on ``fs`` (``uri``, named in its errors)."""
    import pyarrow.fs

    names = _read_manifest(fs, base)
    if names is None or fs.get_file_info(f"{base}/{SPEC_FILE}").type != pyarrow.fs.FileType.File:
        raise SpecError(f"{uri}: not a clp-tune run (no {SPEC_FILE} and no {MANIFEST} there)")
    local_dir.mkdir(parents=True, exist_ok=True)
    for name in _local_files(local_dir):
        if name not in names:
            (local_dir / name).unlink()
    for name in names:
        with fs.open_input_stream(f"{base}/{name}") as source:
            (local_dir / name).parent.mkdir(parents=True, exist_ok=True)
            (local_dir / name).write_bytes(source.readall())
    return names


def _names_in(fs: pyarrow.fs.FileSystem, base: str) -> list[str]:
    """The names in the directory ``base`` of ``fs``; none when there is no such directory."""
    import pyarrow.fs

    return [info.base_name for info in fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))]


def _listing(path: str | Path) -> list[str]:
    """The names in the directory at ``path``, a local path or a URI; none when there is no such directory."""
    if is_uri(path):
        with _storage_errors(f"{path}: cannot list"):
            return _names_in(*_parse_uri(path, str(path)))
    return [entry.name for entry in Path(path).iterdir()] if Path(path).is_dir() else []


def holds_run(path: str | Path) -> bool:
    """Whether the directory at ``path`` (local or a URI) holds a run: our spec, the first file a search writes,
    or Ray Tune's experiment state (which :func:`open_run` needs besides the spec to report on or resume it)."""
    names = _listing(path)
    return SPEC_FILE in names or bool(fnmatch.filter(names, EXPERIMENT_STATE))


def open_run(path: str | Path) -> tuple[str, Path]:
    """The experiment (path or URI) and the local run directory of the run at ``path``, for report and resume.

    A URI's own files are fetched into :func:`local_copy` first. Raises :class:`~clp_tune.spec.SpecError` (exit 2,
    nothing started) naming ``path`` when it is not a clp-tune run: no such directory, no ``spec.yaml``, or no Ray
    Tune experiment state next to it; for a URI, also when it names no bucket or pyarrow cannot read it.
    """
    if is_uri(path):
        experiment = str(path).rstrip("/")
        with _storage_errors(f"RUN_DIR: cannot read {path}"):
            fs, base = _parse_uri(path, "RUN_DIR")  # before a local copy is named after it
        local_dir = local_copy(experiment)
        with _storage_errors(f"{experiment}: cannot read the run"):
            _fetch(fs, base, experiment, local_dir)
            names = _names_in(fs, base)
    else:
        local_dir = Path(path).resolve()
        experiment = str(local_dir)
        if not local_dir.is_dir():
            raise SpecError(f"{path}: no such run directory")
        if not (local_dir / SPEC_FILE).is_file():
            raise SpecError(f"{path}: not a clp-tune run directory (no {SPEC_FILE})")
        names = _listing(local_dir)
    if not fnmatch.filter(names, EXPERIMENT_STATE):
        raise SpecError(f"{path}: not a Ray Tune run (no {EXPERIMENT_STATE} next to {SPEC_FILE}): nothing to read")
    return experiment, local_dir
