"""A real S3-compatible server on 127.0.0.1 for the tests: moto's standalone server (``moto[server]``), one process
on a free port, talked to through the standard AWS environment variables that pyarrow, boto3 and Ray all read.

Nothing leaves the machine: the endpoint is loopback, and the credentials are moto's dummies.
"""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from clp_tune.environment import environment

START_TIMEOUT_S = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str, log: Path) -> Iterator[dict[str, str]]:
    """Start the server, create ``bucket``, yield the AWS environment variables that point at it; stop it after.

    The variables are also set in this process (and restored after), so pyarrow here reads the same bucket as the
    ``clp-tune`` subprocesses and Ray workers that inherit them.
    """
    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    env = {
        "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true",
    }  # fmt: skip
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if server.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"moto's S3 server did not start on {endpoint}:\n{log.read_text()}") from None
                time.sleep(0.2)
        with environment(**env):
            boto3.client("s3", endpoint_url=endpoint, region_name=env["AWS_REGION"]).create_bucket(Bucket=bucket)
            yield env
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def bucket_files(uri: str) -> dict[str, int]:
    """Every file under ``uri`` (path relative to it -> size), read from the server."""
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(uri)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(base, recursive=True, allow_not_found=True))
    return {i.path[len(base) + 1 :]: i.size for i in infos if i.type == pyarrow.fs.FileType.File}


def read_text(uri: str) -> str | None:
    """The text of the object at ``uri``; None when there is none."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    try:
        with fs.open_input_stream(path) as source:
            return source.readall().decode()
    except (FileNotFoundError, OSError):
        return None
