"""One trial's training recipe, readable top to bottom: build everything from the config, then train epoch by epoch.

The data lives on the trial's device for the whole run; every epoch ends with one ``report(row, state)`` carrying the
metrics, the trajectory statistics, the critical-period detectors' verdicts and a snapshot of the :class:`TrialState`,
so a trial killed with its node resumes where it stopped and continues bit for bit. A non-finite loss ends the trial
as ``diverged`` instead of raising, so one bad configuration never takes the search down.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from torch.nn import functional as F

from clp_tune.trial.data import Splits, load_dataset
from clp_tune.trial.detectors import detect_all
from clp_tune.trial.device import DevicePath
from clp_tune.trial.early_period import EarlyPeriod
from clp_tune.trial.label_noise import corrupt_labels
from clp_tune.trial.mixup import draw_mix_point, forward_and_loss
from clp_tune.trial.model import BlockNet, build_model
from clp_tune.trial.pretrain import pretrain_dae
from clp_tune.trial.statistics import PROBE_SIZE, TrajectoryStatistics
from clp_tune.vocabulary import DETECTOR_INPUT, DETECTORS

EVAL_BATCH = 2048  # samples per evaluation forward pass: bounds the memory of evaluating a large split at once

#: ``report(row, state)``: one call per epoch; ``state`` is :meth:`TrialState.state_dict`, None once diverged.
Report = Callable[[dict[str, Any], dict[str, Any] | None], None]


@runtime_checkable
class _Stateful(Protocol):
    """What modules, optimizers, schedules, statistics and the early period share: a state dict in and out."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@dataclass
class TrialState:
    """Everything one epoch hands to the next: the checkpoint, so a trial resumed from it continues bit for bit.

    The fields drive saving and restoring: :meth:`state_dict` snapshots each field by its type and
    :meth:`load_state_dict` loads each one back the same way, so a field added here is checkpointed with no other edit.
    """

    epoch: int  # the last finished epoch (0 before the first)
    model: BlockNet
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    statistics: TrajectoryStatistics
    early: EarlyPeriod
    # Separate random streams: the data order must not depend on how many Mixup permutations were drawn, or two
    # trials differing only in their Mixup window would also see different data after it.
    order_generator: torch.Generator  # the data order
    mix_generator: torch.Generator  # Mixup's permutations
    mix_rng: np.random.Generator  # Mixup's lambda and layer
    augment_generator: torch.Generator  # the crops and flips (drawn only when the trial augments)
    dropout_generator: torch.Generator  # torch's global stream on the trial's device, which dropout draws from
    history: dict[str, list[float]]  # the detectors' input columns, one value per finished epoch
    fixed_columns: dict[str, float]  # pretraining's results, on every row (a resumed trial does not pretrain again)

    def state_dict(self) -> dict[str, Any]:
        """A snapshot of every field. Tensors are shared with the live objects: save it before the next step."""
        return {field.name: _snapshot(getattr(self, field.name)) for field in fields(self)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` snapshot (as ``torch.load`` returns it, on any device)."""
        for field in fields(self):
            setattr(self, field.name, _restored(getattr(self, field.name), state[field.name]))


def _snapshot(value: Any) -> Any:
    """The saveable state of one :class:`TrialState` field."""
    if isinstance(value, torch.Generator):
        return value.get_state()
    if isinstance(value, np.random.Generator):
        return value.bit_generator.state
    if isinstance(value, _Stateful):
        return value.state_dict()
    return value  # plain data


def _restored(live: Any, saved: Any) -> Any:
    """``live`` with the snapshot ``saved`` loaded into it, or ``saved`` itself for plain data."""
    if isinstance(live, torch.Generator):
        live.set_state(saved.cpu())  # generator states are CPU byte tensors, also where torch.load mapped them to a GPU
    elif isinstance(live, np.random.Generator):
        live.bit_generator.state = saved
    elif isinstance(live, _Stateful):
        live.load_state_dict(saved)
    else:
        return saved
    return live


def _global_generator(device: torch.device) -> torch.Generator:
    """torch's default generator on ``device``: the stream dropout draws from there."""
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator


def _evaluate(
    model: BlockNet, x: torch.Tensor, y: torch.Tensor, splits: Splits, path: DevicePath
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode (stored samples made inputs per chunk)."""
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    with torch.no_grad(), path.autocast():
        for start in range(0, len(x), EVAL_BATCH):
            logits = model(path.layout(splits.inputs(x[start : start + EVAL_BATCH]))).float()
            target = y[start : start + EVAL_BATCH]
            loss += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
    model.train()
    return loss.item() / len(x), correct.item() / len(x)


def _per_sample_loss(model: BlockNet, y: torch.Tensor, splits: Splits, path: DevicePath) -> torch.Tensor:
    """Every training sample's loss in eval mode, unaugmented: what high-loss removal ranks the samples by."""
    model.eval()
    x = splits.x_train
    with torch.no_grad(), path.autocast():
        losses = torch.cat(
            [F.cross_entropy(model(path.layout(splits.inputs(x[s : s + EVAL_BATCH]))).float(), y[s : s + EVAL_BATCH],
                             reduction="none")
             for s in range(0, len(x), EVAL_BATCH)]
        )  # fmt: skip
    model.train()
    return losses


def _optimizer(model: BlockNet, config: dict[str, Any]) -> torch.optim.Optimizer:
    """SGD (Nesterov whenever there is momentum) or AdamW with decoupled weight decay."""
    if config["optimizer"] == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config["lr"], momentum=config["momentum"],
            weight_decay=config["weight_decay"], nesterov=config["momentum"] > 0,
        )  # fmt: skip
    return torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=config["weight_decay"])


def _schedule(optimizer: torch.optim.Optimizer, kind: str, total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per-step cosine decay to zero over the planned budget, or a constant rate."""
    if kind == "constant":
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(step, total_steps) / total_steps))
    )


def _steps(trial: TrialState, splits: Splits, y_train: torch.Tensor, order: torch.Tensor, batch_size: int,
           alpha: float, mixup_kind: str, path: DevicePath,
           forward: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:  # fmt: skip
    """One pass of full minibatches over ``order``: summed loss and correct count (on the device), samples seen."""
    model, optimizer = trial.model, trial.optimizer
    model.train()
    loss_sum, correct, seen = torch.zeros((), device=y_train.device), torch.zeros((), device=y_train.device), 0
    for start in range(0, len(order) - batch_size + 1, batch_size):
        index = order[start : start + batch_size]
        x = path.training_batch(splits.x_train[index], splits.inputs, trial.augment_generator)
        y = y_train[index]
        mix = (
            draw_mix_point(model, len(y), alpha, mixup_kind, trial.mix_rng, trial.mix_generator) if alpha > 0 else None
        )
        with path.autocast():
            loss, batch_correct = forward_and_loss(forward, x, y, mix)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        trial.statistics.observe_step(model, optimizer.param_groups[0]["lr"])
        optimizer.step()
        trial.schedule.step()
        loss_sum += loss.detach() * len(y)
        correct += batch_correct
        seen += len(y)
    return loss_sum, correct, seen


def _detect(trial: TrialState, row: dict[str, Any], budget: int) -> None:
    """Extend the detectors' history with ``row``, rerun them and write their verdicts (NaN: not fired) into it.

    The early period learns here when an ``auto:<detector>`` window ends."""
    for column in trial.history:
        trial.history[column].append(row.get(column, math.nan))
    fired = detect_all({c: v for c, v in trial.history.items() if not all(map(math.isnan, v))}, budget)
    trial.early.observe(fired)
    for name in DETECTORS:
        row[f"cp_end_{name}"] = math.nan if fired.get(name) is None else float(fired[name])


def _epoch(trial: TrialState, epoch: int, splits: Splits, y_train: torch.Tensor, batch_size: int,
           config: dict[str, Any], path: DevicePath,
           forward: Callable[..., torch.Tensor]) -> dict[str, Any]:  # fmt: skip
    """Train epoch ``epoch`` and return its row; ``diverged = 1`` (and no evaluation) when the loss is not finite."""
    started = time.perf_counter()
    alpha = trial.early.alpha(epoch)
    order = torch.randperm(len(y_train), generator=trial.order_generator).to(y_train.device)
    if trial.early.drops_high_loss(epoch):
        kept = trial.early.keep_indices(_per_sample_loss(trial.model, y_train, splits, path))
        order = order[torch.isin(order, kept)]
    loss_sum, correct, seen = _steps(trial, splits, y_train, order, batch_size, alpha, config["mixup_kind"], path,
                                     forward)  # fmt: skip
    if seen == 0:
        raise ValueError(
            f"epoch {epoch} has no full minibatch: {len(order)} training samples left "
            f"(high_loss_q={config['high_loss_q']}) for batch_size {batch_size}"
        )

    train_loss = loss_sum.item() / seen
    row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / seen}
    row["lr"] = trial.optimizer.param_groups[0]["lr"]
    row["mixup_alpha_used"] = alpha
    row["train_samples"] = seen
    if not math.isfinite(train_loss):
        row.update(diverged=1, val_loss=math.nan, val_acc=0.0, epoch_seconds=time.perf_counter() - started)
        return row
    row["val_loss"], row["val_acc"] = _evaluate(trial.model, splits.x_val, splits.y_val, splits, path)
    row["diverged"] = 0
    row.update(trial.statistics.end_epoch(trial.model, train_loss))
    row.update(trial.fixed_columns)
    _detect(trial, row, int(config["epochs"]))
    if epoch == int(config["epochs"]):
        row["test_loss"], row["test_acc"] = _evaluate(trial.model, splits.x_test, splits.y_test, splits, path)
    row["epoch_seconds"] = time.perf_counter() - started
    return row


def run_trial(config: dict[str, Any], report: Report, state: dict[str, Any] | None = None,
              splits: Splits | None = None, device: torch.device | str = "cpu",
              statistics_type: type[TrajectoryStatistics] = TrajectoryStatistics) -> None:  # fmt: skip
    """Train one configuration, calling ``report(row, state)`` after every epoch.

    ``state`` (from a previous ``report``) resumes a trial; ``splits`` may be passed in to skip loading data;
    ``statistics_type`` lets a benchmark time the statistics (a subclass) without touching this module.
    """
    device = torch.device(device)
    seed, budget = int(config["seed"]), int(config["epochs"])
    torch.manual_seed(seed)
    splits = (splits or load_dataset(config["dataset"])).to(device)
    y_train = corrupt_labels(splits.y_train, config["label_noise"], splits.num_classes, seed)
    model = build_model(config["model"], splits.input_shape, splits.num_classes, config["dropout"]).to(device)
    path = DevicePath.from_config(config, device)

    fixed_columns: dict[str, float] = {}
    if config.get("pretrain", "none") != "none" and state is None:
        fixed_columns = pretrain_dae(
            model, splits.inputs(splits.x_train), config["pretrain"], config["pretrain_noise"],
            config["pretrain_noise_level"], config["pretrain_epochs"], int(config["batch_size"]), 1e-3, seed,
        )  # fmt: skip

    probe = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed + 1))[:PROBE_SIZE].to(device)
    enabled = [name for name in str(config.get("statistics", "")).split(",") if name]
    batch_size = min(int(config["batch_size"]), len(y_train))
    optimizer = _optimizer(model, config)
    trial = TrialState(
        epoch=0,
        model=model,
        optimizer=optimizer,
        schedule=_schedule(optimizer, config["lr_schedule"], budget * (len(y_train) // batch_size)),
        statistics=statistics_type(
            model, splits.inputs(splits.x_train[probe]), y_train[probe], enabled, splits.num_classes, seed
        ),
        early=EarlyPeriod(
            config["mixup_off"],
            budget,
            config["mixup_alpha"],
            config["early_mixup"],
            config["alpha_boost"],
            config["high_loss_q"],
        ),  # fmt: skip
        order_generator=torch.Generator().manual_seed(seed + 2),
        mix_generator=torch.Generator().manual_seed(seed + 4),
        mix_rng=np.random.default_rng(seed + 3),
        augment_generator=torch.Generator().manual_seed(seed + 5),
        dropout_generator=_global_generator(device),
        history={column: [] for column in dict.fromkeys(DETECTOR_INPUT.values())},
        fixed_columns=fixed_columns,
    )
    if state is not None:
        trial.load_state_dict(state)
    forward = path.prepare(model)  # after loading: channels-last weights, compiled forward

    for epoch in range(trial.epoch + 1, budget + 1):
        row = _epoch(trial, epoch, splits, y_train, batch_size, config, path, forward)
        if row["diverged"]:
            report(row, None)
            return
        trial.epoch = epoch
        report(row, trial.state_dict())
