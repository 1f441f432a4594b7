"""Shared test setup: Ray without auth or dashboard, and tiny search specs that train real models fast."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import pytest
import yaml

# A token file left in ~/.ray silently switches Ray's token auth on; tests choose explicitly.
os.environ["RAY_AUTH_MODE"] = "disabled"
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ray_local():
    """An embedded Ray for one test module (2 CPUs, no dashboard), shut down afterwards."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield ray
    ray.shutdown()


def ray_pids(ray_tmpdir: str) -> list[int]:
    """Processes of one test's own Ray: they carry its private RAY_TMPDIR (environment or command line).

    Tests that start Ray in subprocesses or as a multi-node cluster clean up by these pids, never with
    ``ray stop``, which would kill every Ray on the machine.
    """
    marker_env = f"RAY_TMPDIR={ray_tmpdir}\0".encode()
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        if marker_env in environ or ray_tmpdir.encode() in cmdline:
            pids.append(int(entry))
    return pids


def reap_ray(ray_tmpdir: str, grace_s: float) -> list[int]:
    """Wait up to ``grace_s`` for one test's Ray processes to exit on their own, then SIGKILL the survivors;
    returns the pids that had to be killed."""
    deadline = time.monotonic() + grace_s
    while ray_pids(ray_tmpdir) and time.monotonic() < deadline:
        time.sleep(0.5)
    survivors = ray_pids(ray_tmpdir)
    for pid in survivors:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return survivors


def tiny_spec(**overrides) -> dict:
    """A real but tiny search: digits + MLP, a few epochs, random search, FIFO."""
    spec = {
        "name": "tiny",
        "dataset": "digits",
        "model": "mlp",
        "epochs": 3,
        "num_samples": 3,
        "searcher": "random",
        "scheduler": "fifo",
        "max_concurrent_trials": 2,
        "resources": {"cpu": 1},
        "statistics": ["grad_norm", "layer_rotation", "tse"],
        "params": {"lr": {"loguniform": [0.001, 0.01]}, "batch_size": 64, "dropout": {"uniform": [0.0, 0.3]}},
    }
    spec.update(overrides)
    return spec


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path
