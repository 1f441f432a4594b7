"""A worker node dies mid-trial on a local multi-node Ray cluster; the search still ends with every trial finished.

The cluster (a head with no CPUs, two 1-CPU worker nodes) runs on this machine with a private ``RAY_TMPDIR``, so
it neither registers itself as "the current cluster" for other Ray users here nor mixes with their processes. A
background thread waits until a trial has reported two epochs, finds the node whose raylet started that trial's
worker process, and kills the node without grace. Ray must retry the trial on the surviving node from its last
checkpoint (``max_failures``), not from epoch 1.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import reap_ray, tiny_spec

from clp_tune.search import run_search
from clp_tune.spec import parse_spec

EPOCHS = 10
KILL_AFTER_EPOCHS = 2
WATCH_TIMEOUT_S = 150


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _node_running(cluster, pid: int):
    """The worker node whose raylet is an ancestor of process ``pid`` (all nodes share 127.0.0.1)."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in cluster.worker_nodes}
    ancestor = pid
    for _ in range(8):
        ancestor = _parent(ancestor)
        if ancestor is None or ancestor <= 1:
            return None
        if ancestor in raylets:
            return raylets[ancestor]
    return None


def _result_rows(run_dir: Path) -> dict[str, list[dict]]:
    rows = {}
    for path in run_dir.glob("*/result.json"):
        try:
            parsed = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        except (OSError, json.JSONDecodeError):
            continue  # caught mid-write; read again on the next poll
        if parsed:
            rows[parsed[0]["trial_id"]] = parsed
    return rows


class NodeKiller(threading.Thread):
    """Kills the node running the first trial that reported KILL_AFTER_EPOCHS epochs (and has not finished)."""

    def __init__(self, cluster, run_dir: Path) -> None:
        super().__init__(daemon=True)
        self.cluster, self.run_dir = cluster, run_dir
        self.killed: dict | None = None
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        try:
            deadline = time.monotonic() + WATCH_TIMEOUT_S
            while not self.stop.is_set() and time.monotonic() < deadline:
                for trial_id, rows in _result_rows(self.run_dir).items():
                    last = rows[-1]
                    if not KILL_AFTER_EPOCHS <= last["epoch"] < EPOCHS:
                        continue
                    node = _node_running(self.cluster, int(last["pid"]))
                    if node is None:
                        continue  # worker already gone (trial just ended) — try the next poll
                    self.cluster.remove_node(node, allow_graceful=False)
                    self.killed = {"trial_id": trial_id, "epoch": last["epoch"], "pid": last["pid"]}
                    return
                self.stop.wait(0.2)
        except BaseException as error:  # surfaced in the test's thread
            self.error = error


@pytest.fixture
def cluster(monkeypatch):
    import ray
    from ray.cluster_utils import Cluster

    if ray.is_initialized():
        ray.shutdown()
    # Short (Unix socket paths) and private: keeps /tmp/ray/ray_current_cluster and other users' Ray untouched.
    ray_tmpdir = tempfile.mkdtemp(prefix="clp-nl-", dir="/tmp")
    monkeypatch.setenv("RAY_TMPDIR", ray_tmpdir)
    local = None
    try:
        local = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
        for _ in range(2):
            local.add_node(num_cpus=1)
        ray.init(address=local.address)
        local.wait_for_nodes()
        yield local
    finally:
        ray.shutdown()
        if local is not None:
            local.shutdown()
        reap_ray(ray_tmpdir, grace_s=10.0)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)


def test_trial_survives_loss_of_its_node(cluster, tmp_path: Path) -> None:
    from ray.tune import ExperimentAnalysis

    spec = parse_spec(
        tiny_spec(name="nodeloss", epochs=EPOCHS, num_samples=2, max_failures=2, statistics=["tse"],
                  params={"lr": {"loguniform": [0.001, 0.01]}, "batch_size": 4})
    )  # fmt: skip
    run_dir = tmp_path / "runs" / "nl"
    killer = NodeKiller(cluster, run_dir)
    killer.start()
    try:
        paths = run_search(spec, storage_path=tmp_path / "runs", run_name="nl", reports_dir=tmp_path / "reports")
    finally:
        killer.stop.set()
        killer.join(timeout=30)
    assert killer.error is None, f"the node killer failed: {killer.error!r}"
    assert killer.killed is not None, "no node was killed: no trial was seen mid-way on a worker node"
    killed = killer.killed["trial_id"]

    trials = pd.read_parquet(paths.run_dir / "trials.parquet")
    assert len(trials) == 2 and (trials.status == "finished").all(), trials[["trial_id", "status", "epochs", "error"]]
    epochs = pd.read_parquet(paths.run_dir / "trajectories.parquet").groupby("trial_id").epoch.apply(list).to_dict()
    assert epochs == {t: list(range(1, EPOCHS + 1)) for t in trials.trial_id}, epochs

    failures = {t.trial_id: t.run_metadata.num_failures for t in ExperimentAnalysis(str(run_dir)).trials}
    assert failures[killed] >= 1, f"Ray recorded no failure of {killed}: {failures} (killed: {killer.killed})"

    # Ray's own log of the killed trial: one run from epoch 1, then a restore that continues from the checkpoint.
    # Each report carries its checkpoint, but the node can die after a result was logged and before its checkpoint
    # was registered: then that one epoch is trained again (at-least-once), which the store deduplicates.
    rows = _result_rows(run_dir)[killed]
    seen = [row["epoch"] for row in rows]
    restarts = [i for i, row in enumerate(rows) if row["iterations_since_restore"] == 1]
    assert restarts[0] == 0 and seen[0] == 1 and len(restarts) >= 2, f"no restore seen in {killed}'s rows: {seen}"
    assert seen[-1] == EPOCHS and sorted(set(seen)) == list(range(1, EPOCHS + 1)), seen
    for start, end in zip(restarts, restarts[1:] + [len(seen)], strict=True):  # each run counts up by one
        assert seen[start:end] == list(range(seen[start], seen[end - 1] + 1)), seen
    for i in restarts[1:]:  # a restore neither skips an epoch nor starts over: at most the in-flight epoch again
        assert killer.killed["epoch"] <= seen[i] <= seen[i - 1] + 1, (
            f"{killed} was killed after epoch {killer.killed['epoch']} but restarted at epoch {seen[i]}: {seen}"
        )
    assert rows[-1]["pid"] != killer.killed["pid"], "the killed trial finished in the process that was killed"
