"""Per-epoch trajectory statistics, gathered inside the training loop at a few percent of an epoch's cost.

The statistics describe *how* a trial moves, not only where it is, so the critical-period detectors and the
final-accuracy predictor can judge a trial early:

* ``grad_norm``, ``grad_noise``, ``grad_noise_ratio``: size and minibatch noise of the training gradients;
* ``grad_cosine_distance``: min pairwise cosine distance (1 - max cosine similarity) of fixed probe minibatches'
  gradients, what One Period to Rule Them All's reference code calls gradient confusion (arXiv 2506.15954);
* ``layer_rotation``: mean cosine distance of each weight layer from its initial value (Carbonnelle et al. 2019);
* ``weight_distance``, ``path_length``: how far the weights went from the start, and along which path length;
* ``fisher_trace``: trace of the Fisher information with labels sampled from the model (Achille et al. 2019);
* ``activation_distance``: how far the probe set's penultimate activations moved since the previous epoch;
* ``tse``: the running sum of training losses (Ru et al. 2021);
* ``trajectory_complexity``: the cumulative sum of ``lr * ||g||^2`` over steps (after Fu et al. 2023).

Cost control (the statistics must stay under 10 % of an epoch): a training step only flattens the gradient into a
preallocated buffer, records its norm and adds it to a running sum, all on the device (no host syncs); everything
that needs extra forward or backward passes runs once per epoch on a small fixed probe set, with per-sample gradients
from a per-layer factorisation (:mod:`clp_tune.trial.probe_gradients`; ``torch.func`` for other layers). Probes run
in eval mode (no dropout, BatchNorm running statistics), and the Fisher labels are drawn by inverse CDF from fixed
uniforms (``torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)``), so epoch-to-epoch
changes reflect the weights, not sampling noise.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from typing import Any

import torch
from torch import Tensor

from clp_tune.trial.model import BlockNet
from clp_tune.trial.probe_gradients import LayerCapture, factorable, factored_statistics, functional_statistics
from clp_tune.vocabulary import GROUP_COLUMNS as GROUP_COLUMNS  # re-exported for importers older than vocabulary
from clp_tune.vocabulary import STATISTIC_GROUPS

PROBE_SIZE = 64  # the probe statistics' cost grows linearly with the probe set
PROBE_BATCHES = 4

_STEP_GROUPS = frozenset({"grad_norm", "grad_noise", "trajectory_complexity"})
_WEIGHT_GROUPS = frozenset({"layer_rotation", "weight_distance"})


def sample_predicted_labels(logits: Tensor, uniforms: Tensor) -> Tensor:
    """Draw one label per row from ``softmax(logits)`` by inverse CDF with the given uniforms in [0, 1).

    Fixed uniforms make the draw a deterministic function of the model's prediction (common random numbers).
    """
    cdf = logits.softmax(dim=1).cumsum(dim=1)
    return (cdf < uniforms[:, None]).sum(dim=1).clamp_(max=logits.shape[1] - 1)


class TrajectoryStatistics:
    """Running trajectory statistics of one trial; see the module docstring for the columns.

    Args:
        model: the trial's model, already on its device (its current weights are the reference ``w0``).
        probe_x, probe_y: fixed training samples on the model's device; the first ``probe_size`` are the probe set.
        enabled: the statistic groups to compute (names from :data:`STATISTIC_GROUPS`).
        num_classes: number of classes of the task.
        seed: seeds the Fisher-label uniforms, so a trial's statistics are reproducible.
        probe_size: how many probe samples the probe statistics use. Their per-sample work is most of the statistics'
            cost (about 5 % of a quickstart epoch at 64 samples on one CPU thread, and linear in the count).
        probe_batches: the probe set is split, in order, into this many fixed minibatches for
            ``grad_cosine_distance``.
    """

    def __init__(
        self,
        model: BlockNet,
        probe_x: Tensor,
        probe_y: Tensor,
        enabled: Collection[str],
        num_classes: int,
        seed: int,
        probe_size: int = PROBE_SIZE,
        probe_batches: int = PROBE_BATCHES,
    ):
        unknown = sorted(set(enabled) - set(STATISTIC_GROUPS))
        if unknown:
            raise ValueError(f"unknown statistic {unknown[0]!r}; expected some of {', '.join(STATISTIC_GROUPS)}")
        self.enabled = frozenset(enabled)
        if len(probe_y) and not 0 <= int(probe_y.min()) <= int(probe_y.max()) < num_classes:
            raise ValueError(f"probe labels must lie in [0, {num_classes})")
        params = list(model.parameters())
        self._model, self._params = model, params  # model.parameters() costs as much as the rest of a step
        self._device, self._dtype = params[0].device, params[0].dtype
        self._numel = sum(p.numel() for p in params)
        probe_x, probe_y = probe_x[:probe_size], probe_y[:probe_size]
        self._probe_x, self._probe_y = probe_x, probe_y
        batches = max(1, min(probe_batches, len(probe_y)))
        self._probe_batches = batches
        self._probe_batch_size = len(probe_y) // batches
        uniforms = torch.rand(len(probe_y), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self._fisher_uniforms = uniforms.to(self._device, self._dtype)
        self._factorable = factorable(model)

        # Per-step records (reset every epoch): device tensors and floats only, so that a step never waits for them.
        self._grad_buffer = torch.zeros(self._numel, device=self._device, dtype=self._dtype)
        self._zeros = torch.zeros(max(p.numel() for p in params), device=self._device, dtype=self._dtype)
        self._per_step = bool(self.enabled & _STEP_GROUPS)
        self._grad_sum = torch.zeros_like(self._grad_buffer) if "grad_noise" in self.enabled else None
        self._step_norms: list[Tensor] = []
        self._step_lrs: list[float] = []

        # Layer rotation: the flat parameter vector splits into parameters; those with dim >= 2 are weight layers.
        self._sizes = [p.numel() for p in params]
        self._is_weight_layer = [p.dim() >= 2 for p in params]

        # Cumulative state (part of state_dict).
        self._tse = 0.0
        self._path_length = 0.0
        self._complexity = torch.zeros((), device=self._device, dtype=torch.float64)
        self._w0 = self._flat_weights(model) if self.enabled & _WEIGHT_GROUPS else None
        self._w_prev = self._w0
        self._w0_layer_norms = self._layer_norms(self._w0)
        self._features_prev = self._probe_features(model) if "activation_distance" in self.enabled else None

    # ------------------------------------------------------------------ per step

    def observe_step(self, model: BlockNet, lr: float) -> None:
        """Record this minibatch's gradient (``p.grad``, after ``backward`` and before ``step``)."""
        if not self._per_step:
            return
        params = self._params if model is self._model else list(model.parameters())
        g = torch.cat(
            [p.grad.reshape(-1) if p.grad is not None else self._zeros[: p.numel()] for p in params],
            out=self._grad_buffer,
        )
        self._step_norms.append(torch.linalg.vector_norm(g))
        self._step_lrs.append(lr)
        if self._grad_sum is not None:
            self._grad_sum.add_(g)

    # ------------------------------------------------------------------ per epoch

    def end_epoch(self, model: BlockNet, train_loss: float) -> dict[str, float]:
        """Close the epoch: the enabled statistic columns, as floats (one host sync for all of them)."""
        self._tse += train_loss
        values: dict[str, Tensor] = {}
        if self._per_step:
            values.update(self._step_statistics())

        step_length = None
        if self._w0 is not None:
            w = self._flat_weights(model)
            if "layer_rotation" in self.enabled:
                values["layer_rotation"] = self._layer_rotation(w)
            if "weight_distance" in self.enabled:
                values["weight_distance"] = torch.linalg.vector_norm(w - self._w0)
                step_length = torch.linalg.vector_norm(w - self._w_prev)
                values["path_length"] = step_length  # this epoch's step; replaced by the running sum below
            self._w_prev = w

        if self.enabled & {"grad_cosine_distance", "fisher_trace", "activation_distance"}:
            values.update(self._probe_statistics(model))

        columns = list(values)
        if not columns:
            return {"tse": self._tse} if "tse" in self.enabled else {}
        floats = dict(zip(columns, torch.stack([values[c].double() for c in columns]).tolist(), strict=True))
        if step_length is not None:
            self._path_length += floats["path_length"]
            floats["path_length"] = self._path_length
        if "tse" in self.enabled:
            floats["tse"] = self._tse
        return floats

    def _step_statistics(self) -> dict[str, Tensor]:
        """Epoch means of the gradient statistics from the per-step records, and the cumulative complexity."""
        values: dict[str, Tensor] = {}
        if self._step_norms:
            squares = torch.stack(self._step_norms).double().square()
            lrs = torch.tensor(self._step_lrs, dtype=squares.dtype, device=squares.device)
            self._complexity = self._complexity + (squares * lrs).sum()  # not in place: state_dict() shares it
            mean_norm, mean_square = squares.sqrt().mean(), squares.mean()
        else:  # an epoch without steps: no gradient to describe
            mean_norm = mean_square = self._nan()
        if "grad_norm" in self.enabled:
            values["grad_norm"] = mean_norm
        if self._grad_sum is not None:
            mean_grad_square = (self._grad_sum.double() / max(len(self._step_norms), 1)).square().sum()
            noise = (mean_square - mean_grad_square).clamp_min(0.0)
            values["grad_noise"] = noise
            values["grad_noise_ratio"] = torch.where(mean_grad_square > 0, noise / mean_grad_square, self._nan())
            self._grad_sum.zero_()
        if "trajectory_complexity" in self.enabled:
            values["trajectory_complexity"] = self._complexity.clone()
        self._step_norms, self._step_lrs = [], []
        return values

    def _probe_statistics(self, model: BlockNet) -> dict[str, Tensor]:
        """Gradient cosine distance, Fisher trace and activation distance on the fixed probe set, in eval mode."""
        values: dict[str, Tensor] = {}
        gradients = self.enabled & {"grad_cosine_distance", "fisher_trace"}
        was_training = model.training
        model.eval()
        try:
            capture = LayerCapture(model) if gradients and self._factorable else None
            with capture or torch.no_grad():
                features = model.features(self._probe_x)
                logits = model.head(model.dropout(features))
            if capture is not None and capture.shared:  # a layer used twice: the per-layer algebra does not apply
                self._factorable, capture = False, None
            if "activation_distance" in self.enabled:
                values["activation_distance"] = torch.linalg.vector_norm(features.detach() - self._features_prev)
                self._features_prev = features.detach()
            if gradients:
                labels = sample_predicted_labels(logits.detach(), self._fisher_uniforms)
                k, b = self._probe_batches, self._probe_batch_size
                if capture is not None:
                    values.update(factored_statistics(capture, logits, self._probe_y, labels, k, b, gradients))
                else:
                    values.update(functional_statistics(model, self._probe_x, self._probe_y, labels, k, b, gradients))
        finally:
            model.train(was_training)
        return values

    # ------------------------------------------------------------------ helpers

    def _nan(self) -> Tensor:
        return torch.full((), math.nan, device=self._device, dtype=torch.float64)

    def _flat_weights(self, model: BlockNet) -> Tensor:
        return torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def _layer_sums(self, elementwise: Tensor) -> Tensor:
        """Sum ``elementwise`` (a flat all-parameter vector) per weight layer."""
        parts = elementwise.split(self._sizes)
        return torch.stack([part.sum() for part, weight in zip(parts, self._is_weight_layer, strict=True) if weight])

    def _layer_norms(self, w: Tensor | None) -> Tensor | None:
        if w is None or not any(self._is_weight_layer):
            return None
        return self._layer_sums(w * w).sqrt()

    def _layer_rotation(self, w: Tensor) -> Tensor:
        """Mean over weight layers of the cosine distance ``1 - cos(w_t, w_0)``; 0 unchanged, 2 sign-flipped."""
        if not any(self._is_weight_layer):
            return self._nan()
        cosine = self._layer_sums(w * self._w0) / (self._layer_norms(w) * self._w0_layer_norms)
        return (1.0 - cosine.nan_to_num(0.0).clamp(-1.0, 1.0)).mean()

    def _probe_features(self, model: BlockNet) -> Tensor:
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                return model.features(self._probe_x)
        finally:
            model.train(was_training)

    # ------------------------------------------------------------------ checkpointing

    def state_dict(self) -> dict[str, Any]:
        """The cumulative state a resumed trial needs (taken between epochs).

        The tensors are shared, not copied: none is ever modified in place, so the dict stays a snapshot.
        """
        return {
            "enabled": sorted(self.enabled),
            "tse": self._tse,
            "path_length": self._path_length,
            "complexity": self._complexity,
            "w0": self._w0,
            "w_prev": self._w_prev,
            "features_prev": self._features_prev,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        def on_device(tensor: Tensor | None) -> Tensor | None:
            return None if tensor is None else tensor.to(self._device)

        if set(state["enabled"]) != self.enabled:
            raise ValueError(f"statistics state was saved with groups {state['enabled']}, not {sorted(self.enabled)}")
        self._tse, self._path_length = state["tse"], state["path_length"]
        self._complexity = on_device(state["complexity"])
        self._w0, self._w_prev = on_device(state["w0"]), on_device(state["w_prev"])
        self._features_prev = on_device(state["features_prev"])
        self._w0_layer_norms = self._layer_norms(self._w0)
