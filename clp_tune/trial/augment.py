"""CIFAR's standard augmentation on the trial's device, one minibatch at a time: a random 32x32 crop of the image
padded by 4 black pixels on each side, and a horizontal flip with probability 1/2 (He et al. 2016).

It works on the stored uint8 images, before normalization, so the padding is black as in torchvision's
``RandomCrop(32, padding=4)``, and it draws its offsets and flips on the CPU from the trial's own generator: the
same seed gives the same crops on any device, and the data order and Mixup draws do not move when it is switched on.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

PADDING = 4  # pixels added on each side before the random crop


def crop_and_flip(x: torch.Tensor, generator: torch.Generator, padding: int = PADDING) -> torch.Tensor:
    """A random crop of each zero-padded image of ``x`` (N, C, H, W) at its original size, flipped left-right with
    probability 1/2; one gather on ``x``'s device, any dtype."""
    n, _, height, width = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=generator).to(x.device)
    flips = torch.randint(0, 2, (n,), generator=generator).bool().to(x.device)
    rows = offsets[0, :, None] + torch.arange(height, device=x.device)  # (N, H): the crop's rows in the padded image
    columns = torch.arange(width, device=x.device)
    columns = offsets[1, :, None] + torch.where(flips[:, None], columns.flip(0), columns)  # (N, W), reversed if flipped
    padded = F.pad(x, (padding, padding, padding, padding))
    # Advanced indices on dims 0, 2, 3 around a slice: the result is (N, H, W, C)
    crops = padded[torch.arange(n, device=x.device)[:, None, None], :, rows[:, :, None], columns[:, None, :]]
    return crops.permute(0, 3, 1, 2).contiguous()
