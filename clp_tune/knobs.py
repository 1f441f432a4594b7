"""The knobs a trial understands: each one's default and the check that says what was expected.

``clp_tune.spec`` validates a spec's ``params`` against this table; the recipe (``clp_tune.trial.recipe``) reads
the same names from its config, and the bank recorder starts every configuration from these defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from clp_tune.vocabulary import (
    DETECTORS,
    EARLY_MIXUP,
    LR_SCHEDULES,
    MIXUP_KINDS,
    OPTIMIZERS,
    PRETRAIN_MODES,
    PRETRAIN_NOISES,
)


@dataclass(frozen=True)
class Knob:
    """One trial hyperparameter: its default and a check returning what was expected, or None if fine."""

    default: Any
    check: Callable[[Any], str | None]
    numeric: bool = True
    doc: str = ""


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> str | None:
    return None if is_number(value) and value > 0 else "a number > 0"


def _non_negative(value: Any) -> str | None:
    return None if is_number(value) and value >= 0 else "a number >= 0"


def _unit_interval(value: Any) -> str | None:
    return None if is_number(value) and 0 <= value < 1 else "a number in [0, 1)"


def _at_least_one(value: Any) -> str | None:
    return None if is_number(value) and value >= 1 else "a number >= 1"


def _positive_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value > 0 else "an integer > 0"


def _non_negative_int(value: Any) -> str | None:
    return None if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else "an integer >= 0"


def _one_of(*options: str) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        return None if value in options else "one of " + ", ".join(repr(o) for o in options)

    return check


def _seed(value: Any) -> str | None:
    """Trials seed torch generators with small offsets of the seed, which must fit a signed 64-bit integer."""
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**32
    return None if ok else "an integer in [0, 2**32)"


def _mixup_window(value: Any) -> str | None:
    """Epochs (int >= 0), a fraction of the budget (float in [0, 1)) or ``auto:<detector>``."""
    expected = (
        "an epoch count (integer >= 0), a fraction of the budget (number in [0, 1)) or 'auto:<detector>' with "
        "detector one of " + ", ".join(DETECTORS)
    )
    if isinstance(value, bool):
        return expected
    if isinstance(value, int):
        return None if value >= 0 else expected
    if isinstance(value, float):
        return None if 0 <= value < 1 else expected
    if isinstance(value, str) and value.startswith("auto:"):
        return None if value.removeprefix("auto:") in DETECTORS else expected
    return expected


KNOBS: dict[str, Knob] = {
    "optimizer": Knob("adamw", _one_of(*OPTIMIZERS), numeric=False, doc="optimizer"),
    "lr": Knob(0.01, _positive, doc="peak learning rate"),
    "momentum": Knob(0.9, _unit_interval, doc="SGD momentum"),
    "weight_decay": Knob(0.0005, _non_negative, doc="decoupled weight decay (AdamW) or L2 (SGD)"),
    "lr_schedule": Knob("cosine", _one_of(*LR_SCHEDULES), numeric=False, doc="learning-rate schedule"),
    "batch_size": Knob(100, _positive_int, doc="minibatch size"),
    "dropout": Knob(0.0, _unit_interval, doc="dropout rate before the classifier (and in MLP blocks)"),
    "label_noise": Knob(0.0, _unit_interval, doc="fraction of training labels flipped to another class"),
    "seed": Knob(0, _seed, doc="trial seed: initialisation, order, Mixup, label noise"),
    "mixup_alpha": Knob(0.0, _non_negative, doc="Mixup Beta(alpha, alpha); 0 disables Mixup"),
    "mixup_kind": Knob("input", _one_of(*MIXUP_KINDS), numeric=False, doc="Input or Manifold Mixup"),
    "mixup_off": Knob(0, _mixup_window, numeric=False, doc="early period trained without Mixup"),
    "early_mixup": Knob("pause", _one_of(*EARLY_MIXUP), numeric=False, doc="Mixup during the early period"),
    "alpha_boost": Knob(2.0, _at_least_one, doc="alpha multiplier in the early period when early_mixup=boost"),
    "high_loss_q": Knob(0.0, _unit_interval, doc="fraction of highest-loss samples dropped in the early period"),
    "pretrain": Knob("none", _one_of(*PRETRAIN_MODES), numeric=False, doc="DAE pretraining (mlp)"),
    "pretrain_noise": Knob("mask", _one_of(*PRETRAIN_NOISES), numeric=False, doc="DAE input corruption"),
    "pretrain_noise_level": Knob(0.2, _non_negative, doc="masking probability or Gaussian std"),
    "pretrain_epochs": Knob(5, _non_negative_int, doc="DAE pretraining epochs per layer"),
}
