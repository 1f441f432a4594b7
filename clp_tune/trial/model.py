"""Models searched by clp_tune, all built the same way: ``blocks -> flatten -> dropout -> head``.

Every model is a :class:`BlockNet`, so the rest of the package can treat them alike:

* Manifold Mixup mixes the hidden state that enters block ``k`` (``k = 0`` is Input Mixup);
* trajectory statistics read the penultimate activations through :meth:`BlockNet.features`;
* denoising-autoencoder pretraining reaches the MLP's dense layers through ``blocks[k].linear``.

Dropout rule: every model applies exactly one ``Dropout(p)`` to the penultimate features, BlockNet's own, just before
the head, so ``dropout`` means the same rate for every model. No block may end in dropout: two in a row would drop
at rate ``1 - (1 - p)^2``. The MLP also drops after each hidden layer except the last, whose dropout is BlockNet's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision
from torch import nn

from clp_tune.vocabulary import MODEL_INPUT_RANK, MODELS

#: How an input rank is named in errors.
_RANK_NAMES = {1: "1-D inputs (L,)", 3: "image inputs (C, H, W)"}


@dataclass
class MixPoint:
    """Where and how to mix a minibatch with a permutation of itself (Mixup)."""

    layer: int
    permutation: torch.Tensor
    lam: float

    def apply(self, h: torch.Tensor) -> torch.Tensor:
        return self.lam * h + (1.0 - self.lam) * h[self.permutation]


class BlockNet(nn.Module):
    """A stack of blocks followed by dropout and a linear classifier head."""

    def __init__(self, blocks: list[nn.Module], feature_dim: int, num_classes: int, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(feature_dim, num_classes)

    @property
    def num_mix_layers(self) -> int:
        """Block inputs Mixup may mix at: the input (0) and every hidden state between blocks."""
        return len(self.blocks)

    def features(self, x: torch.Tensor, mix: MixPoint | None = None) -> torch.Tensor:
        """Penultimate activations (before dropout and head), optionally mixing at ``mix.layer``."""
        for index, block in enumerate(self.blocks):
            if mix is not None and mix.layer == index:
                x = mix.apply(x)
            x = block(x)
        return x.flatten(1)

    def forward(self, x: torch.Tensor, mix: MixPoint | None = None) -> torch.Tensor:
        return self.head(self.dropout(self.features(x, mix)))


class DenseBlock(nn.Module):
    """Linear -> ReLU -> dropout; ``linear`` is exposed for autoencoder pretraining.

    The MLP's last block gets ``dropout = 0``: BlockNet's dropout follows it (see the module docstring)."""

    def __init__(self, in_features: int, out_features: int, dropout: float):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(torch.relu(self.linear(x.flatten(1))))


def _cnn1d(input_shape: tuple[int, ...], num_classes: int, dropout: float, width: int = 64) -> BlockNet:
    """The mnist1d reference CNN (three strided 1-D convolutions), wider: 64 channels reach its 94 % in 100 epochs."""
    (length,) = input_shape
    blocks: list[nn.Module] = [
        nn.Sequential(nn.Unflatten(1, (1, length)), nn.Conv1d(1, width, 5, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv1d(width, width, 3, stride=2, padding=1), nn.ReLU()),
    ]
    with torch.no_grad():
        probe = torch.zeros(1, length)
        for block in blocks:
            probe = block(probe)
    return BlockNet(blocks, probe.numel(), num_classes, dropout)


def _mlp(
    input_shape: tuple[int, ...], num_classes: int, dropout: float, hidden: tuple[int, ...] = (256, 128)
) -> BlockNet:
    sizes = [int(torch.tensor(input_shape).prod()), *hidden]
    last = len(hidden) - 1
    blocks = [DenseBlock(sizes[i], sizes[i + 1], dropout if i < last else 0.0) for i in range(len(hidden))]
    return BlockNet(blocks, sizes[-1], num_classes, dropout)


def _convnet(input_shape: tuple[int, ...], num_classes: int, dropout: float, width: int = 32) -> BlockNet:
    """Two conv-BN-ReLU-pool stages and a global pool: small enough for CPU, fine for 8x8 to 32x32 images."""
    channels = input_shape[0]

    def stage(cin: int, cout: int) -> nn.Module:
        return nn.Sequential(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.MaxPool2d(2)
        )

    blocks = [stage(channels, width), stage(width, 2 * width), nn.AdaptiveAvgPool2d(1)]
    return BlockNet(blocks, 2 * width, num_classes, dropout)


def _resnet18(input_shape: tuple[int, ...], num_classes: int, dropout: float) -> BlockNet:
    """torchvision ResNet-18 adapted to 32x32 inputs: 3x3 stem with stride 1 and no max-pool."""
    net = torchvision.models.resnet18(num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(input_shape[0], 64, 3, padding=1, bias=False), net.bn1, net.relu)
    blocks = [stem, net.layer1, net.layer2, net.layer3, nn.Sequential(net.layer4, net.avgpool)]
    return BlockNet(blocks, net.fc.in_features, num_classes, dropout)


_BUILDERS = {"cnn1d": _cnn1d, "mlp": _mlp, "convnet": _convnet, "resnet18": _resnet18}
if tuple(_BUILDERS) != MODELS:
    raise RuntimeError(f"model builders {tuple(_BUILDERS)} do not match clp_tune.vocabulary.MODELS {MODELS}")


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, dropout: float = 0.0) -> BlockNet:
    """Build model ``name`` for inputs of ``input_shape`` (without the batch dimension)."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    rank = MODEL_INPUT_RANK[name]
    if rank is not None and len(input_shape) != rank:
        raise ValueError(f"model {name!r} needs {_RANK_NAMES[rank]}, got shape {input_shape}")
    return _BUILDERS[name](tuple(input_shape), num_classes, dropout)
