"""CIFAR's augmentation and the uint8 storage of images, on real tensors and real (tiny) trials.

Augmentation must move pixels only (every output image is a crop of its padded input, flipped or not, and the labels
and data order do not change), be seeded, and stay off where the spec says so; images stored as uint8 and
normalized per batch must reach the model as exactly the values the float path gives. The CUDA tests run where a GPU
is present.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from conftest import tiny_spec

import clp_tune.trial.recipe as recipe
from clp_tune.spec import SpecError, parse_spec
from clp_tune.trial.augment import PADDING, crop_and_flip
from clp_tune.trial.data import Splits, _carve_validation, _channel_moments
from clp_tune.vocabulary import GPU_CHECKPOINT_EVERY

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def images(n: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def which_crop(original: torch.Tensor, crop: torch.Tensor) -> tuple[int, int, bool] | None:
    """The (row, column, flipped) window of the padded ``original`` that ``crop`` is, by brute force."""
    padded = torch.nn.functional.pad(original, (PADDING,) * 4)
    for dy in range(2 * PADDING + 1):
        for dx in range(2 * PADDING + 1):
            window = padded[:, dy : dy + 32, dx : dx + 32]
            for flipped in (False, True):
                if torch.equal(window.flip(2) if flipped else window, crop):
                    return dy, dx, flipped
    return None


def test_every_augmented_image_is_a_padded_crop_of_its_own_image_flipped_or_not() -> None:
    x = images(64)
    out = crop_and_flip(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8 and out.is_contiguous()
    windows = [which_crop(x[i], out[i]) for i in range(len(x))]
    assert all(w is not None for w in windows), "an output image is no crop of its own input"
    assert {w[2] for w in windows} == {False, True}  # both flipped and unflipped images occur
    assert len({w[:2] for w in windows}) > 20  # offsets vary over the 9 x 9 possible


def test_augmentation_is_seeded() -> None:
    x = images(32)
    first, again = (crop_and_flip(x, torch.Generator().manual_seed(7)) for _ in range(2))
    other = crop_and_flip(x, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def uint8_splits(n: int = 72, seed: int = 0) -> Splits:
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8)
    return _carve_validation(x, rng.integers(0, 10, n), x_test, rng.integers(0, 10, 20), 10, **_channel_moments(x))


def test_uint8_images_normalized_per_batch_equal_the_float_path_exactly() -> None:
    splits = uint8_splits()
    assert splits.x_train.dtype == torch.uint8
    train = np.concatenate([splits.x_train.numpy(), splits.x_val.numpy()])  # the images the moments are taken on
    scaled = train.astype(np.float32) / 255.0  # the float path: the whole split scaled and normalized at once
    mean = scaled.astype(np.float64).mean(axis=(0, 2, 3), keepdims=True)
    std = scaled.astype(np.float64).std(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(splits.mean.numpy(), mean, rtol=1e-6)
    np.testing.assert_allclose(splits.std.numpy(), std, rtol=1e-6)
    whole = (splits.x_train.numpy().astype(np.float32) / 255.0 - splits.mean.numpy()) / splits.std.numpy()
    index = torch.tensor([5, 0, 60, 3])
    batch = splits.inputs(splits.x_train[index])
    assert batch.dtype == torch.float32
    np.testing.assert_array_equal(batch.numpy(), whole[index.numpy()])  # bit for bit, not approximately


def cifar_config(**overrides: Any) -> dict[str, Any]:
    spec = tiny_spec(dataset="cifar10", model="convnet", epochs=2, statistics=["grad_norm", "layer_rotation"])
    spec["params"] = {"lr": 0.01, "batch_size": 16, "seed": 1, "mixup_alpha": 0.2}
    return parse_spec({**spec, "num_samples": 1, **overrides}).fixed_config()


def rows_of(config: dict[str, Any], splits: Splits) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    recipe.run_trial(config, lambda row, state: rows.append(row), splits=splits)
    return [{k: v for k, v in row.items() if k != "epoch_seconds"} for row in rows]


def test_a_trial_on_uint8_images_trains_exactly_as_on_the_normalized_floats() -> None:
    stored = uint8_splits()
    floats = Splits(*(stored.inputs(getattr(stored, k)) for k in ("x_train", "y_train", "x_val", "y_val")),
                    stored.inputs(stored.x_test), stored.y_test, stored.num_classes)  # fmt: skip
    assert floats.x_train.dtype == torch.float32 and floats.mean is None
    config = cifar_config(augment=False)
    assert rows_of(config, stored) == rows_of(config, floats)


def test_augmentation_is_on_for_cifar_by_default_and_keeps_labels_and_order(monkeypatch) -> None:
    assert cifar_config()["augment"] is True
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    original = recipe.forward_and_loss

    def spy(model, x, y, mix):
        seen.append((x.detach().clone(), y.clone()))
        return original(model, x, y, mix)

    monkeypatch.setattr(recipe, "forward_and_loss", spy)
    splits = uint8_splits()
    rows_of(cifar_config(), splits)
    augmented, seen[:] = list(seen), []
    rows_of(cifar_config(augment=False), splits)
    plain = list(seen)
    assert len(augmented) == len(plain) > 0
    assert all(torch.equal(a[1], p[1]) for a, p in zip(augmented, plain, strict=True))  # same labels, same order
    assert all(a[0].shape == p[0].shape for a, p in zip(augmented, plain, strict=True))
    assert not any(torch.equal(a[0], p[0]) for a, p in zip(augmented, plain, strict=True))


def test_augmentation_is_off_outside_cifar_and_refused_on_1d_data() -> None:
    assert parse_spec(tiny_spec()).fixed_config()["augment"] is False  # digits
    assert parse_spec(tiny_spec(dataset="mnist1d", model="cnn1d")).fixed_config()["augment"] is False
    with pytest.raises(SpecError, match="augment: random crop and flip need an image dataset"):
        parse_spec(tiny_spec(dataset="mnist1d", model="cnn1d", augment=True))


def test_checkpoint_interval_defaults_to_every_epoch_on_cpu_and_longer_on_gpu() -> None:
    assert parse_spec(tiny_spec()).fixed_config()["checkpoint_every"] == 1
    assert parse_spec(tiny_spec(resources={"cpu": 1, "gpu": 0.25})).fixed_config()["checkpoint_every"] == (
        GPU_CHECKPOINT_EVERY
    )
    assert parse_spec(tiny_spec(checkpoint_every=3)).fixed_config()["checkpoint_every"] == 3
    with pytest.raises(SpecError, match="checkpoint_every"):
        parse_spec(tiny_spec(checkpoint_every=0))


@CUDA
def test_augmentation_on_cuda_gives_the_cpu_crops() -> None:
    x = images(32)
    on_cpu = crop_and_flip(x, torch.Generator().manual_seed(3))
    on_gpu = crop_and_flip(x.cuda(), torch.Generator().manual_seed(3))
    assert on_gpu.is_cuda and torch.equal(on_gpu.cpu(), on_cpu)


@CUDA
@pytest.mark.parametrize("fast", [True, False])
def test_a_cuda_trial_keeps_uint8_images_on_the_device_and_trains_with_or_without_bf16(fast: bool) -> None:
    splits = uint8_splits(256).to("cuda")
    assert splits.x_train.is_cuda and splits.x_train.dtype == torch.uint8
    config = cifar_config(bf16=fast, channels_last=fast) | {"model": "resnet18", "epochs": 2}
    rows: list[dict[str, Any]] = []
    recipe.run_trial(config, lambda row, state: rows.append(row), splits=splits, device="cuda")
    assert [row["epoch"] for row in rows] == [1, 2] and all(np.isfinite(row["train_loss"]) for row in rows)
    assert rows[-1]["diverged"] == 0 and "test_acc" in rows[-1]
