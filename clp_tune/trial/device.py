"""How a trial feeds its device: augmentation, and on CUDA bf16 autocast, channels-last and torch.compile.

All of them come from the trial's config (the spec's ``augment``, ``bf16``, ``channels_last`` and ``compile``
keys). The CUDA ones are what makes a ResNet-18 on CIFAR fast on a GPU's tensor cores; on the CPU they stay off
whatever the spec says, so CPU trials compute exactly what they always did (float32, contiguous, eager).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from clp_tune.trial.augment import crop_and_flip
from clp_tune.vocabulary import augments_by_default


@dataclass(frozen=True)
class DevicePath:
    """The per-batch path of one trial's inputs and forward pass."""

    augment: bool  # random crop and flip of each training batch (clp_tune.trial.augment)
    bf16: bool  # bf16 autocast of forward passes (CUDA only)
    channels_last: bool  # channels-last weights and image batches (CUDA only)
    compile: bool  # torch.compile of the training forward pass

    @classmethod
    def from_config(cls, config: dict[str, Any], device: torch.device) -> DevicePath:
        """The path ``config`` asks for on ``device``; configs without these keys (benchmarks, banks) get the
        defaults the spec would give them on the CPU."""
        cuda = device.type == "cuda"
        return cls(
            augment=bool(config.get("augment", augments_by_default(config["dataset"]))),
            bf16=cuda and bool(config.get("bf16", True)),
            channels_last=cuda and bool(config.get("channels_last", True)),
            compile=bool(config.get("compile", False)),
        )

    def autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when asked for, else nothing (an untouched float32 forward)."""
        return torch.autocast("cuda", dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """An image batch in the memory format the model's weights are in."""
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x

    def training_batch(self, x: torch.Tensor, to_inputs: Callable[[torch.Tensor], torch.Tensor],
                       generator: torch.Generator) -> torch.Tensor:  # fmt: skip
        """Stored samples to the model's training inputs: augmented (on the stored uint8 images), normalized,
        laid out for the weights."""
        if self.augment:
            x = crop_and_flip(x, generator)
        return self.layout(to_inputs(x))

    def prepare(self, model: torch.nn.Module) -> Callable[..., torch.Tensor]:
        """Put ``model`` in the memory format the path uses; return the callable training forward passes go through
        (the compiled module shares ``model``'s parameters, so checkpoints and statistics see the same weights)."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return torch.compile(model) if self.compile else model
