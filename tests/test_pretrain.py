"""DAE pretraining: stacked freezes lower layers, gradual keeps training them, both at the same update budget."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from sklearn.datasets import load_digits

from clp_tune.trial.model import build_model
from clp_tune.trial.pretrain import DAESettings, make_decoders, pretrain_dae, train_layer

TRAINED_MODES = ("stacked", "gradual")


@pytest.fixture(scope="module")
def digits() -> torch.Tensor:
    """sklearn's bundled 8x8 digits (no download), scaled to [0, 1], in the (N, 1, 8, 8) layout data.py serves."""
    return torch.tensor(load_digits().data / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)


def mnist1d_like(n: int = 200, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 40, generator=torch.Generator().manual_seed(seed))


def run(mode: str, x: torch.Tensor, epochs: int = 2, noise: str = "mask", seed: int = 0) -> dict[str, float]:
    model = build_model("mlp", tuple(x.shape[1:]), 10, dropout=0.1)
    return pretrain_dae(model, x, mode, noise, 0.2, epochs, batch_size=64, lr=1e-3, seed=seed)


def test_mode_none_returns_empty_without_touching_the_model():
    model = build_model("cnn1d", (40,), 10)  # even a non-MLP model: "none" is a no-op
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert pretrain_dae(model, mnist1d_like(), "none", "mask", 0.2, 2, 64, 1e-3, 0) == {}
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize(
    ("model_name", "mode", "noise", "level", "message"),
    [
        ("cnn1d", "gradual", "mask", 0.2, "mlp"),
        ("mlp", "greedy", "mask", 0.2, "unknown pretrain mode"),
        ("mlp", "stacked", "salt", 0.2, "unknown pretrain noise"),
        ("mlp", "stacked", "mask", 1.0, "drop probability"),
        ("mlp", "gradual", "gaussian", -0.1, "standard deviation"),
    ],
)
def test_bad_inputs_raise_clear_value_errors(model_name, mode, noise, level, message):
    model = build_model(model_name, (40,), 10)
    with pytest.raises(ValueError, match=message):
        pretrain_dae(model, mnist1d_like(), mode, noise, level, 1, 64, 1e-3, 0)


@pytest.mark.parametrize("mode", TRAINED_MODES)
def test_only_gradual_changes_lower_layers_while_a_new_layer_trains(mode):
    model = build_model("mlp", (40,), 10)
    x = mnist1d_like()
    settings = DAESettings(mode, "mask", 0.2, epochs_per_layer=2, batch_size=32, lr=1e-2)
    decoders = make_decoders(model, seed=0)
    generator = torch.Generator().manual_seed(0)
    upper_before = model.blocks[1].linear.weight.clone()
    train_layer(model, decoders, 0, x, settings, generator)
    assert torch.equal(model.blocks[1].linear.weight, upper_before), "layer 1 must not train before it is added"

    lower = model.blocks[0].linear
    lower_before = (lower.weight.clone(), lower.bias.clone())
    train_layer(model, decoders, 1, x, settings, generator)
    lower_changed = not (torch.equal(lower.weight, lower_before[0]) and torch.equal(lower.bias, lower_before[1]))
    assert lower_changed == (mode == "gradual")
    assert not torch.equal(model.blocks[1].linear.weight, upper_before), "the new layer itself must train"


def test_both_modes_do_the_same_number_of_optimizer_steps(monkeypatch):
    steps = {"count": 0}
    adam_step = torch.optim.Adam.step

    def counting_step(self, *args, **kwargs):
        steps["count"] += 1
        return adam_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", counting_step)
    x = mnist1d_like(n=150)  # 150 / 64 -> 3 minibatches per epoch, the last one partial
    reported = {}
    for mode in TRAINED_MODES:
        steps["count"] = 0
        reported[mode] = run(mode, x, epochs=3)["pretrain_updates"]
        assert reported[mode] == steps["count"]
    assert reported["stacked"] == reported["gradual"] == 2 * 3 * math.ceil(150 / 64)


@pytest.mark.parametrize("mode", TRAINED_MODES)
@pytest.mark.parametrize("noise", ["mask", "gaussian"])
def test_pretraining_lowers_reconstruction_error_on_digits(digits, mode, noise):
    untrained = run(mode, digits, epochs=0, noise=noise)["pretrain_recon_error"]
    trained = run(mode, digits, epochs=3, noise=noise)["pretrain_recon_error"]
    flat = digits.flatten(1)
    predict_the_mean = float(((flat - flat.mean(0)) ** 2).mean())
    assert trained < 0.5 * untrained
    assert trained < predict_the_mean, "the autoencoder must beat the trivial per-pixel-mean reconstruction"


@pytest.mark.parametrize("mode", TRAINED_MODES)
@pytest.mark.parametrize("noise", ["mask", "gaussian"])
def test_short_run_on_mnist1d_like_data_is_finite_and_reproducible(mode, noise):
    model = build_model("mlp", (40,), 10, dropout=0.1)
    twin = copy.deepcopy(model)  # the model's own initialisation is the caller's; pretraining must add no randomness
    results = [pretrain_dae(m, mnist1d_like(), mode, noise, 0.2, 2, 64, 1e-3, seed=3) for m in (model, twin)]
    assert set(results[0]) == {"pretrain_recon_error", "pretrain_updates"}
    assert math.isfinite(results[0]["pretrain_recon_error"]) and results[0]["pretrain_updates"] > 0
    assert results[0] == results[1]
    assert torch.equal(model.blocks[0].linear.weight, twin.blocks[0].linear.weight)


def test_pretraining_keeps_only_encoder_weights_and_restores_model_state():
    model = build_model("mlp", (40,), 10, dropout=0.5)
    keys = list(model.state_dict())
    head = model.head.weight.clone()
    torch.manual_seed(123)
    expected_next_draw = torch.rand(1)
    torch.manual_seed(123)
    pretrain_dae(model, mnist1d_like(), "gradual", "gaussian", 0.3, 1, 64, 1e-3, seed=0)
    assert model.training, "training mode must be restored"
    assert list(model.state_dict()) == keys, "decoders must not be attached to the model"
    assert torch.equal(model.head.weight, head)
    assert all(p.grad is None for p in model.parameters()), "no stale gradients for the supervised run"
    assert torch.equal(torch.rand(1), expected_next_draw), "the global random stream must be left untouched"
