"""The Ray Tune function trainable: one trial's whole training recipe, readable top to bottom.

The data lives on the trial's device for the whole run; every epoch ends with one ``tune.report`` carrying the
metrics, the trajectory statistics, the critical-period detectors' verdicts and a checkpoint, so a trial killed
with its node resumes where it stopped. A non-finite loss ends the trial as ``diverged`` instead of raising,
so one bad configuration never takes the search down.
"""

from __future__ import annotations

import logging
import math
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from clp_tune.trial.data import Splits, load_dataset
from clp_tune.trial.detectors import DETECTOR_INPUT, DETECTORS, detect_all
from clp_tune.trial.early_period import EarlyPeriod
from clp_tune.trial.label_noise import corrupt_labels
from clp_tune.trial.mixup import draw_mix_point, forward_and_loss
from clp_tune.trial.model import BlockNet, build_model
from clp_tune.trial.pretrain import pretrain_dae
from clp_tune.trial.statistics import TrajectoryStatistics

PROBE_SIZE = 64  # the per-sample statistics cost grows linearly with the probe set
EVAL_BATCH = 2048
CHECKPOINT_FILE = "trial_state.pt"

Report = Callable[[dict[str, Any], dict[str, Any] | None], None]


def _evaluate(model: BlockNet, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy over a whole split, in eval mode."""
    model.eval()
    loss, correct = torch.zeros((), device=x.device), torch.zeros((), device=x.device)
    with torch.no_grad():
        for start in range(0, len(x), EVAL_BATCH):
            logits = model(x[start : start + EVAL_BATCH])
            target = y[start : start + EVAL_BATCH]
            loss += F.cross_entropy(logits, target, reduction="sum")
            correct += (logits.argmax(1) == target).sum()
    model.train()
    return loss.item() / len(x), correct.item() / len(x)


def _per_sample_loss(model: BlockNet, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        losses = torch.cat(
            [F.cross_entropy(model(x[s : s + EVAL_BATCH]), y[s : s + EVAL_BATCH], reduction="none")
             for s in range(0, len(x), EVAL_BATCH)]
        )  # fmt: skip
    model.train()
    return losses


def _optimizer(model: BlockNet, config: dict[str, Any]) -> torch.optim.Optimizer:
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

    fixed_columns: dict[str, float] = {}
    if config.get("pretrain", "none") != "none" and state is None:
        fixed_columns = pretrain_dae(
            model, splits.x_train, config["pretrain"], config["pretrain_noise"], config["pretrain_noise_level"],
            config["pretrain_epochs"], int(config["batch_size"]), 1e-3, seed,
        )  # fmt: skip

    probe = torch.randperm(len(y_train), generator=torch.Generator().manual_seed(seed + 1))[:PROBE_SIZE].to(device)
    enabled = [name for name in str(config.get("statistics", "")).split(",") if name]
    statistics = statistics_type(model, splits.x_train[probe], y_train[probe], enabled, splits.num_classes, seed)
    early = EarlyPeriod(
        config["mixup_off"], budget, config["mixup_alpha"], config["early_mixup"], config["alpha_boost"],
        config["high_loss_q"],
    )  # fmt: skip
    batch_size = min(int(config["batch_size"]), len(y_train))
    steps_per_epoch = len(y_train) // batch_size
    optimizer = _optimizer(model, config)
    schedule = _schedule(optimizer, config["lr_schedule"], budget * steps_per_epoch)
    # Separate streams: the data order must not depend on how many Mixup permutations were drawn, or two trials
    # differing only in their Mixup window would also see different data after it.
    order_generator = torch.Generator().manual_seed(seed + 2)
    mix_rng = np.random.default_rng(seed + 3)
    mix_generator = torch.Generator().manual_seed(seed + 4)
    history: dict[str, list[float]] = {column: [] for column in set(DETECTOR_INPUT.values())}
    start_epoch = 1

    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        statistics.load_state_dict(state["statistics"])
        early.load_state_dict(state["early"])
        order_generator.set_state(state["order_generator"])
        mix_generator.set_state(state["mix_generator"])
        mix_rng.bit_generator.state = state["mix_rng"]
        history, fixed_columns = state["history"], state["fixed_columns"]
        start_epoch = state["epoch"] + 1

    for epoch in range(start_epoch, budget + 1):
        started = time.perf_counter()
        alpha = early.alpha(epoch)
        order = torch.randperm(len(y_train), generator=order_generator).to(device)
        if early.drops_high_loss(epoch):
            kept = early.keep_indices(_per_sample_loss(model, splits.x_train, y_train))
            order = order[torch.isin(order, kept)]
        model.train()
        loss_sum, correct, seen = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for start in range(0, len(order) - batch_size + 1, batch_size):
            index = order[start : start + batch_size]
            x, y = splits.x_train[index], y_train[index]
            mix = (
                draw_mix_point(model, len(y), alpha, config["mixup_kind"], mix_rng, mix_generator)
                if alpha > 0
                else None
            )
            loss, batch_correct = forward_and_loss(model, x, y, mix)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            statistics.observe_step(model, optimizer.param_groups[0]["lr"])
            optimizer.step()
            schedule.step()
            loss_sum += loss.detach() * len(y)
            correct += batch_correct
            seen += len(y)

        if seen == 0:
            raise ValueError(
                f"epoch {epoch} has no full minibatch: {len(order)} training samples left "
                f"(high_loss_q={config['high_loss_q']}) for batch_size {batch_size}"
            )
        train_loss = loss_sum.item() / seen
        row: dict[str, Any] = {"epoch": epoch, "train_loss": train_loss, "train_acc": correct.item() / seen}
        row["lr"] = optimizer.param_groups[0]["lr"]
        row["mixup_alpha_used"] = alpha
        row["train_samples"] = seen
        if not math.isfinite(train_loss):
            row.update(diverged=1, val_loss=math.nan, val_acc=0.0, epoch_seconds=time.perf_counter() - started)
            report(row, None)
            return
        row["val_loss"], row["val_acc"] = _evaluate(model, splits.x_val, splits.y_val)
        row["diverged"] = 0
        row.update(statistics.end_epoch(model, train_loss))
        row.update(fixed_columns)
        for column in history:
            history[column].append(row.get(column, math.nan))
        fired = detect_all({c: v for c, v in history.items() if not all(map(math.isnan, v))}, budget)
        early.observe(fired)
        for name in DETECTORS:
            row[f"cp_end_{name}"] = math.nan if fired.get(name) is None else float(fired[name])
        if epoch == budget:
            row["test_loss"], row["test_acc"] = _evaluate(model, splits.x_test, splits.y_test)
        row["epoch_seconds"] = time.perf_counter() - started
        report(
            row,
            {
                "epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(), "statistics": statistics.state_dict(),
                "early": early.state_dict(), "order_generator": order_generator.get_state(),
                "mix_rng": mix_rng.bit_generator.state, "mix_generator": mix_generator.get_state(),
                "history": history, "fixed_columns": fixed_columns,
            },
        )  # fmt: skip


def _assigned_resources() -> tuple[int, bool]:
    """CPUs and whether a GPU were given to this trial by Ray."""
    import ray

    assigned = ray.get_runtime_context().get_assigned_resources()
    return max(1, int(assigned.get("CPU", 1))), assigned.get("GPU", 0) > 0 and torch.cuda.is_available()


def _silence_exit_on_stop(hook_args: Any, default: Callable[[Any], None] = sys.unraisablehook) -> None:
    """Ray ends a stopped trial's actor with SIGTERM, whose handler raises SystemExit wherever the worker is,
    often inside a weakref callback: Python then prints an "Exception ignored" traceback for a normal stop."""
    if not isinstance(hook_args.exc_value, SystemExit):
        default(hook_args)


def train_trial(config: dict[str, Any]) -> None:
    """Ray Tune entry point: set threads and device from Ray's grant, resume from a checkpoint, train."""
    from ray import tune

    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one "checkpoint created" line per epoch is noise
    sys.unraisablehook = _silence_exit_on_stop
    cpus, use_gpu = _assigned_resources()
    torch.set_num_threads(cpus)  # oversubscribed threads make side-by-side CPU trials several times slower
    device = torch.device("cuda") if use_gpu else torch.device("cpu")

    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device, weights_only=False)

    def report(row: dict[str, Any], trial_state: dict[str, Any] | None) -> None:
        if trial_state is None:
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(trial_state, Path(directory) / CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))

    run_trial(config, report, state=state, device=device)
