"""The training recipe itself, run directly on tiny real data (no Ray): loss falls, Mixup obeys its window,
divergence ends the trial cleanly, and a checkpointed trial resumes exactly where it stopped."""

from __future__ import annotations

import copy
import math
from typing import Any

import pytest
from conftest import tiny_spec

import clp_tune.trainable as trainable
from clp_tune.data import load_dataset
from clp_tune.spec import parse_spec


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def config(**params: Any) -> dict[str, Any]:
    spec = parse_spec(tiny_spec(epochs=params.pop("epochs", 6), params={"lr": 0.003, "batch_size": 64, **params}))
    return spec.fixed_config()


def train(cfg: dict[str, Any], splits, state=None) -> tuple[list[dict], list[dict]]:
    rows, states = [], []
    # deep copies: a state dict holds references to the live weights, as torch.save would snapshot them
    trainable.run_trial(cfg, lambda row, st: (rows.append(row), states.append(copy.deepcopy(st))), state=state,
                        splits=splits)  # fmt: skip
    return rows, states


def test_loss_falls_and_rows_have_the_reported_keys(digits) -> None:
    rows, _ = train(config(), digits)
    assert [r["epoch"] for r in rows] == list(range(1, 7))
    assert rows[-1]["train_loss"] < 0.5 * rows[0]["train_loss"]
    assert rows[-1]["val_acc"] > 0.85
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "diverged", "epoch_seconds",
                "grad_norm", "layer_rotation", "tse", "cp_end_acc50"):  # fmt: skip
        assert key in rows[0], key
    assert "test_acc" in rows[-1] and "test_acc" not in rows[0]  # test split evaluated once, at the end
    assert rows[-1]["lr"] < rows[0]["lr"]  # cosine schedule


def test_mixup_is_off_inside_the_window_and_on_after(digits, monkeypatch) -> None:
    mixed_per_epoch: list[list[bool]] = [[]]
    real = trainable.forward_and_loss

    def spy(model, x, y, mix):
        mixed_per_epoch[-1].append(mix is not None)
        return real(model, x, y, mix)

    monkeypatch.setattr(trainable, "forward_and_loss", spy)
    rows: list[dict] = []

    def report(row, state):
        rows.append(row)
        mixed_per_epoch.append([])

    cfg = config(mixup_alpha=1.0, mixup_off=2, epochs=5)
    trainable.run_trial(cfg, report, splits=digits)
    per_epoch = mixed_per_epoch[:5]
    assert all(not any(batches) for batches in per_epoch[:2]), "Mixup must be off in epochs 1-2"
    assert all(all(batches) and batches for batches in per_epoch[2:]), "Mixup must be on from epoch 3"
    assert [r["mixup_alpha_used"] for r in rows] == [0.0, 0.0, 1.0, 1.0, 1.0]


def test_manifold_mixup_and_fraction_window(digits) -> None:
    rows, _ = train(config(mixup_alpha=2.0, mixup_kind="manifold", mixup_off=0.5, epochs=4), digits)
    assert [r["mixup_alpha_used"] for r in rows] == [0.0, 0.0, 2.0, 2.0]
    assert all(math.isfinite(r["train_loss"]) for r in rows)


def test_alpha_boost_and_high_loss_removal(digits) -> None:
    rows, _ = train(config(mixup_alpha=0.5, mixup_off=2, early_mixup="boost", alpha_boost=3.0,
                           high_loss_q=0.2, epochs=3), digits)  # fmt: skip
    assert [r["mixup_alpha_used"] for r in rows] == [1.5, 1.5, 0.5]
    full = rows[2]["train_samples"]
    assert rows[0]["train_samples"] < 0.85 * full + 64  # top 20 % highest-loss samples held back early


def test_divergence_ends_the_trial_as_diverged(digits) -> None:
    rows, states = train(config(lr=1e6, optimizer="sgd", momentum=0.9), digits)
    assert len(rows) == 1 and rows[0]["diverged"] == 1 and states == [None]


def test_resume_from_checkpoint_state_continues_identically(digits) -> None:
    cfg = config(epochs=4)
    full, states = train(cfg, digits)
    resumed, _ = train(cfg, digits, state=states[1])  # as if killed after epoch 2
    assert [r["epoch"] for r in resumed] == [3, 4]
    for a, b in zip(full[2:], resumed, strict=True):
        assert a["val_acc"] == b["val_acc"] and a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-6)
        assert a["tse"] == pytest.approx(b["tse"], rel=1e-6)


def test_label_noise_flips_the_requested_fraction() -> None:
    import torch

    from clp_tune.label_noise import corrupt_labels

    labels = torch.randint(0, 10, (10_000,))
    noisy = corrupt_labels(labels, 0.3, 10, seed=1)
    assert abs((noisy != labels).float().mean().item() - 0.3) < 0.02
    assert torch.equal(corrupt_labels(labels, 0.3, 10, seed=1), noisy)


def test_auto_window_switches_mixup_on_when_its_detector_fires(digits) -> None:
    rows, _ = train(config(mixup_alpha=1.0, mixup_off="auto:acc50", lr=0.001, epochs=6), digits)
    fired = rows[-1]["cp_end_acc50"]
    assert 1 <= fired < 6, "acc50 should fire within the run on digits"
    assert fired == next(r["epoch"] for r in rows if r["train_acc"] >= 0.5)
    for row in rows:
        assert row["mixup_alpha_used"] == (0.0 if row["epoch"] <= fired else 1.0), row["epoch"]


@pytest.mark.parametrize("mode", ["stacked", "gradual"])
def test_real_short_trial_with_dae_pretraining(digits, mode: str) -> None:
    rows, _ = train(config(pretrain=mode, pretrain_epochs=1, epochs=2), digits)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert all(0 < r["pretrain_recon_error"] < 1 for r in rows)  # stored next to the usual metrics
    assert rows[0]["pretrain_updates"] > 0 and rows[-1]["val_acc"] > 0.5
