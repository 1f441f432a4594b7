"""`clp-tune submit` against a real local Ray head (started with the CLI, as on a cluster's head node), with the
run's storage on a real S3-compatible server on 127.0.0.1 (moto's, :mod:`s3_server`), as on a cluster.

The head gets its own temp dir, its own free ports and a marker variable in its environment; teardown ends
exactly the processes that carry the marker (every Ray process inherits it), never `ray stop`, which would
kill every Ray on this machine, other people's test clusters included.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from s3_server import bucket_files, moto_s3, read_text

from clp_tune.submit import submit_search

# Ray's own log-tailing client passes ssl=None to aiohttp; not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:ssl=None is deprecated:DeprecationWarning")

SEARCH_DEADLINE_S = 170  # the whole submit-and-fetch test must stay under 3 minutes
BUCKET = "clp-tune-submit"
SPEC_NAME = "submit_smoke"
SPEC = {
    "name": SPEC_NAME,
    "dataset": "digits",
    "model": "mlp",
    "epochs": 2,
    "num_samples": 2,
    "scheduler": "fifo",
    "searcher": "random",
    "resources": {"cpu": 1},
    "max_concurrent_trials": 2,
    "statistics": "none",
    "params": {"lr": {"loguniform": [0.01, 0.1]}},
}


def _free_ports(count: int) -> list[int]:
    """Distinct free ports (all held open together while choosing, so none is picked twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]


def _pids_with_marker(marker: bytes) -> list[int]:
    pids = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        with contextlib.suppress(OSError):
            if marker in environ.read_bytes().split(b"\0"):
                pids.append(int(environ.parent.name))
    return [pid for pid in pids if pid != os.getpid()]


def _kill_marked(marker: bytes) -> None:
    """SIGTERM every process of this head, then SIGKILL what is left (the GCS server lingers on SIGTERM)."""
    for sig, wait_s in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 5.0)):
        for pid in _pids_with_marker(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait_s
        while _pids_with_marker(marker) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """The S3 server, its bucket, and the AWS variables pointing at it (set in this process too)."""
    with moto_s3(BUCKET, tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


@pytest.fixture(scope="module")
def ray_head(s3: dict[str, str]) -> Iterator[str]:
    """A one-node Ray cluster with the dashboard (Jobs API) on 127.0.0.1; yields the Jobs API address.

    The head is started with the AWS variables of the test's S3 server, as a cluster's nodes get their access to
    the bucket from their machine (an instance profile), not from the client."""
    if shutil.which("ray") is None:
        pytest.fail("the `ray` CLI is not on PATH")
    marker = f"CLP_TUNE_TEST_HEAD={uuid.uuid4().hex}"
    temp_dir = tempfile.mkdtemp(prefix="clp_ray_")  # short: Ray's socket paths must fit in 107 bytes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(RAY_AUTH_MODE="disabled", **s3, **dict([marker.split("=", 1)]))
    gcs, dashboard, client, agent_http, agent_grpc, runtime_env, metrics, node_manager, objects = _free_ports(9)
    command = [
        "ray", "start", "--head", f"--temp-dir={temp_dir}",
        f"--port={gcs}", "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--runtime-env-agent-port={runtime_env}",
        f"--metrics-export-port={metrics}", f"--node-manager-port={node_manager}",
        f"--object-manager-port={objects}", "--num-cpus=2", "--disable-usage-stats",
    ]  # fmt: skip
    try:
        started = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        if started.returncode != 0:
            pytest.fail(f"`ray start --head` failed:\n{started.stdout}\n{started.stderr}")
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        _kill_marked(marker.encode())
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture
def client_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The client talks to the test head only, without auth (set explicitly: a token file may exist here)."""
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.delenv("CLP_TUNE_STORAGE", raising=False)


@pytest.fixture
def spec_dir(tmp_path: Path) -> Path:
    """A working directory holding only the search-space file: that is what gets uploaded."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    return work


@contextlib.contextmanager
def _deadline(seconds: int) -> Iterator[None]:
    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"gave up after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _jobs(address: str):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def test_submits_search_streams_logs_and_fetches_report_from_s3(
    ray_head: str, client_env: None, spec_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage, reports = f"s3://{BUCKET}/clp-tune", tmp_path / "reports"
    with _deadline(SEARCH_DEADLINE_S):
        code = submit_search(
            str(spec_dir / "spec.yaml"), ray_head, storage, working_dir=str(spec_dir), report_dest=str(reports)
        )
    out = capsys.readouterr().out
    assert code == 0, out

    (job,) = [j for j in _jobs(ray_head).list_jobs() if (j.metadata or {}).get("clp_tune_spec") == SPEC_NAME]
    assert job.status.value == "SUCCEEDED"
    run_name = job.submission_id
    assert job.entrypoint.startswith(f"clp-tune run spec.yaml --run-name {run_name} --storage-path ")
    # The whole job log was streamed, once.
    log = _jobs(ray_head).get_job_logs(run_name)
    assert log.strip() and log in out
    assert out.count(log) == 1
    # The run went to the bucket, and its report came back from there to the destination.
    files = bucket_files(f"{storage}/{run_name}")
    for name in ("spec.yaml", "trajectories.parquet", "trials.parquet", "tuner.pkl", "report/index.html"):
        assert name in files, f"{name} not in the bucket: {sorted(files)}"
    report = reports / SPEC_NAME / "index.html"
    assert report.is_file()
    assert report.read_text() == read_text(f"{storage}/{run_name}/report/index.html")
    assert f"report: {report}" in out


def test_ctrl_c_stops_the_job(
    ray_head: str, client_env: None, spec_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import clp_tune.submit

    submitted: list[str] = []

    def interrupted(client, job_id: str, poll_seconds: float, out) -> None:
        submitted.append(job_id)
        raise KeyboardInterrupt

    monkeypatch.setattr(clp_tune.submit, "_stream_logs", interrupted)
    code = submit_search(str(spec_dir / "spec.yaml"), ray_head, str(tmp_path / "storage"), working_dir=str(spec_dir))
    assert code == 1
    client = _jobs(ray_head)
    deadline = time.monotonic() + 30
    while not client.get_job_status(submitted[0]).is_terminal() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(submitted[0]).value == "STOPPED"


def test_storage_is_required(client_env: None, spec_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = submit_search(str(spec_dir / "spec.yaml"), "http://127.0.0.1:1", None, working_dir=str(spec_dir))
    assert code == 2
    assert "CLP_TUNE_STORAGE" in capsys.readouterr().err


def test_spec_must_be_uploaded(client_env: None, tmp_path: Path, spec_dir: Path) -> None:
    other = tmp_path / "elsewhere"
    other.mkdir()
    code = submit_search(str(spec_dir / "spec.yaml"), "http://127.0.0.1:1", "s3://bucket/x", working_dir=str(other))
    assert code == 2


def test_unreachable_address_is_explained(
    client_env: None, spec_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (port,) = _free_ports(1)  # nothing listens there
    monkeypatch.setenv("CLP_TUNE_STORAGE", "s3://bucket/clp-tune")
    code = submit_search(str(spec_dir / "spec.yaml"), f"http://127.0.0.1:{port}", None, working_dir=str(spec_dir))
    assert code == 1
    err = capsys.readouterr().err
    assert f"127.0.0.1:{port}" in err and "ray dashboard cluster.yaml" in err


def test_broken_log_stream_falls_back_to_polling() -> None:
    """A dropped websocket loses and repeats nothing: polling continues from the last printed character."""
    import io

    from clp_tune.submit import _stream_logs

    class Status:
        def __init__(self, terminal: bool) -> None:
            self.terminal = terminal

        def is_terminal(self) -> bool:
            return self.terminal

    class FlakyClient:
        polls = 0

        async def tail_job_logs(self, job_id: str):
            yield "line 1\n"
            yield "line 2\n"
            raise RuntimeError("WebSocket connection closed unexpectedly")

        def get_job_status(self, job_id: str) -> Status:
            self.polls += 1
            return Status(terminal=self.polls >= 2)

        def get_job_logs(self, job_id: str) -> str:
            return "line 1\nline 2\nline 3\n" + ("line 4\n" if self.polls >= 2 else "")

    out = io.StringIO()
    _stream_logs(FlakyClient(), "job", 0.01, out)
    assert out.getvalue() == "line 1\nline 2\nline 3\nline 4\n"
