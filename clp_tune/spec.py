"""Search-space files: parse, validate and turn into a Ray Tune ``param_space``.

A spec is validated completely before Ray starts, so a typo costs seconds, not a cluster allocation. Every
problem is reported as a :class:`SpecError` naming the key (``params.lr.loguniform``) and what was expected;
the CLI prints it and exits with code 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator

from clp_tune.knobs import KNOBS
from clp_tune.spec_checks import (
    SpecError,
    check_augment,
    check_bank_library,
    check_compatibility,
    check_detector_inputs,
    check_high_loss_batches,
    check_param,
    check_repeats,
    check_scheduler_options,
)
from clp_tune.vocabulary import (
    CHECKPOINTS_KEPT,
    DATASETS,
    GPU_CHECKPOINT_EVERY,
    MODELS,
    SCHEDULER_TYPES,
    SEARCHERS,
    STATISTIC_GROUPS,
    TRAJECTORY_OPTIONS,
    augments_by_default,
)

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
    # The user's bank library (clp_tune.stopping.user_banks): a directory, or "off"; default $CLP_TUNE_BANKS, else
    # ~/.cache/clp_tune/banks. A finished search adds its trajectories; a trajectory search fits on its newest matches.
    bank_library: str | None = Field(None, min_length=1)
    statistics: list[str] = Field(default_factory=lambda: list(STATISTIC_GROUPS))
    # How a trial trains on its device (not searched): augmentation (default: on for CIFAR, off elsewhere); on CUDA,
    # bf16 autocast and channels-last (on) and torch.compile (off); epochs between checkpoints (default: 1 on CPU,
    # vocabulary.GPU_CHECKPOINT_EVERY for GPU trials; the last epoch always checkpoints).
    augment: bool | None = None
    bf16: bool = True
    channels_last: bool = True
    compile: bool = False
    checkpoint_every: int | None = Field(None, gt=0)
    # Checkpoints Ray keeps per trial (CheckpointConfig(num_to_keep)); see vocabulary.CHECKPOINTS_KEPT.
    checkpoints_kept: int = Field(CHECKPOINTS_KEPT, gt=0)
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

    def grid_sizes(self) -> dict[str, int]:
        """The knobs searched over a grid and the number of values of each: Tune runs every combination of the grids
        (their product) ``num_samples`` times."""
        return {name: len(entry["grid"]) for name, entry in self.searched().items() if "grid" in entry}

    def trial_count(self) -> int:
        """How many trials the search runs: ``num_samples`` times the product of the grid sizes (Tune repeats every
        grid point ``num_samples`` times), or the ``num_samples`` repeats over seeds (:meth:`repeat_seeds`)."""
        seeds = self.repeat_seeds()
        return len(seeds) if seeds is not None else self.num_samples * math.prod(self.grid_sizes().values())

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
        config["augment"] = augments_by_default(self.dataset) if self.augment is None else self.augment
        config.update(bf16=self.bf16, channels_last=self.channels_last, compile=self.compile)
        default_every = GPU_CHECKPOINT_EVERY if self.resources.gpu > 0 else 1
        config["checkpoint_every"] = self.checkpoint_every or default_every
        for name, knob in KNOBS.items():
            value = self.params.get(name, knob.default)
            if not isinstance(value, dict):
                config[name] = value
        return config


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
            check_param(name, entry, spec.epochs)
        check_compatibility(spec)
        check_repeats(spec)
        check_high_loss_batches(spec)
        check_detector_inputs(spec)
        check_augment(spec)
        check_bank_library(spec)
        check_scheduler_options(spec)
    except SpecError as error:
        raise SpecError(f"{source}: {error}") from None
    return spec


class _DuplicateKey(yaml.YAMLError):
    """A mapping of the spec repeats a key; ``str(error)`` names it (dotted path and line)."""


def _key_path(path: str, key: object) -> str:
    return f"{path}.{key}" if path else str(key)


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that repeats a key: plain PyYAML keeps the last value silently, so a
    second ``lr: 0.001`` under ``params`` would quietly drop ``lr`` from the search.

    The composed document is walked once before it is constructed, so the error names the key's dotted path
    (``params.lr``) and both lines. Each node is visited once however many aliases share it (an alias bomb stays
    linear; :mod:`clp_tune.spec_guard` refuses one before this runs). A key that only overrides what a merge key
    (``<<: *anchor``) brought in is YAML's intended override, not a repeat.
    """

    def construct_document(self, node: yaml.Node) -> Any:
        self._refuse_duplicate_keys(node)
        return super().construct_document(node)

    def _refuse_duplicate_keys(self, root: yaml.Node) -> None:
        """Raise :class:`_DuplicateKey` for the first repeated key in the file (by line), if any."""
        stack: list[tuple[yaml.Node, str]] = [(root, "")]
        visited: set[int] = set()
        repeats: list[tuple[int, str]] = []  # (line, message)
        while stack:
            node, path = stack.pop()
            if id(node) in visited:
                continue
            visited.add(id(node))
            if isinstance(node, yaml.SequenceNode):
                stack.extend((child, f"{path}[{index}]") for index, child in enumerate(node.value))
            elif isinstance(node, yaml.MappingNode):
                first_lines: dict[Any, int] = {}
                for key_node, value_node in node.value:
                    if key_node.tag == "tag:yaml.org,2002:merge":
                        stack.append((value_node, path))
                        continue
                    if not isinstance(key_node, yaml.ScalarNode):  # a complex key: no spec has one; pydantic refuses
                        stack.append((value_node, _key_path(path, "?")))
                        continue
                    key = self.construct_object(key_node, deep=True)
                    line = key_node.start_mark.line + 1
                    if key in first_lines:
                        repeats.append((line, f"{_key_path(path, key)}: duplicate key {key!r} at line {line} (first "
                                              f"at line {first_lines[key]}); expected each key once (YAML would keep "
                                              f"the last value silently)"))  # fmt: skip
                    else:
                        first_lines[key] = line
                    stack.append((value_node, _key_path(path, key)))
        if repeats:
            raise _DuplicateKey(min(repeats)[1])


def load_spec(path: str | Path) -> Spec:
    """Read and validate a search-space YAML file (a key repeated in a mapping is refused, not silently dropped)."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as error:
        raise SpecError(f"{path}: cannot read the file ({error})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no arbitrary objects
    except _DuplicateKey as error:
        raise SpecError(f"{path}: {error}") from None
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
