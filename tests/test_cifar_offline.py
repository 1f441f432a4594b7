"""The real CIFAR loading code, offline: a tiny CIFAR-10 in torchvision's own on-disk format (the
``cifar-10-batches-py`` pickles) in a temporary ``CLP_TUNE_DATA``, loaded as is and trained on by a real ResNet-18
trial end to end through ``clp-tune run``; a missing dataset still fails with the message saying where files go.
"""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import REPO, reap_ray, write_spec

from clp_tune.trial.data import load_dataset
from clp_tune.vocabulary import TRAJECTORIES_FILE, TRIALS_FILE

PER_BATCH = 8  # images in each of the 5 training batches: 40 training images, 4 of them the validation split
TEST_IMAGES = 12
RUN_TIMEOUT_S = 240


def write_cifar10(root: Path) -> dict[bytes, int]:
    """CIFAR-10's files as torchvision writes them (uint8 rows of 3072 bytes, channel-major; ``labels`` lists), with
    images that each carry a distinct value; returns every image's bytes -> its label."""
    folder = root / "cifar10" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    labelled: dict[bytes, int] = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, name in enumerate(names):
        n = TEST_IMAGES if name == "test_batch" else PER_BATCH
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        data[:, 0] = np.arange(n) + 16 * index  # distinct images
        labelled.update({bytes(row): label for row, label in zip(data, labels, strict=True)})
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": [""] * n}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, f)
    return labelled


def test_the_on_disk_format_loads_as_uint8_images_with_their_labels(tmp_path: Path, monkeypatch) -> None:
    labelled = write_cifar10(tmp_path)
    monkeypatch.setenv("CLP_TUNE_DATA", str(tmp_path))
    splits = load_dataset("cifar10")
    assert splits.x_train.dtype == torch.uint8 and splits.input_shape == (3, 32, 32) and splits.num_classes == 10
    assert (len(splits.y_train), len(splits.y_val), len(splits.y_test)) == (36, 4, TEST_IMAGES)
    for x, y in ((splits.x_train, splits.y_train), (splits.x_val, splits.y_val), (splits.x_test, splits.y_test)):
        for image, label in zip(x, y, strict=True):
            assert labelled[bytes(image.reshape(-1).numpy())] == int(label)  # channel-major, as torchvision reads it


def test_a_missing_dataset_fails_offline_with_where_to_put_the_files(tmp_path: Path, monkeypatch) -> None:
    import torchvision.datasets.cifar

    def offline(*args, **kwargs):
        raise URLError("no network")  # what torchvision's download raises offline, without trying the network

    monkeypatch.setattr(torchvision.datasets.cifar, "download_and_extract_archive", offline)
    monkeypatch.setenv("CLP_TUNE_DATA", str(tmp_path))
    with pytest.raises(RuntimeError, match="could not be downloaded") as error:
        load_dataset("cifar10")
    assert str(tmp_path / "cifar10") in str(error.value) and "CLP_TUNE_DATA" in str(error.value)


def test_clp_tune_run_trains_resnet18_on_the_files_end_to_end(tmp_path: Path) -> None:
    write_cifar10(tmp_path / "data")
    spec = {
        "name": "cifar_offline", "dataset": "cifar10", "model": "resnet18", "epochs": 2, "num_samples": 1,
        "searcher": "random", "scheduler": "fifo", "max_concurrent_trials": 1, "resources": {"cpu": 2},
        "statistics": ["grad_norm", "layer_rotation"], "checkpoint_every": 2,
        "params": {"optimizer": "sgd", "lr": 0.05, "batch_size": 12, "seed": 0, "mixup_alpha": 0.2},
    }  # fmt: skip
    spec_path = write_spec(tmp_path / "cifar.yaml", spec)
    ray_tmpdir = tempfile.mkdtemp(prefix="clp-cf-", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = dict(os.environ, CLP_TUNE_DATA=str(tmp_path / "data"), RAY_AUTH_MODE="disabled", RAY_TMPDIR=ray_tmpdir)
    command = [sys.executable, "-m", "clp_tune.cli", "run", str(spec_path), "--storage-path", str(tmp_path / "runs"),
               "--run-name", "r", "--num-cpus", "2", "--reports-dir", str(tmp_path / "reports")]  # fmt: skip
    try:
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    finally:
        reap_ray(ray_tmpdir, grace_s=10.0)
        shutil.rmtree(ray_tmpdir, ignore_errors=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = pd.read_parquet(tmp_path / "runs" / "r" / TRAJECTORIES_FILE)
    trials = pd.read_parquet(tmp_path / "runs" / "r" / TRIALS_FILE)
    assert list(rows["epoch"]) == [1, 2] and rows["train_samples"].tolist() == [36, 36]
    assert rows["config/augment"].tolist() == [True, True] and rows["config/checkpoint_every"].tolist() == [2, 2]
    assert np.isfinite(rows["train_loss"]).all() and rows["diverged"].eq(0).all()
    assert trials["status"].tolist() == ["finished"] and np.isfinite(trials["test_acc"]).all()
