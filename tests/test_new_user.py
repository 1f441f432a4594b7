"""What a new user's first specs run into, end to end under real Ray Tune: the search either runs and says what
it did, or stops with one line saying why.

* a spec with nothing searched repeats the recipe over seeds (Optuna alone would refuse an empty space);
* a search in which no trial finished exits 1 from ``clp-tune run`` and ``clp-tune resume``, tables and report
  still written;
* on a cluster that cannot hold one trial now, one line says what the search waits for;
* the training-split sizes spec validation relies on match the real splits;
* ``clp-tune report`` of a finished run leaves the bank library alone, and ``clp-tune run`` refuses that run's
  ``--run-name``.

The CLI runs in a subprocess with its own embedded Ray (``--num-cpus 2``), told apart from any other Ray on this
machine by a private ``RAY_TMPDIR`` and cleaned up by its pids; those tests come first, before this module's
``ray_local`` starts, so the two never share the 2 cores.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import REPO, reap_ray, tiny_spec, write_spec

from clp_tune.search import run_search
from clp_tune.spec import parse_spec

CLI_TIMEOUT_S = 300  # Ray alone takes ~30 s to start on the busy 2-core machine


def _truncated_npz() -> bytes:
    """An mnist1d cache file cut short, as a partial copy or a full disk leaves it: a zip without its directory."""
    buffer = io.BytesIO()
    np.savez(buffer, x=np.zeros((10, 40)), y=np.zeros(10), x_test=np.zeros((4, 40)), y_test=np.zeros(4))
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


def _clp_tune(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "clp_tune.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=CLI_TIMEOUT_S)  # fmt: skip


def _our_error_lines(stderr: str) -> list[str]:
    """clp-tune's own error lines (Ray logs the trials' tracebacks to stderr as well)."""
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def test_run_and_resume_exit_1_when_no_trial_finished(tmp_path: Path) -> None:
    """Every trial errors, for a real reason a spec cannot see: the dataset cache (CLP_TUNE_DATA) holds a truncated
    mnist1d.npz, so each trial fails loading its data inside its Ray worker. The spec itself is valid, so
    validation passes and the search runs; it must end with exit 1 and one line giving the counts by status and
    the first error's reason, while trials.parquet and the report are still written with the errors in them.
    Resuming that run (errored trials are not retried) ends the same way."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "mnist1d.npz").write_bytes(_truncated_npz())
    with pytest.raises(zipfile.BadZipFile):  # the cache really is unreadable, the way a trial will read it
        np.load(data_dir / "mnist1d.npz")
    spec = tiny_spec(name="broken-cache", dataset="mnist1d", epochs=2, num_samples=2, max_failures=0,
                     statistics=["tse"], params={"lr": {"loguniform": [0.001, 0.01]}, "batch_size": 64})  # fmt: skip
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    ray_tmpdir = tempfile.mkdtemp(prefix="clp-nu-", dir="/tmp")  # short: socket paths must stay < 108 bytes
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmpdir, CLP_TUNE_DATA=str(data_dir))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    run_dir = tmp_path / "runs" / "r"
    reports = tmp_path / "reports"
    try:
        run = _clp_tune(["run", str(spec_path), "--storage-path", str(tmp_path / "runs"), "--run-name", "r",
                         "--num-cpus", "2", "--reports-dir", str(reports)], tmp_path, env)  # fmt: skip
        reap_ray(ray_tmpdir, grace_s=20.0)
        resume = _clp_tune(["resume", str(run_dir), "--num-cpus", "2", "--reports-dir", str(reports)], tmp_path, env)
    finally:
        reap_ray(ray_tmpdir, grace_s=10.0)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)

    for command, result in (("run", run), ("resume", resume)):
        assert result.returncode == 1, f"`clp-tune {command}` exited {result.returncode}\n{result.stderr[-3000:]}"
        lines = _our_error_lines(result.stderr)
        assert len(lines) == 1, f"`clp-tune {command}`: {lines}\n{result.stderr[-3000:]}"
        assert lines[0].startswith("error: no trial finished (2 error of 2); first error: "), lines[0]
        assert "BadZipFile" in lines[0] and "trials.parquet" in lines[0], lines[0]
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert list(trials.status) == ["error", "error"]
    assert trials.error.str.contains("BadZipFile").all()
    html = (reports / "broken-cache" / "index.html").read_text()
    assert "BadZipFile" in html


def test_failed_search_reason_counts_every_status(tmp_path: Path) -> None:
    """Only a finished trial makes a search a success: stopped, diverged, errored and unfinished do not."""
    from clp_tune.search import failed_search_reason
    from clp_tune.store import write_table
    from clp_tune.vocabulary import TRIALS_FILE

    frame = pd.DataFrame(
        {"status": ["diverged", "error", "stopped", "error"], "error": [None, "ValueError: a\nb", None, "x"]}
    )
    write_table(frame, tmp_path / TRIALS_FILE)
    reason = failed_search_reason(tmp_path)
    assert reason is not None and "\n" not in reason
    assert reason.startswith("no trial finished (2 error, 1 diverged, 1 stopped of 4); first error: ValueError: a b")
    write_table(pd.concat([frame, pd.DataFrame({"status": ["finished"], "error": [None]})]), tmp_path / TRIALS_FILE)
    assert failed_search_reason(tmp_path) is None


def test_train_sizes_match_the_real_splits() -> None:
    """Validation checks high_loss_q x batch_size against TRAIN_SIZES without loading data; they must be right."""
    from clp_tune.trial.data import load_dataset
    from clp_tune.vocabulary import DATASET_SHAPES, TRAIN_SIZES

    for name in ("mnist1d", "digits", "tabular"):  # the ones that need no download
        splits = load_dataset(name)
        assert TRAIN_SIZES[name] == len(splits.y_train), name
        assert splits.input_shape == DATASET_SHAPES[name], name


def test_nothing_searched_repeats_the_recipe_over_seeds(ray_local, tmp_path: Path) -> None:
    """All params fixed and searcher optuna: num_samples finished trials with seeds search_seed.., not a crash
    ("no search space has been defined")."""
    spec = parse_spec(tiny_spec(name="repeats", searcher="optuna", num_samples=3, search_seed=7, epochs=2,
                                statistics=["tse"], params={"lr": 0.005, "batch_size": 64}))  # fmt: skip
    paths = run_search(spec, storage_path=tmp_path / "runs", run_name="repeats", reports_dir=tmp_path / "reports")
    trials = pd.read_parquet(paths.run_dir / "trials.parquet")
    assert list(trials.status) == ["finished"] * 3
    rows = pd.read_parquet(paths.run_dir / "trajectories.parquet")
    assert sorted(rows.groupby("trial_id")["config/seed"].first()) == [7, 8, 9]
    assert (rows["config/lr"] == 0.005).all()
    from clp_tune.search import failed_search_reason

    assert failed_search_reason(paths.run_dir) is None
    assert (paths.report_dir / "index.html").exists()


def test_cluster_that_cannot_fit_a_trial_says_what_it_waits_for(ray_local) -> None:
    """On a running Ray (here the 2-CPU, GPU-less ray_local standing in for a cluster), a trial no node can hold
    gets one line (per-trial needs, what the cluster has, the autoscaler) instead of a silent wait."""
    from clp_tune.search import cluster_fit_warning, ensure_ray_for

    cpus = int(ray_local.cluster_resources()["CPU"])
    big = parse_spec(tiny_spec(resources={"cpu": cpus + 2}))
    line = cluster_fit_warning(big)
    assert line is not None and "\n" not in line
    assert f"each trial needs {cpus + 2} CPU and 0 GPU on one node" in line
    assert f"at most {cpus} CPU" in line and "autoscaler" in line
    assert ensure_ray_for(big) == line  # Ray already running: treated as a cluster, never rejected
    assert cluster_fit_warning(parse_spec(tiny_spec(resources={"cpu": 1}))) is None
    if not ray_local.cluster_resources().get("GPU"):
        gpu_line = cluster_fit_warning(parse_spec(tiny_spec(resources={"cpu": 1, "gpu": 0.5})))
        assert gpu_line is not None and "needs 1 CPU and 0.5 GPU" in gpu_line and "0 GPU each" in gpu_line


def test_report_leaves_the_library_alone_and_run_refuses_a_used_run_name(
    ray_local, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A finished run, its bank in the library (CLP_TUNE_BANKS) as a search leaves it; the user removes that bank.
    Before, ``clp-tune report`` of the run quietly put it back (only ``run`` and ``resume`` add a run's bank), and
    ``clp-tune run`` with the same ``--run-name`` ran a second search into the same directory (exit 0)."""
    library = tmp_path / "banks"
    monkeypatch.setenv("CLP_TUNE_BANKS", str(library))
    spec = tiny_spec(name="again", epochs=2, num_samples=2, statistics=["tse"], params={"lr": 0.005, "batch_size": 64})
    paths = run_search(parse_spec(spec), storage_path=tmp_path / "runs", run_name="again",
                       reports_dir=tmp_path / "reports")  # fmt: skip
    assert paths.library_bank == library / "again.parquet" and paths.library_bank.is_file()  # run grows it
    run_dir = tmp_path / "runs" / "again"
    states = sorted(path.name for path in run_dir.glob("experiment_state-*.json"))
    assert states, f"no experiment state in {run_dir}: not a finished run"

    ray_tmpdir = tempfile.mkdtemp(prefix="clp-nu-", dir="/tmp")  # a Ray started by the CLI would leave its session
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmpdir, CLP_TUNE_BANKS=str(library))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        removed = _clp_tune(["bank", "remove", "again"], tmp_path, env)
        assert removed.returncode == 0 and not (library / "again.parquet").exists(), removed.stderr
        (run_dir / "trials.parquet").unlink()
        shutil.rmtree(tmp_path / "reports")
        report = _clp_tune(["report", "runs/again", "--reports-dir", "reports"], tmp_path, env)
        assert report.returncode == 0, report.stderr[-3000:]
        assert (run_dir / "trials.parquet").is_file() and (tmp_path / "reports" / "again" / "index.html").is_file()
        assert sorted(path.name for path in library.iterdir()) == [], "report added the run's bank back"
        assert "bank library" not in report.stdout, report.stdout

        write_spec(tmp_path / "spec.yaml", spec)
        again = _clp_tune(["run", "spec.yaml", "--storage-path", "runs", "--run-name", "again", "--num-cpus", "2",
                           "--reports-dir", "reports"], tmp_path, env)  # fmt: skip
        started = sorted(os.listdir(ray_tmpdir))
    finally:
        reap_ray(ray_tmpdir, grace_s=10.0)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert again.returncode == 2, f"exited {again.returncode}\n{again.stderr[-3000:]}"
    assert again.stderr.strip().splitlines() == [
        "error: --run-name again: runs/again already holds a run; continue it with clp-tune resume runs/again, "
        "or choose another --run-name"
    ], again.stderr
    assert started == [], f"Ray started: {started}"
    assert sorted(path.name for path in run_dir.glob("experiment_state-*.json")) == states
