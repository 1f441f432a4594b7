"""Input Mixup (Zhang et al. 2018) and Manifold Mixup (Verma et al. 2019) on one minibatch.

A minibatch is mixed with a permutation of itself, either at the input (layer 0) or at the input of a random
block of the network; the loss is the same convex combination of the two labels' cross-entropies.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from clp_tune.trial.model import BlockNet, MixPoint


def draw_mix_point(
    model: BlockNet, batch_size: int, alpha: float, kind: str, rng: np.random.Generator, generator: torch.Generator
) -> MixPoint:
    """Sample lambda ~ Beta(alpha, alpha), a permutation, and the layer to mix at (0 for Input Mixup).

    ``generator`` must be Mixup's own (not the data-order one): otherwise every mixed minibatch would shift the data
    order of all later epochs, and trials differing only in their Mixup window would not see the same data."""
    lam = float(rng.beta(alpha, alpha))
    layer = 0 if kind == "input" else int(rng.integers(0, model.num_mix_layers))
    permutation = torch.randperm(batch_size, generator=generator).to(next(model.parameters()).device)
    return MixPoint(layer=layer, permutation=permutation, lam=lam)


def mixup_loss(logits: torch.Tensor, y: torch.Tensor, mix: MixPoint, reduction: str = "mean") -> torch.Tensor:
    """Cross-entropy against both labels of the mixed pair, weighted by lambda."""
    return mix.lam * F.cross_entropy(logits, y, reduction=reduction) + (1 - mix.lam) * F.cross_entropy(
        logits, y[mix.permutation], reduction=reduction
    )


def mixup_correct(logits: torch.Tensor, y: torch.Tensor, mix: MixPoint) -> torch.Tensor:
    """Training accuracy under Mixup: credit for each label of the pair, weighted by lambda."""
    predicted = logits.argmax(1)
    return mix.lam * (predicted == y).sum() + (1 - mix.lam) * (predicted == y[mix.permutation]).sum()


def forward_and_loss(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, mix: MixPoint | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss of the minibatch and its (possibly lambda-weighted) count of correct predictions."""
    logits = model(x, mix)
    if mix is None:
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).sum()
    return mixup_loss(logits, y, mix), mixup_correct(logits, y, mix)
