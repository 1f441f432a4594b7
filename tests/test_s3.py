"""A search on S3 for real: a local S3-compatible server (moto's, on 127.0.0.1), a real trajectory-scheduled search
writing to ``s3://``, its driver SIGKILLed mid-search, ``clp-tune resume s3://...`` continuing it with the
driver's local copy deleted (so everything comes from the bucket), and ``clp-tune report s3://...`` rebuilding the
report from the bucket alone.

The search is sequential (``max_concurrent_trials: 1``) and seeded, and the same search runs uninterrupted beside
it: the resumed search must take exactly the decisions the uninterrupted one took, trial by trial and epoch by
epoch. That only holds if the trajectory scheduler's state was mirrored to the bucket while the search ran and
reloaded from there on resume (Ray rebuilds schedulers empty, ray-project/ray#30838).

The scheduler's prior is one shipped bank (the digits MLP's), not the default nine: each of the three drivers
builds its prior, and the nine banks' examples held each one's first result for many seconds on 2 busy cores; the
state that must come back from the bucket is the same either way. A real run with the default prior is
``test_scheduler.py``'s divergence test.
"""

from __future__ import annotations

import fnmatch
import io
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow.fs
import pyarrow.parquet as pq
import pytest
from conftest import reap_ray, tiny_spec, write_spec
from driver_kill import cli_env, clp_tune, kill_at, log_tail, trial_states
from s3_server import bucket_files, moto_s3, read_text

from clp_tune.stopping.bank_library import SUITE
from clp_tune.vocabulary import REPORT_DIR, REPORT_PAGE, SPEC_FILE, TRAJECTORIES_FILE, TRIALS_FILE

BUCKET = "clp-tune-test"
EPOCHS = 6
TRIALS = 4
RUN_TIMEOUT_S = 180  # the two searches run side by side on 2 cores
RESUME_TIMEOUT_S = 200
#: Decision columns compared between the resumed and the uninterrupted search (floats to 1e-9).
COMPARED = ["epoch", "action", "reason", "pred_mean", "pred_std", "threshold", "p_beat"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    with moto_s3(BUCKET, tmp_path_factory.mktemp("moto") / "moto.log") as env:
        yield env


def _table(uri: str) -> pd.DataFrame:
    """A Parquet table (one file or a directory of parts, in order) read from the bucket."""
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.File:
        with fs.open_input_stream(path) as source:
            return pd.read_parquet(io.BytesIO(source.readall()))
    parts = sorted(info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(path)) if info.size)
    return pd.concat([pq.read_table(part, filesystem=fs).to_pandas() for part in parts], ignore_index=True)


def _results(uri: str) -> dict[str, list[int]] | None:
    """Each trial's reported epochs, from its result.json in the bucket; None while one is caught half-written."""
    epochs = {}
    for name in fnmatch.filter(bucket_files(uri), "*/result.json"):
        text = read_text(f"{uri}/{name}") or ""
        if text and not text.endswith("\n"):
            return None
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        if rows:
            epochs[rows[0]["trial_id"]] = [int(row["epoch"]) for row in rows]
    return epochs


def _kill_point(uri: str) -> tuple[dict[str, tuple[str, int]], dict[str, list[int]]] | None:
    """One trial ended and another is running past its first checkpointed epoch, in the bucket's experiment state,
    with every result.json in the bucket holding at least the epochs that state claims."""
    names = sorted(fnmatch.filter(bucket_files(uri), "experiment_state-*.json"))
    state = trial_states(read_text(f"{uri}/{names[-1]}")) if names else None
    results = _results(uri) if state else None
    if not state or results is None or any(len(results.get(t, [])) < epoch for t, (_, epoch) in state.items()):
        return None
    ended = [t for t, (status, _) in state.items() if status == "TERMINATED"]
    running = [t for t, (status, epoch) in state.items() if status == "RUNNING" and 1 <= epoch < EPOCHS]
    return (state, results) if ended and running else None


def _decisions(uri: str, into: Path) -> pd.DataFrame:
    """Every decision the trajectory scheduler's state in the bucket holds (its snapshot, decision table and
    journal, however they are split), read as the scheduler reloads them."""
    from clp_tune.remote import fetch_run_files
    from clp_tune.stopping.persistence import StateStore

    fetch_run_files(uri, into)
    state = StateStore(into).load()
    assert state is not None, f"no trajectory-scheduler state in {uri}: {sorted(bucket_files(uri))}"
    return state.decisions_frame()


def _by_index(frame: pd.DataFrame) -> pd.DataFrame:
    """Decisions keyed by the trial's index in the search (Ray's trial ids differ between two runs), each epoch's
    latest decision of each action (a resumed trial reports the epochs after its checkpoint again)."""
    frame = frame.assign(trial=frame["trial_id"].str.rsplit("_", n=1).str[1])
    frame = frame.drop_duplicates(["trial", "epoch", "action"], keep="last")
    return frame[["trial", *COMPARED]].sort_values(["trial", "epoch", "action"]).reset_index(drop=True)


def test_search_on_s3_survives_its_driver_and_resumes_exactly(s3: dict[str, str], tmp_path: Path) -> None:
    spec = tiny_spec(
        name="s3resume", epochs=EPOCHS, num_samples=TRIALS, max_concurrent_trials=1, statistics=["tse"],
        scheduler={"type": "trajectory", "bank": str(SUITE["digits_mlp_adamw_30"].path)},
        params={"lr": {"loguniform": [0.0003, 0.3]}, "batch_size": 4},
    )  # fmt: skip
    spec_path = write_spec(tmp_path / "spec.yaml", spec)
    storage = f"s3://{BUCKET}/runs"
    killed_uri, reference_uri = f"{storage}/killed", f"{storage}/reference"
    work, reference_work = tmp_path / "work", tmp_path / "reference"
    work.mkdir()
    reference_work.mkdir()
    tmpdirs = [tempfile.mkdtemp(prefix="clp-s3-", dir="/tmp") for _ in range(2)]  # short: Ray's socket paths
    env, reference_env = cli_env(tmpdirs[0], **s3), cli_env(tmpdirs[1], **s3)

    def run(name: str) -> list[str]:
        return clp_tune("run", str(spec_path), "--storage-path", storage, "--run-name", name, "--num-cpus", "2",
                        "--reports-dir", "reports")  # fmt: skip

    reference_log = tmp_path / "reference.log"
    try:
        with reference_log.open("w") as out:
            reference = subprocess.Popen(run("reference"), cwd=reference_work, env=reference_env, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        state, before = kill_at(run("killed"), work, env, tmp_path / "run.log", lambda: _kill_point(killed_uri),
                                RUN_TIMEOUT_S)  # fmt: skip
        reap_ray(tmpdirs[0], grace_s=20.0)
        shutil.rmtree(work / "runs")  # the driver's disk is gone: resume must find everything in the bucket,
        work = tmp_path / "new-driver"  # and runs elsewhere, where the scheduler Ray pickled does not look
        work.mkdir()
        decided_before = _decisions(killed_uri, tmp_path / "at-kill")

        log = tmp_path / "resume.log"
        with log.open("w") as out:
            resumed = subprocess.run(
                clp_tune("resume", killed_uri, "--num-cpus", "2", "--reports-dir", "reports"),
                cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT, timeout=RESUME_TIMEOUT_S,
            )  # fmt: skip
        assert resumed.returncode == 0, f"`clp-tune resume {killed_uri}` exited {resumed.returncode}\n{log_tail(log)}"
        assert reference.wait(timeout=RUN_TIMEOUT_S) == 0, f"the uninterrupted search failed\n{log_tail(reference_log)}"
    finally:
        for tmpdir in tmpdirs:
            reap_ray(tmpdir, grace_s=10.0)
            shutil.rmtree(tmpdir, ignore_errors=True)

    # Everything landed in the bucket: Ray's experiment, our tables, the scheduler's state and the report.
    files = bucket_files(killed_uri)
    for name in (SPEC_FILE, TRAJECTORIES_FILE, TRIALS_FILE, f"{REPORT_DIR}/{REPORT_PAGE}"):
        assert name in files, f"{name} is not in {killed_uri}: {sorted(files)}"
    trials = _table(f"{killed_uri}/{TRIALS_FILE}")
    assert len(trials) == TRIALS and trials.status.isin(["finished", "stopped"]).all(), trials[["trial_id", "status"]]

    # Finished trials kept, the unfinished one continued from its checkpoint, not from epoch 1.
    after = _results(killed_uri)
    ended = {t for t, (status, _) in state.items() if status == "TERMINATED"}
    for trial_id in ended:
        assert after[trial_id] == before[trial_id], f"{trial_id} ended before the kill but was run again"
    for trial_id, (status, checkpointed) in state.items():
        if status == "RUNNING":
            new = after[trial_id][len(before[trial_id]) :]
            assert new and new[0] == checkpointed + 1 > 1, (trial_id, checkpointed, before[trial_id], after[trial_id])

    # The same decisions as the uninterrupted search: the scheduler's state came back from the bucket.
    resumed_decisions = _by_index(_decisions(killed_uri, tmp_path / "resumed"))
    reference_decisions = _by_index(_decisions(reference_uri, tmp_path / "uninterrupted"))
    assert len(decided_before) > 0, "no decision had been made before the kill: the test proves nothing"
    assert len(resumed_decisions) == len(reference_decisions), (resumed_decisions, reference_decisions)
    merged = resumed_decisions.merge(reference_decisions, on=["trial", "epoch", "action"], how="outer",
                                     suffixes=("_resumed", "_uninterrupted"), indicator=True)  # fmt: skip
    differ = merged[merged["_merge"] != "both"]
    for column in ("reason", "pred_mean", "pred_std", "threshold", "p_beat"):
        a, b = merged[f"{column}_resumed"], merged[f"{column}_uninterrupted"]
        same = (a == b) | (a.isna() & b.isna())
        if column != "reason":
            same |= (pd.to_numeric(a) - pd.to_numeric(b)).abs() <= 1e-9 * pd.to_numeric(b).abs().clip(lower=1)
        differ = pd.concat([differ, merged[~same]])
    assert differ.empty, f"decisions after the resume differ from the uninterrupted search's:\n{differ.to_string()}"

    # `clp-tune report s3://...` rebuilds the tables and the report from the bucket alone.
    shutil.rmtree(work / "runs")
    shutil.rmtree(work / "reports")
    with (tmp_path / "report.log").open("w") as out:
        code = subprocess.run(clp_tune("report", killed_uri, "--reports-dir", "reports"), cwd=work, env=env,
                              stdout=out, stderr=subprocess.STDOUT, timeout=120).returncode  # fmt: skip
    assert code == 0, log_tail(tmp_path / "report.log")
    assert (work / "reports" / "s3resume" / REPORT_PAGE).is_file()
    rebuilt = pd.read_parquet(work / "runs" / "killed" / TRIALS_FILE)
    assert sorted(rebuilt.trial_id) == sorted(trials.trial_id)
    assert (rebuilt.set_index("trial_id").status == trials.set_index("trial_id").status).all()


def test_report_and_resume_of_an_s3_uri_that_is_not_a_run(
    s3: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from clp_tune.cli import main

    monkeypatch.chdir(tmp_path)
    for uri in (f"s3://{BUCKET}/nothing-here", "s3://no-such-bucket/run"):
        for command in ("report", "resume"):
            assert main([command, uri, "--reports-dir", str(tmp_path / "reports")]) == 2, (command, uri)
            err = capsys.readouterr().err.strip()
            assert len(err.splitlines()) == 1 and uri in err, err


def test_the_mirror_follows_the_run_directory_and_fetch_brings_back_only_ours(
    s3: dict[str, str], tmp_path: Path
) -> None:
    """Whatever files the driver's run directory holds (subdirectories too) are mirrored; a file it removed (a
    journal after a snapshot) is removed from the bucket and from a fetched copy; Ray's files are never fetched."""
    from clp_tune.remote import RunFileSync, fetch_run_files

    uri = f"s3://{BUCKET}/mirror/run"
    local = tmp_path / "driver"
    (local / "parts").mkdir(parents=True)
    (local / SPEC_FILE).write_text("name: x\n")
    (local / "journal.jsonl").write_text('{"a": 1}\n')
    (local / "parts" / "part-0.parquet").write_bytes(b"p0")
    (local / ".state.json.123.tmp").write_text("half")  # being written: never mirrored
    sync = RunFileSync(local, uri)
    sync.sync()
    fs, base = pyarrow.fs.FileSystem.from_uri(uri)
    with fs.open_output_stream(f"{base}/experiment_state-x.json") as out:  # Ray's own file beside ours
        out.write(b"{}")
    assert {"spec.yaml", "journal.jsonl", "parts/part-0.parquet"} <= set(bucket_files(uri))
    assert ".state.json.123.tmp" not in bucket_files(uri)

    copy = tmp_path / "copy"
    assert sorted(fetch_run_files(uri, copy)) == ["journal.jsonl", "parts/part-0.parquet", "spec.yaml"]
    (local / "journal.jsonl").unlink()
    (local / "parts" / "part-1.parquet").write_bytes(b"p1")
    sync.sync()
    assert "journal.jsonl" not in bucket_files(uri) and "parts/part-1.parquet" in bucket_files(uri)
    fetch_run_files(uri, copy)
    assert sorted(p.relative_to(copy).as_posix() for p in copy.rglob("*") if p.is_file()) == [
        "parts/part-0.parquet", "parts/part-1.parquet", "spec.yaml"
    ]  # fmt: skip
    assert (copy / "parts" / "part-1.parquet").read_bytes() == b"p1"
