"""Datasets as whole tensors: small enough to live on the trial's device for the whole run.

Every dataset comes with a fixed validation split carved from its training set (seeded independently of the
trial seed, so all trials of a search are judged on the same samples) and a test split that a trial evaluates
once, at its end. mnist1d is generated procedurally (never downloaded) and cached; digits ships with
scikit-learn; tabular is drawn by scikit-learn's ``make_classification`` (the generator behind the MADELON
benchmark: clusters on the vertices of a hypercube, informative, redundant and noise features, flipped labels),
seeded, so it too needs no download; the torchvision datasets download on clusters with internet access and fail
clearly offline. CIFAR is read from torchvision's own on-disk format (``cifar-10-batches-py`` / ``cifar-100-python``
pickles) by :func:`_read_cifar`, so files copied there by hand load without torchvision's md5 checks.

Image datasets whose source is bytes (CIFAR, FashionMNIST) stay uint8 — a quarter of float32's memory on the device —
and :meth:`Splits.inputs` scales and normalizes each batch as it is used, to exactly the values normalizing the whole
float split at once would give.
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
    """Train / validation / test tensors of one dataset (inputs float32, or uint8 images with their per-channel
    ``mean`` and ``std``; labels int64). Feed inputs to a model through :meth:`inputs`."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    mean: torch.Tensor | None = None  # (1, C, 1, 1) float32 of the [0, 1]-scaled training images; uint8 inputs only
    std: torch.Tensor | None = None

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model inputs from stored samples: uint8 images scaled to [0, 1] and normalized per channel, float
        inputs unchanged. Done per batch, so the split itself stays on the device as bytes."""
        if x.dtype != torch.uint8:
            return x
        return (x.float() / 255.0 - self.mean) / self.std

    def to(self, device: torch.device | str) -> Splits:
        names = ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test", "mean", "std")
        moved = {k: getattr(self, k).to(device) for k in names if getattr(self, k) is not None}
        return replace(self, **moved)


def cache_dir() -> Path:
    """Where generated and downloaded data is kept (``CLP_TUNE_DATA`` overrides)."""
    return Path(os.environ.get("CLP_TUNE_DATA", Path.home() / ".cache" / "clp_tune"))


def _carve_validation(x: np.ndarray, y: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, num_classes: int,
                      **normalization: torch.Tensor) -> Splits:  # fmt: skip
    """The splits, with a seeded validation set; uint8 inputs stay uint8 (``normalization``: their mean and std)."""
    order = np.random.default_rng(SPLIT_SEED).permutation(len(y))
    n_val = int(round(len(y) * VALIDATION_FRACTION))
    val, train = order[:n_val], order[n_val:]

    def tensor(a: np.ndarray, labels: bool = False) -> torch.Tensor:
        return torch.as_tensor(
            a, dtype=torch.int64 if labels else torch.uint8 if a.dtype == np.uint8 else torch.float32
        )

    return Splits(
        tensor(x[train]), tensor(y[train], True), tensor(x[val]), tensor(y[val], True),
        tensor(x_test), tensor(y_test, True), num_classes, **normalization,
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


def _channel_moments(x: np.ndarray) -> dict[str, torch.Tensor]:
    """Per-channel mean and std of uint8 images (N, C, H, W) scaled to [0, 1], from each channel's histogram of byte
    values (exact, and without a float copy of the images: CIFAR-10's would be 1.2 GB in float64)."""
    values = np.arange(256, dtype=np.float64) / 255.0
    counts = [np.bincount(x[:, channel].ravel(), minlength=256) for channel in range(x.shape[1])]
    mean = np.array([c @ values / c.sum() for c in counts])
    std = np.sqrt([c @ (values - m) ** 2 / c.sum() for c, m in zip(counts, mean, strict=True)])
    shape = (1, x.shape[1], 1, 1)
    return {
        "mean": torch.tensor(mean, dtype=torch.float32).view(shape),
        "std": torch.tensor(std, dtype=torch.float32).view(shape),
    }


def _read_cifar(dataset_class: type, root: Path) -> tuple[np.ndarray, ...] | None:
    """CIFAR's pickles under ``root``: uint8 (N, 3, 32, 32) images and labels, train then test, and the number of
    classes (the meta file's label names); None when a file is missing. Which files and keys: from torchvision's own
    class, as ``CIFAR10`` / ``CIFAR100`` read them."""
    import pickle

    folder = root / dataset_class.base_folder
    names = [name for name, _ in dataset_class.train_list + dataset_class.test_list] + [dataset_class.meta["filename"]]
    if not all((folder / name).is_file() for name in names):
        return None

    def load(files: list[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        images, labels = [], []
        for name, _ in files:
            with open(folder / name, "rb") as f:
                entry = pickle.load(f, encoding="latin1")
            images.append(np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))  # stored channel-major
            labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
        return np.concatenate(images), np.asarray(labels, dtype=np.int64)

    with open(folder / dataset_class.meta["filename"], "rb") as f:
        classes = len(pickle.load(f, encoding="latin1")[dataset_class.meta["key"]])
    return (*load(dataset_class.train_list), *load(dataset_class.test_list), classes)


def _torchvision(name: str, download: bool) -> Splits:
    import torchvision

    dataset_class = getattr(torchvision.datasets, _TORCHVISION_CLASSES[name])
    root = cache_dir() / name
    cifar = name.startswith("cifar")
    arrays = _read_cifar(dataset_class, root) if cifar else None
    if arrays is None:
        try:
            train = dataset_class(str(root), train=True, download=download)
            test = dataset_class(str(root), train=False, download=download)
        except Exception as error:  # torchvision raises URLError, RuntimeError, OSError... depending on the failure
            fetched = "could not be downloaded" if download else "was not to be downloaded"
            raise RuntimeError(
                f"dataset {name!r} is not in {root} and {fetched} ({type(error).__name__}: {error}). "
                "It is meant for clusters with internet access; offline, copy the torchvision files into that "
                "directory (or set CLP_TUNE_DATA), or use the built-in datasets mnist1d or digits."
            ) from error
        if cifar:
            arrays = _read_cifar(dataset_class, root)
        else:  # FashionMNIST: uint8 (N, 28, 28) tensors
            arrays = (
                train.data.numpy()[:, None],
                train.targets.numpy(),
                test.data.numpy()[:, None],
                test.targets.numpy(),
                len(train.classes),
            )
    x, y, x_test, y_test, num_classes = arrays
    return _carve_validation(x, y, x_test, y_test, num_classes, **_channel_moments(x))


def load_dataset(name: str, download: bool = True) -> Splits:
    """Load dataset ``name`` (one of :data:`DATASET_SHAPES`) on the CPU; ``download=False`` only reads files already
    on disk (a benchmark that falls back to synthetic data must not fetch a dataset)."""
    if name == "mnist1d":
        return _mnist1d()
    if name == "digits":
        return _digits()
    if name == "tabular":
        return _tabular()
    if name in _TORCHVISION_CLASSES:
        return _torchvision(name, download)
    if name in DATASET_SHAPES:
        raise NotImplementedError(f"dataset {name!r} is in clp_tune.vocabulary but clp_tune.trial.data has no loader")
    raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(DATASET_SHAPES)}")
