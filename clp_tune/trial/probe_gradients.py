"""Per-sample and per-minibatch gradients of a probe loss, for the Fisher trace and the gradient cosine distance.

Both gradient statistics need per-sample (Fisher) or per-minibatch (cosine distance) gradients of the probe loss.
torch.func gets them for any model, but on CPU its per-sample convolution gradients run as grouped convolutions:
the Fisher trace alone cost about a fifth of a quickstart CNN epoch that way. For the layers our models are built from
(Linear, Conv1d/2d, BatchNorm in eval mode) the gradient of one sample is a product of the layer's input and its
output gradient, so one hooked forward pass, one backward pass per loss and a few batched matmuls give the same
numbers at a fraction of the cost; torch.func remains the fallback for any other layer.
"""

from __future__ import annotations

import math
from collections.abc import Collection

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

# Per-sample gradient elements held at once for the Fisher trace: bounds memory for large models like ResNet-18.
FISHER_CHUNK_ELEMENTS = 1 << 24

_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d)
_BATCH_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


def _trainable(module: nn.Module) -> list[Tensor]:
    return [p for p in module.parameters(recurse=False) if p.requires_grad]


def factorable(model: nn.Module) -> bool:
    """Whether every layer with trainable parameters has a per-sample gradient rule below."""
    for module in model.modules():
        if not _trainable(module):
            continue
        if isinstance(module, _CONVOLUTIONS):
            if module.groups != 1 or isinstance(module.padding, str) or module.padding_mode != "zeros":
                return False
        elif isinstance(module, _BATCH_NORMS):
            if module.running_mean is None or module.running_var is None:
                return False
        elif not isinstance(module, nn.Linear):
            return False
    return True


class LayerCapture:
    """Forward hooks keeping the input and output of every layer with trainable parameters for one forward pass."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if _trainable(m)]
        self.inputs: dict[nn.Module, Tensor] = {}
        self.outputs: dict[nn.Module, Tensor] = {}
        self.shared = False
        self._grad_mode = torch.enable_grad()

    def __enter__(self) -> LayerCapture:
        self._grad_mode.__enter__()
        self._handles = [layer.register_forward_hook(self._hook) for layer in self.layers]
        return self

    def __exit__(self, *exc_info: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._grad_mode.__exit__(*exc_info)

    def _hook(self, module: nn.Module, args: tuple[Tensor, ...], output: Tensor) -> Tensor:
        self.shared |= module in self.outputs
        self.inputs[module], self.outputs[module] = args[0].detach(), output
        return output.clone()  # an in-place op downstream (ResNet's ReLU) must not overwrite what we differentiate


def _positions(t: Tensor) -> Tensor:
    """(B, C, *spatial) -> (B, L, C): the L positions that share a channel's weights."""
    return t.reshape(len(t), t.shape[1], -1).mT


def _patches(conv: nn.Conv1d | nn.Conv2d, x: Tensor) -> Tensor:
    """(B, L, C_in * kernel) input patches, one row per output position (im2col)."""
    if isinstance(conv, nn.Conv1d):  # strided windows are a view: much cheaper than F.unfold's im2col
        (kernel,), (dilation,), (padding,), (stride,) = conv.kernel_size, conv.dilation, conv.padding, conv.stride
        windows = F.pad(x, (padding, padding)).unfold(2, dilation * (kernel - 1) + 1, stride)[..., ::dilation]
        return windows.transpose(1, 2).reshape(len(x), windows.shape[2], -1)
    return F.unfold(x, conv.kernel_size, conv.dilation, conv.padding, conv.stride).mT


def _input_factor(layer: nn.Module, x: Tensor) -> Tensor:
    """(B, L, D_in): what a layer's per-sample weight gradient multiplies its output gradient with."""
    if isinstance(layer, nn.Linear):
        return x.reshape(len(x), -1, x.shape[-1])
    if isinstance(layer, _CONVOLUTIONS):
        return _patches(layer, x)
    return _positions(F.batch_norm(x, layer.running_mean, layer.running_var, training=False, eps=layer.eps))


def _gradient_factors(layer: nn.Module, a: Tensor, delta: Tensor) -> tuple[list[tuple[Tensor, Tensor]], list[Tensor]]:
    """A layer's per-sample parameter gradients in factored form, from its input factor ``a`` and output gradient.

    Returns ``outer`` pairs ``(d, a)`` of shapes (B, L, D_out), (B, L, D_in), where sample i's gradient is
    ``d_i^T a_i``, and ``summed`` tensors ``v`` of shape (B, L, D), where it is ``v_i`` summed over positions.
    """
    d = delta.reshape(len(delta), -1, delta.shape[-1]) if isinstance(layer, nn.Linear) else _positions(delta)
    outer: list[tuple[Tensor, Tensor]] = []
    summed: list[Tensor] = []
    if layer.weight is not None and layer.weight.requires_grad:
        if isinstance(layer, _BATCH_NORMS):
            summed.append(d * a)
        else:
            outer.append((d, a))
    if layer.bias is not None and layer.bias.requires_grad:
        summed.append(d)
    return outer, summed


def _outer_square_norms(d: Tensor, a: Tensor) -> Tensor:
    """Per-sample ``||d_i^T a_i||_F^2``, through the smaller of the gradient and the L x L Gram products."""
    samples, positions, d_in = a.shape
    d_out = d.shape[2]
    if positions == 1:
        return d.square().sum((1, 2)) * a.square().sum((1, 2))
    gram = positions * positions <= d_in * d_out
    step = max(1, FISHER_CHUNK_ELEMENTS // min(positions * positions, d_in * d_out))
    norms = []
    for start in range(0, samples, step):
        ds, As = d[start : start + step], a[start : start + step]
        norms.append(((ds @ ds.mT) * (As @ As.mT)).sum((1, 2)) if gram else (ds.mT @ As).square().sum((1, 2)))
    return torch.cat(norms)


def _sample_square_norms(layer: nn.Module, a: Tensor, delta: Tensor) -> Tensor:
    """(B,) squared norms of each sample's gradient of this layer's trainable parameters."""
    outer, summed = _gradient_factors(layer, a, delta)
    norms = [_outer_square_norms(d, x) for d, x in outer] + [v.sum(1).square().sum(1) for v in summed]
    return torch.stack(norms).sum(0)


def _minibatch_gradients(layer: nn.Module, a: Tensor, delta: Tensor, k: int) -> list[Tensor]:
    """(k, n) gradients of this layer's trainable parameters for k equal consecutive minibatches of the samples."""
    outer, summed = _gradient_factors(layer, a, delta)
    grads = [(d.reshape(k, -1, d.shape[2]).mT @ x.reshape(k, -1, x.shape[2])).reshape(k, -1) for d, x in outer]
    return grads + [v.reshape(k, -1, v.shape[2]).sum(1) for v in summed]


def factored_statistics(
    capture: LayerCapture, logits: Tensor, y: Tensor, labels: Tensor, k: int, b: int, wanted: Collection[str]
) -> dict[str, Tensor]:
    """Fisher trace (per-sample gradients, sampled labels) and gradient cosine distance (k minibatches of b, true
    labels)."""
    fisher, distance = "fisher_trace" in wanted, "grad_cosine_distance" in wanted and k >= 2
    layers = list(capture.outputs)
    outputs = [capture.outputs[layer] for layer in layers]
    n = k * b
    # Summed losses, so that each sample's output gradient is its own (eval mode: samples do not interact).
    fisher_deltas = distance_deltas = [None] * len(layers)
    if fisher:
        loss = F.cross_entropy(logits, labels, reduction="sum")
        fisher_deltas = torch.autograd.grad(loss, outputs, retain_graph=True, allow_unused=True)
    if distance:
        loss = F.cross_entropy(logits[:n], y[:n], reduction="sum") / b  # the sum of the k minibatch mean losses
        distance_deltas = torch.autograd.grad(loss, outputs, allow_unused=True)
    norms = torch.zeros(len(labels), device=logits.device, dtype=logits.dtype)
    grads: list[Tensor] = []
    for layer, fisher_delta, distance_delta in zip(layers, fisher_deltas, distance_deltas, strict=True):
        a = _input_factor(layer, capture.inputs[layer])  # one layer's im2col patches at a time: bounded memory
        if fisher_delta is not None:
            norms += _sample_square_norms(layer, a, fisher_delta)
        if distance_delta is not None:
            grads += _minibatch_gradients(layer, a[:n], distance_delta[:n], k)
    values: dict[str, Tensor] = {}
    if fisher:
        values["fisher_trace"] = norms.mean()
    if distance:
        values["grad_cosine_distance"] = _min_cosine_distance(torch.cat(grads, dim=1))
    elif "grad_cosine_distance" in wanted:  # fewer than two probe minibatches
        values["grad_cosine_distance"] = torch.full((), math.nan, device=logits.device)
    return values


def functional_statistics(
    model: nn.Module, x: Tensor, y: Tensor, labels: Tensor, k: int, b: int, wanted: Collection[str]
) -> dict[str, Tensor]:
    """The same statistics with torch.func (vmap over minibatches and samples): slower, but any layer works."""
    params = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    constants = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    constants.update(model.named_buffers())

    def loss(p: dict[str, Tensor], xb: Tensor, yb: Tensor) -> Tensor:
        return F.cross_entropy(functional_call(model, (p, constants), (xb,)), yb)

    def sample_square_norm(p: dict[str, Tensor], xi: Tensor, yi: Tensor) -> Tensor:
        return sum(g.square().sum() for g in grad(loss)(p, xi[None], yi[None]).values())

    values: dict[str, Tensor] = {}
    if "fisher_trace" in wanted:
        numel = max(1, sum(p.numel() for p in params.values()))
        chunk = max(1, FISHER_CHUNK_ELEMENTS // numel)
        per_sample = vmap(sample_square_norm, in_dims=(None, 0, 0), chunk_size=chunk if chunk < len(x) else None)
        norms = per_sample(params, x, labels)
        values["fisher_trace"] = norms.mean()
    if "grad_cosine_distance" in wanted:
        if k < 2:
            return values | {"grad_cosine_distance": torch.full((), math.nan, device=x.device)}
        xb, yb = x[: k * b].reshape(k, b, *x.shape[1:]), y[: k * b].reshape(k, b)
        grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, xb, yb)
        flat = torch.cat([g.reshape(k, -1) for g in grads.values()], dim=1)
        values["grad_cosine_distance"] = _min_cosine_distance(flat)
    return values


def _min_cosine_distance(grads: Tensor) -> Tensor:
    """Min cosine distance ``1 - cos`` over pairs of rows of (k, P) ``grads``, i.e. 1 - the max cosine similarity.

    What One Period to Rule Them All's reference code (``metrics/GradientConfusion.py``) computes over minibatch
    gradients and calls "gradient confusion"; it is not Sankararaman et al.'s (2020) quantity of that name."""
    unit = F.normalize(grads, dim=1)
    rows, cols = torch.triu_indices(len(grads), len(grads), offset=1, device=grads.device)
    return 1.0 - (unit @ unit.T)[rows, cols].max()
