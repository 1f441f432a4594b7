"""Submit a search to a running Ray cluster through the Jobs API and bring its report back.

Why the Jobs API and not ``ray.init(address=...)`` from the laptop: the driver then runs on the head, next to
the trials, so a closed laptop or a dropped connection does not kill the search; the client only uploads the
code, follows the logs and fetches the report. The report comes back through shared storage (``s3://...``),
the one place that both the cluster and the client can reach.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import TextIO

from clp_tune.environment import environment
from clp_tune.vocabulary import REPORT_DIR, REPORT_PAGE

STORAGE_ENV = "CLP_TUNE_STORAGE"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2

# Never uploaded: earlier results, reports, git history and test/build leftovers can be large, and the job
# writes its own results to shared storage anyway.
UPLOAD_EXCLUDES = [
    ".git/",
    "runs/",
    "reports/",
    "test-artifacts/",
    "build/",
    ".venv/",
    "__pycache__/",
    "*.egg-info/",
    ".pytest_cache/",
    ".ruff_cache/",
]

# Ray's client silently prefers these over an explicit address; an explicit --address must win.
_ADDRESS_ENV = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def submit_search(
    spec_path: str,
    address: str,
    storage_path: str | None,
    working_dir: str = ".",
    poll_seconds: float = 1.0,
    report_dest: str = "reports",
) -> int:
    """Run ``clp-tune run SPEC`` as a Ray job on the cluster at ``address`` and fetch its report.

    The working directory is uploaded as the job's ``working_dir`` (without ``UPLOAD_EXCLUDES``), so the
    cluster runs exactly the local code and ``spec_path`` must lie inside it. The run is written to
    ``<storage_path>/<run name>/`` -- storage every node can reach (``s3://...``; a local path only works
    for a single-machine cluster) -- defaulting to ``$CLP_TUNE_STORAGE``. The job's logs are printed as
    they arrive; when it succeeds, ``<storage_path>/<run name>/report/`` is copied to
    ``<report_dest>/<spec name>/``. Ctrl-C stops the job on the cluster before returning.

    Args:
        spec_path: search-space YAML file inside ``working_dir``.
        address: the Jobs API (dashboard) address, e.g. ``http://127.0.0.1:8265`` through
            ``ray dashboard cluster.yaml``. Token authentication uses ``RAY_AUTH_MODE=token`` and the token
            from ``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH`` / ``~/.ray/auth_token``, as Ray reads them.
        storage_path: shared storage URI or directory for the run; None reads ``$CLP_TUNE_STORAGE``.
        working_dir: directory uploaded to the cluster (the project's root).
        poll_seconds: status polling interval once live log streaming has ended or failed.
        report_dest: local directory that receives ``<spec name>/index.html``.

    Returns:
        0 when the job succeeded and the report was fetched, 1 when the cluster was unreachable, the job
        failed or was stopped, or the report is missing, 2 for bad input (no storage, spec outside
        ``working_dir``).
    """
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobStatus

    from clp_tune.remote import check_storage
    from clp_tune.spec import SpecError, load_spec

    storage = storage_path or os.environ.get(STORAGE_ENV)
    if not storage:
        return _error(
            f"no storage for the run: pass --storage-path s3://YOUR-BUCKET/clp-tune or set {STORAGE_ENV}. "
            "A search on a cluster writes its results to storage that every node and this machine can reach.",
            EXIT_BAD_INPUT,
        )
    try:
        check_storage(storage)
    except SpecError as error:
        return _error(str(error), EXIT_BAD_INPUT)
    storage = _absolute(storage)
    root = Path(working_dir).resolve()
    spec_file = Path(spec_path).resolve()
    if not spec_file.is_relative_to(root):
        return _error(
            f"{spec_path} is outside the working directory {root}, so it would not be uploaded", EXIT_BAD_INPUT
        )
    spec_name = load_spec(spec_file).name
    run_name = f"{spec_name}-{datetime.now():%Y%m%d-%H%M%S}-{uuid.uuid4().hex[:6]}"
    entrypoint = shlex.join(
        ["clp-tune", "run", spec_file.relative_to(root).as_posix(), "--run-name", run_name, "--storage-path", storage]
    )

    # OSError covers requests' and aiohttp's network errors; Ray reports refused requests as RuntimeError.
    cluster_errors = (OSError, RuntimeError, ValueError, AuthenticationError)
    try:
        client = _connect(address)
        job_id = client.submit_job(
            entrypoint=entrypoint,
            submission_id=run_name,
            runtime_env={"working_dir": str(root), "excludes": UPLOAD_EXCLUDES},
            metadata={"clp_tune_spec": spec_name, "clp_tune_storage": storage},
        )
    except cluster_errors as error:
        return _error(f"cannot submit to the Ray cluster at {address}: {error}", EXIT_FAILED)
    print(f"submitted job {job_id}: {entrypoint}", flush=True)

    try:
        _stream_logs(client, job_id, poll_seconds, sys.stdout)
        info = client.get_job_info(job_id)
    except KeyboardInterrupt:
        return _stop(client, job_id)
    except cluster_errors as error:
        return _error(
            f"lost the cluster at {address} ({error}); job {job_id} may still be running: "
            f"`ray job status {job_id}` / `ray job stop {job_id}` with RAY_ADDRESS={address}",
            EXIT_FAILED,
        )
    if info.status != JobStatus.SUCCEEDED:
        return _error(f"job {job_id} ended {info.status.value}: {info.message or 'see the log above'}", EXIT_FAILED)
    return _fetch_report(f"{storage}/{run_name}/{REPORT_DIR}", Path(report_dest) / spec_name)


def _stop(client, job_id: str) -> int:
    """Ctrl-C: stop the job on the cluster too, so no GPUs keep running for a search nobody follows."""
    print(f"\ninterrupted: stopping job {job_id}", file=sys.stderr, flush=True)
    try:
        client.stop_job(job_id)
    except Exception as error:  # the cluster may be what failed; say so instead of a traceback
        return _error(f"could not stop job {job_id} ({error}); stop it with `ray job stop {job_id}`", EXIT_FAILED)
    return EXIT_FAILED


def _error(message: str, code: int) -> int:
    print(f"error: {message}", file=sys.stderr, flush=True)
    return code


def _absolute(storage: str) -> str:
    """A local storage path is made absolute: the job runs in its own directory on the cluster."""
    return storage if "://" in storage else str(Path(storage).expanduser().resolve())


def _connect(address: str):
    """A Jobs API client for ``address``; raises ConnectionError with a hint when nothing answers there."""
    from ray.job_submission import JobSubmissionClient

    try:
        with environment(**dict.fromkeys(_ADDRESS_ENV)):
            return JobSubmissionClient(address)
    except ConnectionError:
        raise ConnectionError(
            "nothing answers there. Is the cluster up, and is `ray dashboard cluster.yaml` forwarding the "
            "dashboard port to this machine?"
        ) from None


def _stream_logs(client, job_id: str, poll_seconds: float, out: TextIO) -> None:
    """Print the job's log as it grows, until the job has ended and its whole log has been printed.

    The log is followed live over a websocket; if that breaks (a flaky port-forward), polling the full
    log every ``poll_seconds`` takes over from the last printed character. Polling also runs once after
    a clean end, which catches anything the websocket missed.
    """
    printed = 0

    async def tail() -> None:
        nonlocal printed
        async for chunk in client.tail_job_logs(job_id):
            out.write(chunk)
            out.flush()
            printed += len(chunk)

    try:
        asyncio.run(tail())
    except (RuntimeError, OSError) as error:  # aiohttp's errors derive from OSError or RuntimeError
        print(f"(log streaming interrupted: {error}; polling instead)", file=sys.stderr, flush=True)
    while True:
        done = client.get_job_status(job_id).is_terminal()
        logs = client.get_job_logs(job_id)
        out.write(logs[printed:])
        out.flush()
        printed = len(logs)
        if done:
            return
        time.sleep(poll_seconds)


def _fetch_report(source: str, dest: Path) -> int:
    """Copy the run's report directory from shared storage (any ``pyarrow.fs`` URI or local path)."""
    import pyarrow.fs

    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(source)
        if fs.get_file_info(f"{path}/{REPORT_PAGE}").type != pyarrow.fs.FileType.File:
            return _error(f"the job succeeded but {source}/{REPORT_PAGE} does not exist", EXIT_FAILED)
        dest.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(
            path, str(dest.resolve()), source_filesystem=fs, destination_filesystem=pyarrow.fs.LocalFileSystem()
        )
    except OSError as error:  # e.g. no S3 credentials on this machine
        return _error(f"the job succeeded but its report could not be fetched from {source}: {error}", EXIT_FAILED)
    print(f"report: {dest / REPORT_PAGE}", flush=True)
    return EXIT_OK
