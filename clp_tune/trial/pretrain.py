"""Denoising-autoencoder (DAE) pretraining of the MLP's dense layers, stacked or gradual.

Kalmanovich & Chechik (arXiv 1412.6257 / 1504.02902) compare two ways to pretrain a deep DAE one layer at a time:

* **stacked**: layer ``k`` learns to denoise the *frozen* codes of the layers below it, so lower layers never change
  again once trained;
* **gradual**: when layer ``k`` is added, the whole stack so far (encoders and decoders) keeps training end to end
  to rebuild the clean input from a corrupted one, so lower layers keep adapting.

Both modes spend exactly the same number of weight updates (``epochs_per_layer`` epochs of minibatches per layer),
so a search can compare them fairly as one more trial option. Only the encoder weights (``blocks[k].linear``) stay
in the model; the decoders are temporary.

Layer ``k``'s encoder is ``relu(blocks[k].linear(h))``; its decoder maps the code back to that layer's input. Decoder
outputs pass through ReLU when they rebuild a (non-negative) hidden code and stay linear when they rebuild the input,
so a stacked layer is trained exactly as it is later used inside the full decoder stack.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clp_tune.trial.model import BlockNet, DenseBlock
from clp_tune.vocabulary import PRETRAIN_MODES, PRETRAIN_NOISES

_LAYERWISE_MODES = tuple(mode for mode in PRETRAIN_MODES if mode != "none")


@dataclass(frozen=True)
class DAESettings:
    """How each layer is trained; shared by both modes so their budgets are identical."""

    mode: str
    noise: str
    noise_level: float
    epochs_per_layer: int
    batch_size: int
    lr: float

    def __post_init__(self) -> None:
        if self.mode not in _LAYERWISE_MODES:
            raise ValueError(
                f"layer-wise pretraining mode must be one of {', '.join(_LAYERWISE_MODES)}, got {self.mode!r}"
            )
        if self.noise not in PRETRAIN_NOISES:
            raise ValueError(f"unknown pretrain noise {self.noise!r}; expected one of {', '.join(PRETRAIN_NOISES)}")
        if self.noise == "mask" and not 0.0 <= self.noise_level < 1.0:
            raise ValueError(f"mask noise level is a drop probability in [0, 1), got {self.noise_level}")
        if self.noise == "gaussian" and self.noise_level < 0.0:
            raise ValueError(f"gaussian noise level is a standard deviation >= 0, got {self.noise_level}")
        if self.epochs_per_layer < 0 or self.batch_size < 1:
            raise ValueError(
                f"need epochs_per_layer >= 0 and batch_size >= 1, got {self.epochs_per_layer} and {self.batch_size}"
            )


def corrupt(x: torch.Tensor, noise: str, level: float, generator: torch.Generator) -> torch.Tensor:
    """Masking noise zeroes entries with probability ``level``; Gaussian noise adds N(0, level^2)."""
    if noise == "mask":
        keep = torch.rand(x.shape, generator=generator, device=x.device) >= level
        return x * keep
    return x + level * torch.randn(x.shape, generator=generator, device=x.device)


def make_decoders(model: BlockNet, seed: int) -> nn.ModuleList:
    """One linear decoder per dense layer (code of layer k -> input of layer k), seeded without touching torch's
    global random state, so pretraining does not shift the random stream the supervised run draws from."""
    device = model.head.weight.device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        decoders = [nn.Linear(block.linear.out_features, block.linear.in_features) for block in model.blocks]
    return nn.ModuleList(decoders).to(device)


def encode(model: BlockNet, x: torch.Tensor, upto: int) -> torch.Tensor:
    """Code of layer ``upto`` (inclusive); ``upto = -1`` returns the flattened input. Dropout is skipped by design."""
    h = x.flatten(1)
    for block in model.blocks[: upto + 1]:
        h = torch.relu(block.linear(h))
    return h


def decode(decoders: nn.ModuleList, h: torch.Tensor, top: int, bottom: int = 0) -> torch.Tensor:
    """Run decoders ``top`` down to ``bottom``; ReLU on rebuilt hidden codes, linear on the rebuilt input."""
    for k in range(top, bottom - 1, -1):
        h = decoders[k](h)
        if k > 0:
            h = torch.relu(h)
    return h


def train_layer(
    model: BlockNet,
    decoders: nn.ModuleList,
    k: int,
    x: torch.Tensor,
    settings: DAESettings,
    generator: torch.Generator,
) -> int:
    """Pretrain with layer ``k`` as the newest layer; returns the number of weight updates done.

    Stacked trains only encoder ``k`` and decoder ``k`` on the frozen code of layer ``k - 1``; gradual trains encoders
    and decoders ``0..k`` end to end on the input. Both do ``epochs_per_layer * ceil(N / batch_size)`` updates.
    """
    x = x.flatten(1)
    if settings.mode == "stacked":
        with torch.no_grad():
            target = encode(model, x, k - 1)
        params = [*model.blocks[k].linear.parameters(), *decoders[k].parameters()]
    else:
        target = x
        params = [p for j in range(k + 1) for p in (*model.blocks[j].linear.parameters(), *decoders[j].parameters())]
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    updates = 0
    for _ in range(settings.epochs_per_layer):
        order = torch.randperm(len(target), generator=generator, device=target.device)
        for batch in order.split(settings.batch_size):
            clean = target[batch]
            noisy = corrupt(clean, settings.noise, settings.noise_level, generator)
            if settings.mode == "stacked":
                rebuilt = decode(decoders, torch.relu(model.blocks[k].linear(noisy)), top=k, bottom=k)
            else:
                rebuilt = decode(decoders, encode(model, noisy, k), top=k)
            loss = nn.functional.mse_loss(rebuilt, clean)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            updates += 1
    optimizer.zero_grad(set_to_none=True)  # leave no stale gradients on the model for the supervised run
    return updates


@torch.no_grad()
def reconstruction_error(
    model: BlockNet, decoders: nn.ModuleList, x: torch.Tensor, settings: DAESettings, generator: torch.Generator
) -> float:
    """MSE of rebuilding the clean flattened input from a corrupted one through the full encoder/decoder stack.

    Computed in minibatches so large training sets need no extra memory."""
    x = x.flatten(1)
    top = len(model.blocks) - 1
    squared = 0.0
    for clean in x.split(settings.batch_size):
        noisy = corrupt(clean, settings.noise, settings.noise_level, generator)
        squared += float(((decode(decoders, encode(model, noisy, top), top=top) - clean) ** 2).sum())
    return squared / x.numel()


def pretrain_dae(
    model: BlockNet,
    x_train: torch.Tensor,
    mode: str,
    noise: str,
    noise_level: float,
    epochs_per_layer: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> dict[str, float]:
    """Pretrain the MLP's dense layers in place as a denoising autoencoder; ``{}`` for mode ``"none"``.

    Returns ``pretrain_recon_error`` (final full-stack reconstruction MSE on the training inputs) and
    ``pretrain_updates`` (weight updates done; identical for both modes at equal settings).
    """
    if mode not in PRETRAIN_MODES:
        raise ValueError(f"unknown pretrain mode {mode!r}; expected one of {', '.join(PRETRAIN_MODES)}")
    if mode == "none":
        return {}
    if not all(isinstance(block, DenseBlock) for block in model.blocks):
        raise ValueError("DAE pretraining needs the 'mlp' model (every block a DenseBlock with a .linear layer)")
    settings = DAESettings(mode, noise, noise_level, epochs_per_layer, batch_size, lr)
    device = model.head.weight.device
    x = x_train.to(device=device, dtype=torch.float32).flatten(1)
    generator = torch.Generator(device=device).manual_seed(seed)
    decoders = make_decoders(model, seed)
    was_training = model.training
    model.eval()  # pretraining must not be perturbed by dropout
    try:
        updates = sum(train_layer(model, decoders, k, x, settings, generator) for k in range(len(model.blocks)))
        error = reconstruction_error(model, decoders, x, settings, generator)
    finally:
        model.train(was_training)
    return {"pretrain_recon_error": error, "pretrain_updates": updates}
