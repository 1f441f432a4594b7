"""The trial's early ("enlightenment") period and what the recipe does during it.

The Enlightenment Period paper (arXiv 2504.01737) finds the first few percent of training fragile: Mixup there
hurts a little, so it can be paused (``early_mixup: pause``) or, in large settings, strengthened with a larger
alpha (``early_mixup: boost``); where Mixup is not used, the highest-loss samples can be held back instead
(``high_loss_q``). The period is given by ``mixup_off`` as epochs, as a fraction of the budget, or as
``auto:<detector>``: it then lasts until that critical-period detector fires in this very trial.
"""

from __future__ import annotations

import torch


class EarlyPeriod:
    """Decides, epoch by epoch, whether the trial is still in its early period and which recipe applies.

    Args:
        mixup_off: window length in epochs (int), a fraction of ``budget`` (float in [0, 1)), or ``auto:<detector>``.
        budget: planned number of epochs.
        mixup_alpha: the Mixup alpha used after the early period (0 disables Mixup entirely).
        early_mixup: ``pause`` (no Mixup in the period) or ``boost`` (alpha * alpha_boost in the period).
        alpha_boost: multiplier of alpha during the period when boosting.
        high_loss_q: fraction of the highest-loss training samples left out of each early epoch.
    """

    def __init__(
        self,
        mixup_off: int | float | str,
        budget: int,
        mixup_alpha: float,
        early_mixup: str = "pause",
        alpha_boost: float = 2.0,
        high_loss_q: float = 0.0,
    ):
        self.detector: str | None = None
        self.end_epoch: int | None
        if isinstance(mixup_off, str):
            self.detector = mixup_off.removeprefix("auto:")
            self.end_epoch = None  # unknown until the detector fires
        elif isinstance(mixup_off, float):
            self.end_epoch = int(round(mixup_off * budget))
        else:
            self.end_epoch = int(mixup_off)
        self.mixup_alpha = mixup_alpha
        self.early_mixup = early_mixup
        self.alpha_boost = alpha_boost
        self.high_loss_q = high_loss_q

    def observe(self, detector_epochs: dict[str, int | None]) -> None:
        """Fix the end of an ``auto`` period once its detector has fired (call after each epoch)."""
        if self.detector is not None and self.end_epoch is None:
            self.end_epoch = detector_epochs.get(self.detector)

    def is_early(self, epoch: int) -> bool:
        """Whether 1-based ``epoch`` (about to be trained) belongs to the early period."""
        return self.end_epoch is None or epoch <= self.end_epoch

    def alpha(self, epoch: int) -> float:
        """The Mixup alpha for ``epoch``; 0 means no Mixup."""
        if self.mixup_alpha <= 0 or not self.is_early(epoch):
            return self.mixup_alpha
        return self.mixup_alpha * self.alpha_boost if self.early_mixup == "boost" else 0.0

    def drops_high_loss(self, epoch: int) -> bool:
        return self.high_loss_q > 0 and self.is_early(epoch)

    def keep_indices(self, per_sample_loss: torch.Tensor) -> torch.Tensor:
        """Indices of the samples kept this epoch: all but the top ``high_loss_q`` fraction by loss."""
        n_drop = int(len(per_sample_loss) * self.high_loss_q)
        order = torch.argsort(per_sample_loss)
        return order[: len(order) - n_drop]

    def state_dict(self) -> dict:
        return {"end_epoch": self.end_epoch}

    def load_state_dict(self, state: dict) -> None:
        self.end_epoch = state["end_epoch"]
