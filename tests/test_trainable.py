"""The training recipe itself, run directly on tiny real data (no Ray): every model drops its features once, loss
falls, Mixup obeys its window without shifting the data order, divergence ends the trial cleanly, and a checkpointed
trial resumes exactly where it stopped, bit for bit."""

from __future__ import annotations

import copy
import io
import math
from typing import Any

import pytest
import torch
from conftest import tiny_spec
from torch import nn

import clp_tune.trial.recipe as recipe
from clp_tune.spec import parse_spec
from clp_tune.trial.data import load_dataset
from clp_tune.trial.mixup import forward_and_loss
from clp_tune.trial.model import MixPoint, build_model
from clp_tune.vocabulary import STATISTIC_GROUPS


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def config(**params: Any) -> dict[str, Any]:
    spec = parse_spec(tiny_spec(epochs=params.pop("epochs", 6), params={"lr": 0.003, "batch_size": 64, **params}))
    return spec.fixed_config()


def train(cfg: dict[str, Any], splits, state=None) -> tuple[list[dict], list[dict]]:
    rows, states = [], []
    # deep copies: a state dict holds references to the live weights, as torch.save would snapshot them
    recipe.run_trial(cfg, lambda row, st: (rows.append(row), states.append(copy.deepcopy(st))), state=state,
                        splits=splits)  # fmt: skip
    return rows, states


@pytest.mark.parametrize(
    ("name", "shape", "batch"), [("cnn1d", (40,), 256), ("mlp", (40,), 256), ("convnet", (1, 8, 8), 256),
                                 ("resnet18", (3, 8, 8), 64)],
)  # fmt: skip
def test_every_model_drops_the_head_input_once_at_rate_p(name: str, shape: tuple[int, ...], batch: int) -> None:
    """Between the body's last trainable layer and the head exactly one Dropout(p) acts, so the head sees rate p."""
    p = 0.5
    torch.manual_seed(0)
    model = build_model(name, shape, 10, dropout=p).train()
    calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []  # leaf modules in the order they ran

    def record(module: nn.Module, args: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if not list(module.children()):
            calls.append((module, args[0].detach().clone(), output.detach().clone()))

    handle = nn.modules.module.register_module_forward_hook(record)
    try:
        with torch.no_grad():
            model(torch.randn(batch, *shape))
    finally:
        handle.remove()
    head = next(i for i, (module, _, _) in enumerate(calls) if module is model.head)
    last_trainable = max(i for i, (module, _, _) in enumerate(calls[:head]) if list(module.parameters(False)))
    dropouts = [c for c in calls[last_trainable + 1 : head] if isinstance(c[0], nn.Dropout) and c[0].p > 0]
    before = dropouts[0][1].flatten(1)  # the features before any of these dropouts
    head_input = calls[head][1]
    live = before != 0
    assert (head_input[live] == 0).float().mean().item() == pytest.approx(p, abs=0.05)
    kept = live & (head_input != 0)
    torch.testing.assert_close(head_input[kept], before[kept] / (1 - p))  # rescaled once, not twice
    assert len(dropouts) == 1


@pytest.mark.parametrize(
    ("name", "shape", "needs"),
    [("cnn1d", (1, 8, 8), "1-D inputs"), ("convnet", (40,), "image inputs"), ("resnet18", (40,), "image inputs")],
)
def test_a_model_refuses_inputs_of_the_wrong_rank(name: str, shape: tuple[int, ...], needs: str) -> None:
    with pytest.raises(ValueError, match=needs):
        build_model(name, shape, 10)


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
    real = recipe.forward_and_loss

    def spy(model, x, y, mix):
        mixed_per_epoch[-1].append(mix is not None)
        return real(model, x, y, mix)

    monkeypatch.setattr(recipe, "forward_and_loss", spy)
    rows: list[dict] = []

    def report(row, state):
        rows.append(row)
        mixed_per_epoch.append([])

    cfg = config(mixup_alpha=1.0, mixup_off=2, epochs=5)
    recipe.run_trial(cfg, report, splits=digits)
    per_epoch = mixed_per_epoch[:5]
    assert all(per_epoch), "every epoch must train minibatches"
    assert all(not any(batches) for batches in per_epoch[:2]), "Mixup must be off in epochs 1-2"
    assert all(all(batches) and batches for batches in per_epoch[2:]), "Mixup must be on from epoch 3"
    assert [r["mixup_alpha_used"] for r in rows] == [0.0, 0.0, 1.0, 1.0, 1.0]


Batches = list[list[tuple[torch.Tensor, MixPoint | None]]]


def train_recording_batches(cfg: dict[str, Any], splits, monkeypatch: pytest.MonkeyPatch,
                            state=None) -> tuple[Batches, list[dict]]:  # fmt: skip
    """Train, recording each epoch's minibatches as (inputs, mix point): the data order as the model sees it."""
    batches: Batches = [[]]
    states: list[dict] = []

    def spy(model, x, y, mix):
        batches[-1].append((x.clone(), mix))
        return forward_and_loss(model, x, y, mix)

    def report(row, trial_state):
        states.append(copy.deepcopy(trial_state))
        batches.append([])

    monkeypatch.setattr(recipe, "forward_and_loss", spy)
    recipe.run_trial(cfg, report, state=state, splits=splits)
    return batches[:-1], states


def assert_same_batches(a: Batches, b: Batches) -> None:
    assert len(a) == len(b)
    for epoch, (first, second) in enumerate(zip(a, b, strict=True), 1):
        assert len(first) == len(second), f"epoch {epoch}"
        assert all(torch.equal(x, y) for (x, _), (y, _) in zip(first, second, strict=True)), f"epoch {epoch}"


def test_the_mixup_window_leaves_the_data_order_alone(digits, monkeypatch) -> None:
    """Same seed, different Mixup-off windows: the headline comparison needs the same data in every epoch."""
    always, _ = train_recording_batches(config(mixup_alpha=0.4, mixup_off=0, epochs=4), digits, monkeypatch)
    paused, _ = train_recording_batches(config(mixup_alpha=0.4, mixup_off=2, epochs=4), digits, monkeypatch)
    assert len(always) == 4 and all(always), "every epoch must train minibatches"
    assert all(mix is not None for epoch in always for _, mix in epoch)
    assert all((mix is None) == (epoch < 2) for epoch, batches in enumerate(paused) for _, mix in batches)
    assert_same_batches(always, paused)


def test_a_resumed_trial_repeats_the_batches_and_mix_draws(digits, monkeypatch) -> None:
    cfg = config(mixup_alpha=0.4, mixup_kind="manifold", mixup_off=1, epochs=4)
    full, states = train_recording_batches(cfg, digits, monkeypatch)
    resumed, _ = train_recording_batches(cfg, digits, monkeypatch, state=states[1])  # as if killed after epoch 2
    assert_same_batches(full[2:], resumed)
    for first, second in zip(full[2:], resumed, strict=True):
        for (_, a), (_, b) in zip(first, second, strict=True):
            assert (a.layer, a.lam) == (b.layer, b.lam) and torch.equal(a.permutation, b.permutation)


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


def test_a_checkpoint_saved_and_loaded_continues_bit_for_bit(digits) -> None:
    """The TrialState snapshot through torch.save and torch.load, as train_trial stores it: the resumed epochs repeat
    the uninterrupted run's rows exactly, with dropout, label noise, Mixup, high-loss removal and every statistic."""
    cfg = config(dropout=0.2, label_noise=0.1, mixup_alpha=0.4, mixup_kind="manifold", mixup_off=1, high_loss_q=0.1,
                 epochs=4) | {"statistics": ",".join(STATISTIC_GROUPS)}  # fmt: skip
    rows: list[dict] = []
    saved: list[bytes] = []

    def report(row: dict[str, Any], state: dict[str, Any] | None) -> None:
        rows.append(row)
        buffer = io.BytesIO()
        torch.save(state, buffer)  # at once: the snapshot shares tensors with the live model
        saved.append(buffer.getvalue())

    recipe.run_trial(cfg, report, splits=digits)
    state = torch.load(io.BytesIO(saved[1]), weights_only=False)  # as if killed after epoch 2
    assert state["epoch"] == 2
    full = rows[2:]
    rows.clear()
    recipe.run_trial(cfg, report, state=state, splits=digits)

    def exact(row: dict[str, Any]) -> list[tuple[str, str]]:
        """The row as (column, repr) pairs in order: equal only if every value is the same bits (NaN included)."""
        return [(column, repr(value)) for column, value in row.items() if column != "epoch_seconds"]

    assert [r["epoch"] for r in rows] == [3, 4]
    assert [exact(r) for r in rows] == [exact(r) for r in full]


def test_label_noise_flips_the_requested_fraction() -> None:
    import torch

    from clp_tune.trial.label_noise import corrupt_labels

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
