"""Trajectory statistics against direct computations on tiny models (CPU, float64 where exactness matters)."""

from __future__ import annotations

import copy
import io
import itertools
import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from clp_tune.trial.model import BlockNet, DenseBlock, build_model
from clp_tune.trial.statistics import TrajectoryStatistics, sample_predicted_labels
from clp_tune.vocabulary import GROUP_COLUMNS, STATISTIC_COLUMNS, STATISTIC_GROUPS

SEED = 3


def tiny(seed: int = 0, dropout: float = 0.0, dtype: torch.dtype = torch.float64) -> BlockNet:
    """One dense block (4 -> 3) and a 3 -> 2 head: two weight layers, two biases; one dropout, before the head."""
    torch.manual_seed(seed)
    return BlockNet([DenseBlock(4, 3, 0.0)], 3, 2, dropout).to(dtype)


def probe(n: int = 8, features: int = 4, classes: int = 2, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=generator, dtype=torch.float64)
    return x, torch.randint(0, classes, (n,), generator=generator)


def stats_for(model: BlockNet, groups, n: int = 8, **kwargs) -> TrajectoryStatistics:
    x, y = probe(n)
    return TrajectoryStatistics(model, x, y, groups, 2, SEED, **kwargs)


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors])


def set_grads(model: nn.Module, vector: torch.Tensor) -> None:
    """Write ``vector`` (all parameters flattened) into ``p.grad``, as a backward pass would."""
    offset = 0
    for p in model.parameters():
        p.grad = vector[offset : offset + p.numel()].reshape(p.shape).clone()
        offset += p.numel()


def fisher_uniforms(n: int, seed: int = SEED) -> torch.Tensor:
    """The documented recipe for the Fisher labels' uniforms."""
    return torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# ------------------------------------------------------------------ groups and columns


def test_unknown_group_raises_naming_it():
    with pytest.raises(ValueError, match="bogus"):
        stats_for(tiny(), ["grad_norm", "bogus"])


def test_probe_labels_must_fit_the_classes():
    x, y = probe()
    with pytest.raises(ValueError, match="probe labels"):
        TrajectoryStatistics(tiny(), x, y + 5, ["tse"], 2, SEED)


def test_nothing_enabled_gives_no_columns():
    model = tiny()
    stats = stats_for(model, [])
    set_grads(model, torch.ones(sum(p.numel() for p in model.parameters()), dtype=torch.float64))
    stats.observe_step(model, 0.1)
    assert stats.end_epoch(model, 1.0) == {}


@pytest.mark.parametrize("group", STATISTIC_GROUPS)
def test_each_group_gives_exactly_its_columns(group):
    model = tiny()
    stats = stats_for(model, [group])
    F.cross_entropy(model(probe()[0]), probe()[1]).backward()
    stats.observe_step(model, 0.1)
    row = stats.end_epoch(model, 1.0)
    assert set(row) == set(GROUP_COLUMNS[group])
    assert all(isinstance(value, float) and math.isfinite(value) for value in row.values())


def test_all_groups_give_all_columns_and_keep_the_mode():
    model = tiny(dropout=0.5)
    stats = stats_for(model, STATISTIC_GROUPS)
    model.train()
    F.cross_entropy(model(probe()[0]), probe()[1]).backward()
    stats.observe_step(model, 0.1)
    row = stats.end_epoch(model, 1.0)
    assert set(row) == set(STATISTIC_COLUMNS)
    assert model.training and all(module.training for module in model.modules())
    model.eval()
    stats.end_epoch(model, 1.0)
    assert not any(module.training for module in model.modules())


# ------------------------------------------------------------------ weights


def test_weight_distance_and_path_length_by_hand():
    model = tiny()
    stats = stats_for(model, ["weight_distance"])
    step1, step2 = torch.full((2, 3), 0.3, dtype=torch.float64), torch.tensor([0.4, 0.0, -1.2], dtype=torch.float64)
    with torch.no_grad():
        model.head.weight += step1
    row = stats.end_epoch(model, 0.0)
    assert row["weight_distance"] == pytest.approx(step1.norm().item())
    assert row["path_length"] == pytest.approx(step1.norm().item())
    with torch.no_grad():
        model.blocks[0].linear.bias += step2
    row = stats.end_epoch(model, 0.0)
    assert row["weight_distance"] == pytest.approx(math.hypot(step1.norm().item(), step2.norm().item()))
    assert row["path_length"] == pytest.approx(step1.norm().item() + step2.norm().item())
    with torch.no_grad():
        model.head.weight -= step1  # back: closer to the start, but the path keeps growing
    row = stats.end_epoch(model, 0.0)
    assert row["weight_distance"] == pytest.approx(step2.norm().item())
    assert row["path_length"] == pytest.approx(2 * step1.norm().item() + step2.norm().item())
    assert stats.end_epoch(model, 0.0)["path_length"] == pytest.approx(row["path_length"])  # no move, no length


def test_layer_rotation_is_zero_unchanged_two_flipped_and_ignores_scale_and_biases():
    model = tiny()
    stats = stats_for(model, ["layer_rotation"])
    assert stats.end_epoch(model, 0.0)["layer_rotation"] == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        model.blocks[0].linear.weight *= 3.0  # the direction, not the size, is what rotates
        model.blocks[0].linear.bias += 1.0  # biases are not weight layers
    assert stats.end_epoch(model, 0.0)["layer_rotation"] == pytest.approx(0.0, abs=1e-12)
    with torch.no_grad():
        model.head.weight.neg_()  # one of the two weight layers flipped: (2 + 0) / 2
    assert stats.end_epoch(model, 0.0)["layer_rotation"] == pytest.approx(1.0)
    with torch.no_grad():
        model.blocks[0].linear.weight.neg_()
    assert stats.end_epoch(model, 0.0)["layer_rotation"] == pytest.approx(2.0)


def test_layer_rotation_counts_only_conv_and_linear_weights_of_a_batchnorm_model():
    model = build_model("convnet", (1, 8, 8), 10)
    x = torch.randn(4, 1, 8, 8)
    stats = TrajectoryStatistics(model, x, torch.zeros(4, dtype=torch.long), ["layer_rotation"], 10, SEED)
    norms = [module for module in model.modules() if isinstance(module, nn.BatchNorm2d)]
    assert norms, "the convnet must have BatchNorm layers for this test to mean anything"
    with torch.no_grad():
        for module in norms:
            module.weight.neg_()  # 1-D: not a weight layer
    assert stats.end_epoch(model, 0.0)["layer_rotation"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        model.head.weight.neg_()  # one of three weight layers (two convs and the head)
    assert stats.end_epoch(model, 0.0)["layer_rotation"] == pytest.approx(2.0 / 3.0, rel=1e-5)


# ------------------------------------------------------------------ per-step gradient statistics


def test_same_gradient_every_step_has_no_noise():
    model = tiny()
    stats = stats_for(model, ["grad_norm", "grad_noise"])
    g = torch.linspace(-1.0, 2.0, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for _ in range(5):
        set_grads(model, g)
        stats.observe_step(model, 0.1)
    row = stats.end_epoch(model, 0.0)
    assert row["grad_norm"] == pytest.approx(g.norm().item())
    assert row["grad_noise"] == pytest.approx(0.0, abs=1e-9)
    assert row["grad_noise_ratio"] == pytest.approx(0.0, abs=1e-9)


def test_gradient_noise_of_two_gradients_by_hand_and_unused_parameters_count_as_zero():
    model = tiny()
    stats = stats_for(model, ["grad_norm", "grad_noise"])
    n = sum(p.numel() for p in model.parameters())
    g1 = torch.arange(n, dtype=torch.float64) / n
    g2 = torch.ones(n, dtype=torch.float64)
    g2[-2:] = 0.0  # the head bias (last parameter, 2 values) unused in the second step
    set_grads(model, g1)
    stats.observe_step(model, 0.1)
    set_grads(model, g2)
    model.head.bias.grad = None
    stats.observe_step(model, 0.1)
    row = stats.end_epoch(model, 0.0)
    mean = (g1 + g2) / 2
    noise = ((g1 - mean).square().sum() + (g2 - mean).square().sum()).item() / 2
    assert row["grad_norm"] == pytest.approx((g1.norm() + g2.norm()).item() / 2)
    assert row["grad_noise"] == pytest.approx(noise)
    assert row["grad_noise_ratio"] == pytest.approx(noise / mean.square().sum().item())
    model.zero_grad()
    assert math.isnan(stats.end_epoch(model, 0.0)["grad_norm"])  # an epoch without steps


def test_trajectory_complexity_sums_lr_times_squared_gradient_norms_across_epochs():
    model = tiny()
    stats = stats_for(model, ["trajectory_complexity"])
    n = sum(p.numel() for p in model.parameters())
    steps = [[(0.1, 1.0), (0.2, 2.0)], [(0.05, 3.0)]]  # (lr, gradient scale) per step, per epoch
    expected = 0.0
    for epoch in steps:
        for lr, scale in epoch:
            g = scale * torch.ones(n, dtype=torch.float64)
            set_grads(model, g)
            stats.observe_step(model, lr)
            expected += lr * g.square().sum().item()
        assert stats.end_epoch(model, 0.0)["trajectory_complexity"] == pytest.approx(expected)


def test_tse_is_the_running_sum_of_training_losses():
    model = tiny()
    stats = stats_for(model, ["tse"])
    assert [stats.end_epoch(model, loss)["tse"] for loss in (1.5, 0.5, 0.25)] == [1.5, 2.0, 2.25]


# ------------------------------------------------------------------ probe statistics


def test_fisher_trace_of_one_sample_matches_autograd_with_the_sampled_label():
    model = tiny()
    with torch.no_grad():
        model.head.bias.copy_(torch.tensor([0.0, 6.0], dtype=torch.float64))  # predicts class 1 at ~99.8 %
    x, y = probe(1)
    stats = TrajectoryStatistics(model, x, y, ["fisher_trace"], 2, SEED)
    model.eval()
    logits = model(x)
    label = sample_predicted_labels(logits.detach(), fisher_uniforms(1))
    assert label.item() == 1  # the model's near-certain class
    loss = -F.log_softmax(logits, dim=1)[0, label]
    expected = sum(g.square().sum() for g in torch.autograd.grad(loss, list(model.parameters()))).item()
    model.train()
    assert expected > 0
    assert stats.end_epoch(model, 0.0)["fisher_trace"] == pytest.approx(expected, rel=1e-9)


def test_sampled_labels_follow_the_inverse_cdf():
    logits = torch.log(torch.tensor([[0.2, 0.3, 0.5]] * 4, dtype=torch.float64))
    labels = sample_predicted_labels(logits, torch.tensor([0.1, 0.25, 0.6, 0.999999], dtype=torch.float64))
    assert labels.tolist() == [0, 1, 2, 2]


def test_gradient_cosine_distance_of_identical_batches_is_zero():
    """The min over pairs: one identical pair among otherwise different minibatches gives distance 0."""
    model = tiny()
    x, y = probe(4)
    twice = TrajectoryStatistics(
        model, torch.cat([x, x]), torch.cat([y, y]), ["grad_cosine_distance"], 2, SEED, probe_batches=2
    )
    assert twice.end_epoch(model, 0.0)["grad_cosine_distance"] == pytest.approx(0.0, abs=1e-12)
    x4, y4 = probe(16, seed=5)  # four batches of four, the third a copy of the first
    x4[8:12], y4[8:12] = x4[:4], y4[:4]
    stats = TrajectoryStatistics(model, x4, y4, ["grad_cosine_distance"], 2, SEED, probe_batches=4)
    assert stats.end_epoch(model, 0.0)["grad_cosine_distance"] == pytest.approx(0.0, abs=1e-12)
    x4[8:12], y4[8:12] = probe(4, seed=6)  # no identical pair left: a positive distance
    stats = TrajectoryStatistics(model, x4, y4, ["grad_cosine_distance"], 2, SEED, probe_batches=4)
    assert 0.0 < stats.end_epoch(model, 0.0)["grad_cosine_distance"] <= 2.0


def test_activation_distance_starts_from_the_initial_activations():
    model = tiny(dropout=0.5)  # probes run in eval mode: dropout would make the distance random
    x, y = probe()
    stats = TrajectoryStatistics(model, x, y, ["activation_distance"], 2, SEED)
    assert stats.end_epoch(model, 0.0)["activation_distance"] == pytest.approx(0.0, abs=1e-12)
    model.eval()
    before = model.features(x).detach()
    with torch.no_grad():
        model.blocks[0].linear.bias += 0.5
    after = model.features(x).detach()
    model.train()
    assert stats.end_epoch(model, 0.0)["activation_distance"] == pytest.approx((after - before).norm().item())
    assert stats.end_epoch(model, 0.0)["activation_distance"] == pytest.approx(0.0, abs=1e-12)


def reference_probe_statistics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batches: int):
    """Fisher trace and gradient cosine distance with one plain autograd pass per sample / per minibatch."""
    model.eval()
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        labels = sample_predicted_labels(model(x), fisher_uniforms(len(x)).to(x.dtype))
    fisher = sum(
        flat(torch.autograd.grad(F.cross_entropy(model(x[i : i + 1]), labels[i : i + 1]), params)).square().sum()
        for i in range(len(x))
    ) / len(x)
    size = len(x) // batches
    grads = [
        flat(torch.autograd.grad(F.cross_entropy(model(x[s : s + size]), y[s : s + size]), params))
        for s in range(0, batches * size, size)
    ]
    distance = min(1 - F.cosine_similarity(a, b, dim=0) for a, b in itertools.combinations(grads, 2))
    model.train()
    return fisher.item(), distance.item()


class LayerNormBlock(nn.Module):
    """A layer without a per-sample rule in statistics.py: forces the torch.func path."""

    def __init__(self, features: int):
        super().__init__()
        self.norm = nn.LayerNorm(features)
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(self.norm(x)))


def layer_norm_model() -> BlockNet:
    return BlockNet([LayerNormBlock(40), DenseBlock(40, 16, 0.0)], 16, 10, 0.2)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cnn1d", (40,)), ("mlp", (40,)), ("convnet", (1, 8, 8)), ("resnet18", (3, 8, 8)), ("layernorm", (40,))],
)
def test_probe_gradient_statistics_match_plain_autograd_on_every_model(name, shape):
    torch.manual_seed(0)
    model = layer_norm_model() if name == "layernorm" else build_model(name, shape, 10, dropout=0.2)
    n, batches = (4, 2) if name == "resnet18" else (8, 4)  # ResNet-18's per-sample reference is slow on CPU
    x, y = torch.randn(n, *shape), torch.randint(0, 10, (n,))
    model.train()
    with torch.no_grad():  # move the BatchNorm running statistics away from (0, 1)
        model(torch.randn(16, *shape) * 2 + 0.5)
    stats = TrajectoryStatistics(model, x, y, ["fisher_trace", "grad_cosine_distance"], 10, SEED, probe_batches=batches)
    row = stats.end_epoch(model, 0.0)
    fisher, distance = reference_probe_statistics(model, x, y, batches)
    assert row["fisher_trace"] == pytest.approx(fisher, rel=1e-3)
    assert row["grad_cosine_distance"] == pytest.approx(distance, rel=1e-3, abs=1e-4)
    assert model.training


class TwiceBlock(nn.Module):
    """The same linear layer applied twice: per-layer gradient products do not add up, torch.func must take over."""

    def __init__(self, features: int):
        super().__init__()
        self.linear = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(torch.tanh(self.linear(x)))


def test_a_layer_used_twice_falls_back_to_torch_func():
    torch.manual_seed(0)
    model = BlockNet([TwiceBlock(6)], 6, 3, 0.0).double()
    x, y = torch.randn(8, 6, dtype=torch.float64), torch.randint(0, 3, (8,))
    stats = TrajectoryStatistics(model, x, y, ["fisher_trace", "grad_cosine_distance"], 3, SEED, probe_batches=4)
    for _ in range(2):  # the second epoch runs the fallback from the start
        row = stats.end_epoch(model, 0.0)
        fisher, distance = reference_probe_statistics(model, x, y, batches=4)
        assert row["fisher_trace"] == pytest.approx(fisher, rel=1e-9)
        assert row["grad_cosine_distance"] == pytest.approx(distance, rel=1e-9)


def test_frozen_parameters_are_left_out_of_the_probe_gradients():
    model = tiny()
    model.blocks[0].linear.weight.requires_grad_(False)  # as after stacked pretraining
    x, y = probe()
    stats = TrajectoryStatistics(model, x, y, ["fisher_trace", "grad_cosine_distance"], 2, SEED, probe_batches=2)
    row = stats.end_epoch(model, 0.0)
    fisher, distance = reference_probe_statistics(model, x, y, batches=2)
    assert row["fisher_trace"] == pytest.approx(fisher, rel=1e-9)
    assert row["grad_cosine_distance"] == pytest.approx(distance, rel=1e-9)


# ------------------------------------------------------------------ checkpointing


def train_step(model: BlockNet, stats: TrajectoryStatistics, x: torch.Tensor, y: torch.Tensor, lr: float) -> None:
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    stats.observe_step(model, lr)
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad


def test_state_dict_round_trip_continues_the_running_statistics():
    x, y = probe(16, seed=7)
    model = tiny()
    stats = stats_for(model, STATISTIC_GROUPS)
    for epoch in range(2):
        train_step(model, stats, x, y, 0.5)
        stats.end_epoch(model, 1.0 + epoch)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "statistics": stats.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=False)

    resumed_model = tiny()  # as the trainable does: a fresh model, its statistics, then both states
    resumed = stats_for(resumed_model, STATISTIC_GROUPS)
    resumed_model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["statistics"])

    original_model = copy.deepcopy(model)
    for m, s in ((original_model, stats), (resumed_model, resumed)):
        train_step(m, s, x, y, 0.5)
    expected = stats.end_epoch(original_model, 0.5)
    got = resumed.end_epoch(resumed_model, 0.5)
    assert got == pytest.approx(expected, rel=1e-12)
    assert got["tse"] == pytest.approx(3.5)
    assert got["path_length"] > got["weight_distance"] > 0


def test_load_state_dict_refuses_other_groups():
    state = stats_for(tiny(), ["tse"]).state_dict()
    with pytest.raises(ValueError, match="groups"):
        stats_for(tiny(), ["tse", "grad_norm"]).load_state_dict(state)
