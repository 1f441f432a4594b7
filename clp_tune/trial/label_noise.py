"""Symmetric label noise: a seeded fraction of training labels is flipped to a different class.

Label noise is a noise-injection regularizer acting on a slow time scale (Shalova et al. 2024); the scheduler's
grace period accounts for it. The validation and test labels are never touched.
"""

from __future__ import annotations

import torch


def corrupt_labels(labels: torch.Tensor, rate: float, num_classes: int, seed: int) -> torch.Tensor:
    """Return a copy of ``labels`` where a fraction ``rate`` is replaced by a uniformly drawn *other* class."""
    if rate <= 0:
        return labels.clone()
    generator = torch.Generator().manual_seed(seed + 7919)
    cpu = labels.cpu()
    flip = torch.rand(len(cpu), generator=generator) < rate
    offsets = torch.randint(1, num_classes, (len(cpu),), generator=generator)
    noisy = torch.where(flip, (cpu + offsets) % num_classes, cpu)
    return noisy.to(labels.device)
