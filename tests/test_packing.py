"""``clp-tune bench packing``: real trials of a spec packed side by side in separate processes, on synthetic data of
the spec's shape when its dataset is missing, CPU trials with the cores split when there is no GPU (all said so)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch
from conftest import REPO, tiny_spec, write_spec


def bench(*args: str, data: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CLP_TUNE_DATA=str(data))
    return subprocess.run([sys.executable, "-m", "clp_tune.cli", "bench", "packing", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_packing_runs_real_trials_side_by_side_and_prints_every_packing(tmp_path: Path) -> None:
    spec = tiny_spec(dataset="cifar10", model="convnet", epochs=10, statistics=["grad_norm"])
    spec["params"] = {"lr": {"loguniform": [0.001, 0.1]}, "batch_size": {"choice": [16, 32]}}
    path = write_spec(tmp_path / "spec.yaml", spec)
    done = bench(str(path), "--per-device", "1,2", "--epochs", "2", "--train-size", "64", data=tmp_path / "data")
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert "SYNTHETIC" in done.stdout and "(3, 32, 32)" in done.stdout  # no cifar10 in the empty CLP_TUNE_DATA
    if not torch.cuda.is_available():
        assert "NO CUDA DEVICE" in lines[0] and "CPU trials" in lines[0]
    table = lines[lines.index(next(line for line in lines if line.lstrip().startswith("trials/device"))) + 1 :][:2]
    assert [int(row.split()[0]) for row in table] == [1, 2]
    for row in table:
        epoch_s, per_hour, memory = float(row.split()[2]), float(row.split()[3]), float(row.split()[4])
        assert epoch_s > 0 and memory > 0
        assert abs(per_hour - int(row.split()[0]) * 3600 / (epoch_s * 10)) < 0.05 * per_hour
    assert "64 training samples per epoch" in done.stdout and "'lr': 0.01" in done.stdout


def test_packing_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "spec.yaml", tiny_spec())
    done = bench(str(path), "--per-device", "1,0", data=tmp_path)
    assert done.returncode == 2 and "--per-device" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    done = bench(str(tmp_path / "missing.yaml"), data=tmp_path)
    assert done.returncode == 2 and "no such file" in done.stderr
