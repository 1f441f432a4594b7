"""``clp-tune bench driver-load``: a small replayed search through real Ray Tune, once per ``--checkpoints-kept``
value, each row's figures printed and the ratio between them; bad arguments exit 2 before Ray starts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from conftest import REPO

from clp_tune.bench.synthetic import synthetic_bank


def bench(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    return subprocess.run([sys.executable, "-m", "clp_tune.cli", "bench", "driver-load", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def test_driver_load_replays_a_search_per_checkpoints_kept_value(tmp_path: Path) -> None:
    where = tmp_path / "not" / "made" / "yet"
    prior = tmp_path / "prior.parquet"  # a small prior: each row fits its own, and every shipped bank takes ~40 s
    synthetic_bank(12, 3, seed=8).to_parquet(prior)
    done = bench("--trials", "10", "--epochs", "3", "--workers", "2", "--checkpoints-kept", "1,2", "--dir", str(where),
                 "--bank", str(prior))  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["kept", "results"])
    rows = [line.split() for line in lines[header + 1 : header + 3]]
    assert [row[0] for row in rows] == ["1", "2"]
    for row in rows:
        results, finished, errors = int(row[1]), int(row[2]), int(row[3])
        assert errors == 0 and 1 <= finished <= 10 and finished * 3 <= results <= 10 * 3  # every result went through
        assert float(row[5]) > 0 and float(row[9]) > 0  # results/s; the run directory's size
    assert "results/s against the first row: 2 kept" in done.stdout and f"prior on {prior}" in done.stdout
    assert where.is_dir() and not any(where.iterdir())  # made, and each replay's temporary directory removed


def test_driver_load_refuses_bad_arguments_with_exit_2(tmp_path: Path) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    refused = (["--checkpoints-kept", "1,zero"], ["--checkpoints-kept", "0"], ["--trials", "0"], ["--epochs", "x"],
               ["--dir", str(a_file)])  # fmt: skip
    for args in refused:
        done = bench(*args, timeout=60)
        last = done.stderr.strip().splitlines()[-1]  # argparse's own refusals print the usage above it
        assert done.returncode == 2 and args[0] in last and "expected" in last, (args, done.stderr)
        assert "kept" not in done.stdout  # refused before any replay
    for bank in (a_file, tmp_path / "missing.parquet"):
        done = bench("--bank", str(bank), timeout=60)
        assert done.returncode == 2 and done.stderr.startswith("error: --bank: ") and "kept" not in done.stdout
