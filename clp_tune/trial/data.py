"""Datasets as whole tensors: small enough to live on the trial's device for the whole run.

Every dataset comes with a fixed validation split carved from its training set (seeded independently of the
trial seed, so all trials of a search are judged on the same samples) and a test split that a trial evaluates
once, at its end. mnist1d is generated procedurally (never downloaded) and cached; digits ships with
scikit-learn; tabular is drawn by scikit-learn's ``make_classification`` (the generator behind the MADELON
benchmark: clusters on the vertices of a hypercube, informative, redundant and noise features, flipped labels),
seeded, so it too needs no download; the torchvision datasets download on clusters with internet access and fail
clearly offline.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from clp_tune.vocabulary import DATASET_SHAPES, VALIDATION_FRACTION
from clp_tune.vocabulary import TRAIN_SIZES as TRAIN_SIZES  # re-exported for importers older than vocabulary

SPLIT_SEED = 12345  # the held-out splits are the same samples for every trial of every search
#: The datasets torchvision serves, by their class in ``torchvision.datasets``.
_TORCHVISION_CLASSES = {"fashionmnist": "FashionMNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100"}


@dataclass(frozen=True)
class Splits:
    """Train / validation / test tensors of one dataset (inputs float32, labels int64)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device | str) -> Splits:
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return replace(self, **moved)


def cache_dir() -> Path:
    """Where generated and downloaded data is kept (``CLP_TUNE_DATA`` overrides)."""
    return Path(os.environ.get("CLP_TUNE_DATA", Path.home() / ".cache" / "clp_tune"))


def _carve_validation(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_classes: int) -> Splits:
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_val = int(round(len(y) * VALIDATION_FRACTION))
    val, train = order[:n_val], order[n_val:]

    def tensor(a: np.ndarray, labels: bool = False) -> torch.Tensor:
        return torch.as_tensor(a, dtype=torch.int64 if labels else torch.float32)

    return Splits(
        tensor(x[train]), tensor(y[train], True), tensor(x[val]), tensor(y[val], True),
        tensor(x_test), tensor(y_test, True), num_classes,
    )  # fmt: skip


def _mnist1d() -> Splits:
    path = cache_dir() / "mnist1d.npz"
    if not path.exists():
        from mnist1d.data import get_dataset_args, make_dataset

        data = make_dataset(get_dataset_args())  # procedural; seeded by the package's default args
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez(tmp, x=data["x"], y=data["y"], x_test=data["x_test"], y_test=data["y_test"])
        os.replace(tmp, path)
    with np.load(path) as data:
        return _carve_validation(data["x"], data["y"], data["x_test"], data["y_test"], 10)


def _digits() -> Splits:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    order = np.random.default_rng(SPLIT_SEED + 1).permutation(len(x))
    n_test = int(round(len(x) * 0.2))  # vocabulary.TRAIN_SIZES counts on this 20 % test split
    test, train = order[:n_test], order[n_test:]
    return _carve_validation(x[train], digits.target[train], x[test], digits.target[test], 10)


def _tabular() -> Splits:
    """10 classes of 2 Gaussian clusters each in 64 features (16 informative, 16 redundant, 32 noise), 3 % of the
    labels flipped: hard enough that regularization and learning rate matter, standardized on the training set."""
    from sklearn.datasets import make_classification

    n_train, n_test = 5000, 1000  # vocabulary.TRAIN_SIZES counts on these
    x, y = make_classification(
        n_samples=n_train + n_test, n_features=DATASET_SHAPES["tabular"][0], n_informative=16, n_redundant=16,
        n_classes=10, n_clusters_per_class=2, flip_y=0.03, class_sep=1.0, random_state=SPLIT_SEED,
    )  # fmt: skip
    x = x.astype(np.float32)
    mean, std = x[:n_train].mean(axis=0), x[:n_train].std(axis=0)
    x = (x - mean) / std
    return _carve_validation(x[:n_train], y[:n_train], x[n_train:], y[n_train:], 10)


def _torchvision(name: str) -> Splits:
    import torchvision

    dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
    root = cache_dir() / name
    try:
        train = dataset_class(str(root), train=True, download=True)
        test = dataset_class(str(root), train=False, download=True)
    except Exception as error:  # torchvision raises URLError, RuntimeError, OSError... depending on the failure
        raise RuntimeError(
            f"dataset {name!r} is not in {root} and could not be downloaded ({type(error).__name__}: {error}). "
            "It is meant for clusters with internet access; offline, copy the torchvision files into that "
            "directory (or set CLP_TUNE_DATA), or use the built-in datasets mnist1d or digits."
        ) from error

    def arrays(ds) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(ds.data, dtype=np.float32) / 255.0
        x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
        return x, np.asarray(ds.targets)

    x, y = arrays(train)
    x_test, y_test = arrays(test)
    mean, std = x.mean(axis=(0, 2, 3), keepdims=True), x.std(axis=(0, 2, 3), keepdims=True)
    return _carve_validation((x - mean) / std, y, (x_test - mean) / std, y_test, len(train.classes))


def load_dataset(name: str) -> Splits:
    """Load dataset ``name`` (one of :data:`DATASET_SHAPES`) on the CPU."""
    if name == "mnist1d":
        return _mnist1d()
    if name == "digits":
        return _digits()
    if name == "tabular":
        return _tabular()
    if name in _TORCHVISION_CLASSES:
        return _torchvision(name)
    if name in DATASET_SHAPES:
        raise NotImplementedError(f"dataset {name!r} is in clp_tune.vocabulary but clp_tune.trial.data has no loader")
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_SHAPES)}")
