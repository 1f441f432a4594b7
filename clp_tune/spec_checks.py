"""Checks of a spec that need more than field types: one knob entry against its knob, and the combinations of
keys that would validate and then fail or misbehave at run time (each raises :class:`SpecError` naming the keys).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clp_tune.knobs import KNOBS, is_number
from clp_tune.vocabulary import (
    DATASET_SHAPES,
    DISTRIBUTIONS,
    MODEL_INPUT_RANK,
    TRAIN_SIZES,
    TRAJECTORY_OPTIONS,
    detector_group,
)

if TYPE_CHECKING:
    from clp_tune.spec import Spec


class SpecError(ValueError):
    """A search-space file is unusable; ``str(error)`` names the file, the key and what was expected."""


def check_param(name: str, entry: Any, epochs: int) -> None:
    knob = KNOBS.get(name)
    if knob is None:
        raise SpecError(f"params.{name}: unknown parameter; expected one of {', '.join(KNOBS)}")

    def check_value(value: Any, key: str) -> None:
        expected = knob.check(value)
        if expected is not None:
            raise SpecError(f"{key}: expected {expected}, got {value!r}")
        if name == "mixup_off" and isinstance(value, int) and not isinstance(value, bool) and value > epochs:
            raise SpecError(f"{key}: the Mixup-off window ({value} epochs) is longer than the budget ({epochs} epochs)")

    if not isinstance(entry, dict):
        check_value(entry, f"params.{name}")
        return
    if len(entry) != 1 or next(iter(entry)) not in DISTRIBUTIONS:
        raise SpecError(
            f"params.{name}: expected a fixed value or a mapping with exactly one of "
            f"{', '.join(DISTRIBUTIONS)}, got {entry!r}"
        )
    kind, args = next(iter(entry.items()))
    key = f"params.{name}.{kind}"
    if kind in ("choice", "grid"):
        if not isinstance(args, list) or not args:
            raise SpecError(f"{key}: expected a non-empty list of values, got {args!r}")
        for index, value in enumerate(args):
            check_value(value, f"{key}[{index}]")
        return
    if not knob.numeric:
        raise SpecError(f"{key}: parameter {name!r} is not numeric; use 'choice' or a fixed value")
    if not isinstance(args, list) or len(args) != 2 or not all(is_number(a) for a in args):
        raise SpecError(f"{key}: expected [low, high] with two numbers, got {args!r}")
    low, high = args
    if low >= high:
        raise SpecError(
            f"{key}: expected low < high, got low={low!r} > high={high!r}"
            if low > high
            else f"{key}: expected low < high, got low = high = {low!r}; use a fixed value instead"
        )
    if kind == "int" and not all(isinstance(a, int) for a in args):
        raise SpecError(f"{key}: expected two integers, got {args!r}")
    if kind == "loguniform" and low <= 0:
        raise SpecError(f"{key}: expected low > 0 for a log scale, got {low!r}")
    check_value(low, f"{key}[0]")
    check_value(high, f"{key}[1]")


def _candidates(entry: Any) -> list[Any]:
    """The values a (checked) params entry can take that matter at its extremes: a fixed value, every value of a
    choice or grid, or both ends of a range."""
    if not isinstance(entry, dict):
        return [entry]
    return list(next(iter(entry.values())))


def check_mask_level(spec: Spec) -> None:
    """Masking noise drops each input with probability ``pretrain_noise_level``: it must stay below 1."""
    if "mask" not in _candidates(spec.params.get("pretrain_noise", KNOBS["pretrain_noise"].default)):
        return
    level = spec.params.get("pretrain_noise_level", KNOBS["pretrain_noise_level"].default)
    too_high = [v for v in _candidates(level) if isinstance(v, (int, float)) and v >= 1]
    if too_high:
        raise SpecError(
            f"params.pretrain_noise_level: masking noise (params.pretrain_noise: mask) needs a drop probability "
            f"in [0, 1), got {too_high[0]!r}"
        )


def check_compatibility(spec: Spec) -> None:
    rank, needed = len(DATASET_SHAPES[spec.dataset]), MODEL_INPUT_RANK[spec.model]
    if needed is not None and rank != needed:
        fitting = [name for name, shape in DATASET_SHAPES.items() if len(shape) == needed]
        wanted = ("a 1-D dataset" if needed == 1 else "an image dataset") + f" ({', '.join(fitting)})"
        got = "has images" if rank == 3 else "is 1-D"
        raise SpecError(f"model: {spec.model!r} needs {wanted}, but dataset {spec.dataset!r} {got}")
    pretrain = spec.params.get("pretrain", "none")
    check_mask_level(spec)
    if spec.model != "mlp" and pretrain != "none":
        raise SpecError(f"params.pretrain: autoencoder pretraining needs model 'mlp', not {spec.model!r}")
    if spec.scheduler.type == "trajectory":
        if (spec.metric, spec.mode) != ("val_acc", "max"):
            raise SpecError(
                f"scheduler.type: 'trajectory' predicts the final val_acc and needs metric val_acc and mode max, "
                f"got metric {spec.metric!r} and mode {spec.mode!r}"
            )
        if spec.scheduler.bank is not None and not Path(spec.scheduler.bank).is_file():
            raise SpecError(f"scheduler.bank: no such file {spec.scheduler.bank!r}")
    gridded = [name for name, entry in spec.searched().items() if "grid" in entry]
    if gridded and spec.searcher != "random":
        raise SpecError(f"params.{gridded[0]}.grid: a grid needs searcher 'random' (Optuna samples, it cannot grid)")


def _scheduler_value(spec: Spec, name: str) -> tuple[Any, str]:
    """A trajectory option's value (the spec's, else the scheduler's default) and how to show it in a message."""
    given = getattr(spec.scheduler, name)
    if given is not None:
        return given, f"{given!r}"
    default = TRAJECTORY_OPTIONS[name].default
    return default, f"{default!r}, the default; scheduler.{name} not given"


def check_scheduler_options(spec: Spec) -> None:
    """Scheduler options that are each valid but not together; each combination would otherwise validate and then
    fail once Ray has started, as the scheduler is built (or, for the median rule, never stop a trial).

    * ``hopeless <= delta`` (:class:`~clp_tune.stopping.policy.TrajectoryPolicy` refuses the rest: a trial too weak
      to pause would be stopped for good). Each side takes the scheduler's default when only the other is given,
      and it is checked whatever ``type`` is, as the options' own ranges are.
    * ``grace_period <= epochs`` for ``asha`` (Ray's ASHA asserts it) and ``median`` (a trial would never be
      judged: the rule would stop nothing).
    """
    options = spec.scheduler
    if options.hopeless is not None or options.delta is not None:
        hopeless, hopeless_shown = _scheduler_value(spec, "hopeless")
        delta, delta_shown = _scheduler_value(spec, "delta")
        if hopeless > delta:
            if options.hopeless is not None:
                raise SpecError(
                    f"scheduler.hopeless: must be <= scheduler.delta ({delta_shown}): a trial is stopped for good "
                    f"below hopeless and paused below delta; got {hopeless!r}"
                )
            raise SpecError(
                f"scheduler.delta: must be >= scheduler.hopeless ({hopeless_shown}): a trial is stopped for good "
                f"below hopeless and paused below delta; got {delta!r}"
            )
    if options.type in ("asha", "median") and options.grace_period is not None and options.grace_period > spec.epochs:
        why = "Ray's ASHA refuses a grace period past max_t" if options.type == "asha" else "no trial would be judged"
        raise SpecError(
            f"scheduler.grace_period: must be <= epochs ({spec.epochs}) for {options.type} ({why}); "
            f"got {options.grace_period}"
        )


def check_bank_library(spec: Spec) -> None:
    """The library a finished search adds its bank to must be a directory (a missing one is made then); a file found
    only at the end would cost the run its bank."""
    from clp_tune.stopping.user_banks import library_problem

    problem = library_problem(spec.bank_library)
    if problem:
        raise SpecError(problem)


def check_augment(spec: Spec) -> None:
    """Random crops and flips (``augment: true``) move pixels: they need images, not 1-D samples."""
    if spec.augment and len(DATASET_SHAPES[spec.dataset]) != 3:
        images = ", ".join(name for name, shape in DATASET_SHAPES.items() if len(shape) == 3)
        raise SpecError(f"augment: random crop and flip need an image dataset ({images}), got {spec.dataset!r}")


def check_repeats(spec: Spec) -> None:
    """With nothing searched and ``seed`` fixed, every trial would run the same configuration with the same seed."""
    if not spec.searched() and "seed" in spec.params and spec.num_samples > 1:
        raise SpecError(
            f"num_samples: {spec.num_samples} trials with nothing searched and params.seed fixed at "
            f"{spec.params['seed']!r} would all be identical; expected num_samples: 1, or params.seed left out "
            f"(the trials then repeat over seeds search_seed .. search_seed + num_samples - 1), "
            f"got num_samples {spec.num_samples}"
        )


def _has_early_epochs(window: Any, epochs: int) -> bool:
    """Whether a ``mixup_off`` value gives at least one early epoch (rounded as clp_tune.trial.early_period does)."""
    if isinstance(window, str):
        return True  # auto:<detector>: early until the detector fires, at least the first epoch
    if isinstance(window, float):
        return int(round(window * epochs)) > 0
    return window > 0


def check_high_loss_batches(spec: Spec) -> None:
    """Every early epoch must keep at least one full minibatch after ``high_loss_q`` drops its highest-loss samples.

    The trial keeps ``n_train - int(n_train * q)`` of the training split in each early epoch (the Mixup-off window
    given by ``mixup_off``; no window, no dropping) and raises "no full minibatch" when that is below the batch
    size, in every trial that draws such a pair. Checked at the worst case the spec allows: the largest q and the
    largest batch size (capped, as the trial caps it, at the training split).
    """
    q = max(_candidates(spec.params.get("high_loss_q", KNOBS["high_loss_q"].default)))
    windows = _candidates(spec.params.get("mixup_off", KNOBS["mixup_off"].default))
    if q <= 0 or not any(_has_early_epochs(window, spec.epochs) for window in windows):
        return
    n_train = TRAIN_SIZES[spec.dataset]
    given_batch = max(_candidates(spec.params.get("batch_size", KNOBS["batch_size"].default)))
    batch = min(int(given_batch), n_train)
    kept = n_train - int(n_train * q)
    if kept >= batch:
        return
    largest_q = math.floor((n_train - batch) / n_train * 1000) / 1000
    searched = {"high_loss_q", "batch_size"} & set(spec.searched())
    worst = " (the largest values the spec allows)" if searched else ""
    if given_batch > n_train:
        worst += f"; a batch_size above the training split is capped at its {n_train} samples"
    raise SpecError(
        f"params.high_loss_q and params.batch_size: an early epoch keeps n_train - int(n_train * q) = {kept} of "
        f"the {n_train} {spec.dataset} training samples, fewer than one minibatch, so every such trial would fail "
        f"with 'no full minibatch'; expected high_loss_q <= {largest_q} at batch_size {given_batch}, or batch_size "
        f"<= {kept} at high_loss_q {q}, got high_loss_q {q} and batch_size {given_batch}{worst}"
    )


def _missing_statistic(detector: str, statistics: list[str]) -> str | None:
    """The statistic group a detector needs but ``statistics`` leaves out; None when its input is reported.

    A detector reads one column (``vocabulary.DETECTOR_INPUT``); a column no statistic group produces (train_acc)
    is always reported. With the group off, the column never appears and the detector never fires: an ``auto``
    Mixup-off window then lasts the whole budget, and the trajectory scheduler waits for ``max_fraction`` in every
    trial.
    """
    group = detector_group(detector)
    return None if group is None or group in statistics else repr(group)


def check_detector_inputs(spec: Spec) -> None:
    """Every detector the spec relies on must have its input statistic switched on in ``statistics:``."""
    entry = spec.params.get("mixup_off")
    if entry is not None:
        if isinstance(entry, dict):
            kind, values = next(iter(entry.items()))
            keyed = [(f"params.mixup_off.{kind}[{index}]", value) for index, value in enumerate(values)]
        else:
            keyed = [("params.mixup_off", entry)]
        for key, value in keyed:
            if isinstance(value, str):
                missing = _missing_statistic(value.removeprefix("auto:"), spec.statistics)
                if missing:
                    raise SpecError(
                        f"{key}: {value} needs statistic {missing}, which statistics: leaves out (the detector "
                        f"would never fire); expected statistics: to include {missing}, got {spec.statistics}"
                    )
    if spec.scheduler.type == "trajectory":
        detector = spec.scheduler.detector or TRAJECTORY_OPTIONS["detector"].default
        missing = _missing_statistic(detector, spec.statistics)
        if missing:
            key = "scheduler.detector" if spec.scheduler.detector else "scheduler.type"
            given = "" if spec.scheduler.detector else " (the default; scheduler.detector not given)"
            raise SpecError(
                f"{key}: detector {detector!r}{given} needs statistic {missing}, which statistics: leaves out (it "
                f"would never fire); expected statistics: to include {missing}, got {spec.statistics}"
            )
