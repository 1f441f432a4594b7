"""Search-space files: parse, validate and turn into a Ray Tune ``param_space``.

A spec is validated completely before Ray starts, so a typo costs seconds, not a cluster allocation. Every
problem is reported as a :class:`SpecError` naming the key (``params.lr.loguniform``) and what was expected;
the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator

from clp_tune.vocabulary import (
    DATASET_SHAPES,
    DATASETS,
    DETECTORS,
    DISTRIBUTIONS,
    EARLY_MIXUP,
    LR_SCHEDULES,
    MIXUP_KINDS,
    MODEL_INPUT_RANK,
    MODELS,
    OPTIMIZERS,
    PRETRAIN_MODES,
    PRETRAIN_NOISES,
    SCHEDULER_TYPES,
    SEARCHERS,
    STATISTIC_GROUPS,
    TRAIN_SIZES,
    TRAJECTORY_OPTIONS,
    detector_group,
)


class SpecError(ValueError):
    """A search-space file is unusable; ``str(error)`` names the file, the key and what was expected."""


# --- the knobs a trial understands -------------------------------------------------------------------------


@dataclass(frozen=True)
class Knob:
    """One trial hyperparameter: its default and a check returning what was expected, or None if fine."""

    default: Any
    check: Callable[[Any], str | None]
    numeric: bool = True
    doc: str = ""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _positive(value: Any) -> str | None:
    return None if _is_number(value) and value > 0 else "a number > 0"


def _non_negative(value: Any) -> str | None:
    return None if _is_number(value) and value >= 0 else "a number >= 0"


def _unit_interval(value: Any) -> str | None:
    return None if _is_number(value) and 0 <= value < 1 else "a number in [0, 1)"


def _at_least_one(value: Any) -> str | None:
    return None if _is_number(value) and value >= 1 else "a number >= 1"


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


# --- the file's structure ----------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class Resources(_Strict):
    """Resources per trial; a GPU fraction below 1 packs several trials on one GPU."""

    cpu: float = Field(1.0, gt=0)
    gpu: float = Field(0.0, ge=0, le=1)

    @field_validator("cpu", "gpu", mode="before")
    @classmethod
    def _numbers(cls, value: Any) -> Any:
        return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


class _SchedulerOptions(_Strict):
    """Which trial scheduler stops trials early, and its options (only those of the chosen type apply).

    The trajectory options (``clp_tune.vocabulary.TRAJECTORY_OPTIONS``) are added as fields by
    :data:`SchedulerSpec`; those left out keep the scheduler's defaults.
    """

    type: Literal[SCHEDULER_TYPES] = "fifo"  # type: ignore[valid-type]
    grace_period: int | None = Field(None, gt=0, description="asha/median: epochs before a trial can be stopped")
    reduction_factor: float = Field(3.0, gt=1, description="asha: keep 1/reduction_factor at each rung")
    bank: str | None = Field(None, description="trajectory: bank Parquet for the predictor's prior")

    @field_validator(*TRAJECTORY_OPTIONS, check_fields=False)
    @classmethod
    def _valid_option(cls, value: Any, info: ValidationInfo) -> Any:
        option = TRAJECTORY_OPTIONS[info.field_name]
        if value is not None and not option.valid(value):
            raise ValueError(f"expected {option.expected}, got {value!r}")
        return value

    def trajectory_options(self) -> dict[str, Any]:
        """The trajectory scheduler's options given in the spec (the rest keep the scheduler's defaults)."""
        names = (*TRAJECTORY_OPTIONS, "bank")
        return {name: getattr(self, name) for name in names if getattr(self, name) is not None}


SchedulerSpec = create_model(
    "SchedulerSpec",
    __base__=_SchedulerOptions,
    **{
        name: (option.type | None, Field(None, description=f"trajectory: {option.help}"))
        for name, option in TRAJECTORY_OPTIONS.items()
    },
)


class Spec(_Strict):
    """A validated search-space file. ``params`` holds the raw knob entries (scalars or distributions)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    dataset: Literal[DATASETS]  # type: ignore[valid-type]
    model: Literal[MODELS]  # type: ignore[valid-type]
    epochs: int = Field(gt=0)
    num_samples: int = Field(gt=0)
    metric: Literal["val_acc", "val_loss"] = "val_acc"
    mode: Literal["max", "min"] = "max"
    searcher: Literal[SEARCHERS] = "optuna"  # type: ignore[valid-type]
    search_seed: int = Field(0, ge=0)
    scheduler: SchedulerSpec = SchedulerSpec()
    max_concurrent_trials: int = Field(2, gt=0)
    resources: Resources = Resources()
    max_failures: int = Field(1, ge=0)
    statistics: list[str] = Field(default_factory=lambda: list(STATISTIC_GROUPS))
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("scheduler", mode="before")
    @classmethod
    def _scheduler_shorthand(cls, value: Any) -> Any:
        return {"type": value} if isinstance(value, str) else value

    @field_validator("statistics", mode="before")
    @classmethod
    def _statistics_shorthand(cls, value: Any) -> Any:
        if value == "all":
            return list(STATISTIC_GROUPS)
        if value in ("none", None):
            return []
        return value

    @field_validator("statistics")
    @classmethod
    def _known_statistics(cls, value: list[str]) -> list[str]:
        unknown = [name for name in value if name not in STATISTIC_GROUPS]
        if unknown:
            raise ValueError(f"unknown statistic {unknown[0]!r}; expected some of {', '.join(STATISTIC_GROUPS)}")
        return value

    def searched(self) -> dict[str, dict[str, Any]]:
        """The knobs given as distributions, as ``{name: {kind: args}}``."""
        return {k: v for k, v in self.params.items() if isinstance(v, dict)}

    def repeat_seeds(self) -> range | None:
        """The seeds of a spec with nothing searched and ``seed`` left out: the recipe runs once per seed,
        ``search_seed .. search_seed + num_samples - 1``. None when something is searched or ``seed`` is fixed.

        A searcher has nothing to sample then (Optuna refuses an empty space), and ``num_samples`` draws of one
        fixed configuration would be the same trial ``num_samples`` times; repeats over seeds is what such a spec
        can only mean: how much the recipe's result varies from seed to seed.
        """
        if self.searched() or "seed" in self.params:
            return None
        return range(self.search_seed, self.search_seed + self.num_samples)

    def tune_num_samples(self) -> int:
        """``TuneConfig.num_samples``: 1 when the trials are a grid over :meth:`repeat_seeds` (the grid makes
        ``num_samples`` trials), else ``num_samples``."""
        return 1 if self.repeat_seeds() is not None else self.num_samples

    def search_summary(self) -> str:
        """What the search varies, in words (``clp-tune validate`` prints it)."""
        if self.searched():
            return ", ".join(self.searched())
        seeds = self.repeat_seeds()
        if seeds is None:
            return f"nothing — 1 trial of the recipe (params.seed {self.params['seed']})"
        if len(seeds) == 1:
            return f"nothing — 1 trial of the recipe (seed {seeds[0]})"
        return f"nothing — {len(seeds)} repeats over seeds {seeds[0]}..{seeds[-1]}"

    def fixed_config(self) -> dict[str, Any]:
        """Everything a trial needs that is not searched: settings, knob defaults and fixed knob values."""
        config: dict[str, Any] = {"dataset": self.dataset, "model": self.model, "epochs": self.epochs}
        config["statistics"] = ",".join(self.statistics)
        for name, knob in KNOBS.items():
            value = self.params.get(name, knob.default)
            if not isinstance(value, dict):
                config[name] = value
        return config


# --- checks that need more than field types ---------------------------------------------------------------


def _check_param(name: str, entry: Any, epochs: int) -> None:
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
    if not isinstance(args, list) or len(args) != 2 or not all(_is_number(a) for a in args):
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


def _values(entry: Any) -> list[Any]:
    """Every value a knob entry can take: a fixed value, a choice or grid's values, or a range's ends."""
    if not isinstance(entry, dict):
        return [entry]
    ((_, args),) = entry.items()
    return list(args) if isinstance(args, list) else []


def _check_mask_level(spec: Spec) -> None:
    """Masking noise drops each input with probability ``pretrain_noise_level``: it must stay below 1."""
    if "mask" not in _values(spec.params.get("pretrain_noise", KNOBS["pretrain_noise"].default)):
        return
    level = spec.params.get("pretrain_noise_level", KNOBS["pretrain_noise_level"].default)
    too_high = [v for v in _values(level) if isinstance(v, (int, float)) and v >= 1]
    if too_high:
        raise SpecError(
            f"params.pretrain_noise_level: masking noise (params.pretrain_noise: mask) needs a drop probability "
            f"in [0, 1), got {too_high[0]!r}"
        )


def _check_compatibility(spec: Spec) -> None:
    rank, needed = len(DATASET_SHAPES[spec.dataset]), MODEL_INPUT_RANK[spec.model]
    if needed is not None and rank != needed:
        wanted = "a 1-D dataset (mnist1d)" if needed == 1 else "an image dataset"
        got = "has images" if rank == 3 else "is 1-D"
        raise SpecError(f"model: {spec.model!r} needs {wanted}, but dataset {spec.dataset!r} {got}")
    pretrain = spec.params.get("pretrain", "none")
    _check_mask_level(spec)
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


def _check_repeats(spec: Spec) -> None:
    """With nothing searched and ``seed`` fixed, every trial would run the same configuration with the same seed."""
    if not spec.searched() and "seed" in spec.params and spec.num_samples > 1:
        raise SpecError(
            f"num_samples: {spec.num_samples} trials with nothing searched and params.seed fixed at "
            f"{spec.params['seed']!r} would all be identical; expected num_samples: 1, or params.seed left out "
            f"(the trials then repeat over seeds search_seed .. search_seed + num_samples - 1), "
            f"got num_samples {spec.num_samples}"
        )


def _candidates(entry: Any) -> list[Any]:
    """The values a (checked) params entry can take that matter at its extremes: a fixed value, every value of a
    choice or grid, or both ends of a range."""
    if not isinstance(entry, dict):
        return [entry]
    return list(next(iter(entry.values())))


def _has_early_epochs(window: Any, epochs: int) -> bool:
    """Whether a ``mixup_off`` value gives at least one early epoch (rounded as clp_tune.trial.early_period does)."""
    if isinstance(window, str):
        return True  # auto:<detector>: early until the detector fires, at least the first epoch
    if isinstance(window, float):
        return int(round(window * epochs)) > 0
    return window > 0


def _check_high_loss_batches(spec: Spec) -> None:
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


def _check_detector_inputs(spec: Spec) -> None:
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


def _format_pydantic(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        if item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif item["type"] == "missing":
            lines.append(f"{key}: required key is missing")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "; ".join(lines)


def parse_spec(data: Any, source: str = "<spec>") -> Spec:
    """Validate already-loaded YAML data; raises :class:`SpecError` with the key and what was expected."""
    if not isinstance(data, dict):
        raise SpecError(f"{source}: expected a YAML mapping of keys (name, dataset, model, ...), got {data!r:.80}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as error:
        raise SpecError(f"{source}: {_format_pydantic(error)}") from None
    try:
        for name, entry in spec.params.items():
            _check_param(name, entry, spec.epochs)
        _check_compatibility(spec)
        _check_repeats(spec)
        _check_high_loss_batches(spec)
        _check_detector_inputs(spec)
    except SpecError as error:
        raise SpecError(f"{source}: {error}") from None
    return spec


def load_spec(path: str | Path) -> Spec:
    """Read and validate a search-space YAML file."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the file ({error})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise SpecError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    return parse_spec(data, str(path))


def param_space(spec: Spec) -> dict[str, Any]:
    """The Ray Tune ``param_space``: fixed settings as constants, searched knobs as Tune domains.

    With nothing searched and ``seed`` left out, ``seed`` is a grid over :meth:`Spec.repeat_seeds` (run with
    ``num_samples`` 1, :meth:`Spec.tune_num_samples`): ``num_samples`` trials with distinct seeds.
    """
    from ray import tune

    space: dict[str, Any] = spec.fixed_config()
    seeds = spec.repeat_seeds()
    if seeds is not None:
        space["seed"] = tune.grid_search(list(seeds))
    for name, entry in spec.searched().items():
        kind, args = next(iter(entry.items()))
        if kind == "choice":
            space[name] = tune.choice(args)
        elif kind == "grid":
            space[name] = tune.grid_search(args)
        elif kind == "uniform":
            space[name] = tune.uniform(*args)
        elif kind == "loguniform":
            space[name] = tune.loguniform(*args)
        else:
            space[name] = tune.randint(args[0], args[1] + 1)
    return space
