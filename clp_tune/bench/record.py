"""Record a trajectory bank: full-length trajectories of sampled configurations, with no early stopping.

The bank is the trajectory predictor's default prior and the scheduler benchmark's default input. Schema
(Parquet, one row per trial-epoch): ``trial_id``, ``epoch`` (1..T), every metric and statistic column the
trainable reports (``val_acc`` is the one required column), and ``config/<knob>`` for the sampled knobs and
``config/epochs``. Recording uses the real trainable without Ray, in a process pool, so it is plain PyTorch.

    clp-tune bank record --out clp_tune/stopping/banks/bank_mnist1d.parquet --trials 200 --epochs 40 --workers 2
"""

from __future__ import annotations

import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import TYPE_CHECKING, Any

from clp_tune.knobs import KNOBS
from clp_tune.vocabulary import STATISTIC_GROUPS

if TYPE_CHECKING:
    import pandas as pd

# Where learning rate and dropout are sampled from (log-uniform, uniform). "wide" is the quickstart's space, the
# shipped bank's; "regularized" keeps only good learning rates and strong dropout, so the best trials are the
# strongly regularized ones, which start slowly: curves cross at the top (a stress test for early stopping).
# "sgd" is the wide space for SGD with momentum, whose good learning rates are an order of magnitude larger.
SPACES = {
    "wide": {"lr": (3e-4, 5e-2), "dropout": (0.0, 0.6)},
    "regularized": {"lr": (3e-3, 3e-2), "dropout": (0.0, 0.75)},
    "sgd": {"lr": (3e-3, 3e-1), "dropout": (0.0, 0.6)},
}


def sample_configs(
    n: int, epochs: int, seed: int, space: str = "wide", dataset: str = "mnist1d", model: str = "cnn1d",
    optimizer: str | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Configurations spread over ``SPACES[space]`` and the Mixup, noise and batch-size knobs, for ``model`` on
    ``dataset`` trained with ``optimizer`` (None: the knob's default)."""
    import numpy as np

    lr, dropout = SPACES[space]["lr"], SPACES[space]["dropout"]
    rng = np.random.default_rng(seed)
    configs = []
    for index in range(n):
        config = {name: knob.default for name, knob in KNOBS.items()}
        config["optimizer"] = optimizer or config["optimizer"]
        config.update(
            dataset=dataset, model=model, epochs=epochs, statistics=",".join(STATISTIC_GROUPS),
            lr=float(np.exp(rng.uniform(np.log(lr[0]), np.log(lr[1])))),
            batch_size=int(rng.choice([64, 128, 256])),
            dropout=float(rng.uniform(*dropout)),
            weight_decay=float(np.exp(rng.uniform(np.log(1e-5), np.log(1e-2)))),
            label_noise=float(rng.choice([0.0, 0.0, 0.1, 0.2])),
            mixup_alpha=float(rng.choice([0.0, 0.4, 1.0])),
            mixup_kind=str(rng.choice(["input", "manifold"])),
            mixup_off=[0, 3, 0.2, "auto:acc50"][int(rng.integers(4))],
            seed=int(rng.integers(0, 10_000)),
            trial_id=f"bank{index:04d}",
        )  # fmt: skip
        configs.append(config)
    return configs


def _record_one(config: dict[str, Any]) -> pd.DataFrame:
    import pandas as pd
    import torch

    from clp_tune.trial.recipe import run_trial

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    run_trial({k: v for k, v in config.items() if k != "trial_id"}, lambda row, state: rows.append(row))
    frame = pd.DataFrame(rows)
    frame.insert(0, "trial_id", config["trial_id"])
    for key, value in config.items():
        if key not in ("trial_id", "statistics"):
            frame[f"config/{key}"] = str(value) if key == "mixup_off" else value
    return frame


def record_bank(
    out: Path, trials: int, epochs: int, workers: int, seed: int = 0, space: str = "wide", dataset: str = "mnist1d",
    model: str = "cnn1d", optimizer: str | None = None,
) -> pd.DataFrame:  # fmt: skip
    """Train ``trials`` configurations sampled from ``space`` for ``epochs`` each and write the bank to ``out``."""
    import pandas as pd

    from clp_tune.store import write_table

    configs = sample_configs(trials, epochs, seed, space, dataset, model, optimizer)
    frames, started = [], time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_record_one, config) for config in configs]
        for done, future in enumerate(as_completed(futures), 1):
            frames.append(future.result())
            if done % 10 == 0 or done == trials:
                print(f"recorded {done}/{trials} trials in {time.perf_counter() - started:.0f} s", flush=True)
    bank = shrink_bank(pd.concat(frames, ignore_index=True).sort_values(["trial_id", "epoch"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(bank, out, compression="zstd")
    return bank


def shrink_bank(bank: pd.DataFrame) -> pd.DataFrame:
    """A bank ships with the package, so it is kept small: float32 values, and without ``epoch_seconds``, this
    machine's timing noise (incompressible, and a replay counts epochs, not seconds)."""
    bank = bank.drop(columns=["epoch_seconds"], errors="ignore")
    floats = bank.select_dtypes("float64").columns
    return bank.astype(dict.fromkeys(floats, "float32"))


def record_command(args) -> int:
    """``clp-tune bank record``: a task of the shipped suite (``--task``) or the mnist1d CNN in ``--space``."""
    from clp_tune.stopping.bank_library import SUITE

    if args.task is not None:
        if args.task not in SUITE:
            print(f"error: --task: expected one of {', '.join(SUITE)}, got {args.task!r}", file=sys.stderr)
            return 2
        task = SUITE[args.task]
        frame = record_bank(args.out or task.path, task.trials, task.epochs, args.workers, task.seed, task.space,
                            task.dataset, task.model, task.optimizer)  # fmt: skip
        print(f"wrote {args.out or task.path}: {frame.trial_id.nunique()} trials, {len(frame)} rows")
        return 0
    if args.space not in SPACES:
        print(f"error: --space: expected one of {', '.join(SPACES)}, got {args.space!r}", file=sys.stderr)
        return 2
    if args.out is None:  # the shipped bank is every search's prior: replacing it takes --task
        print("error: --out: expected where the bank goes (without --task nothing is written to a shipped bank; "
              f"`--task {next(iter(SUITE))}` records the shipped mnist1d bank again)", file=sys.stderr)  # fmt: skip
        return 2
    frame = record_bank(args.out, args.trials, args.epochs, args.workers, args.seed, args.space)
    print(f"wrote {args.out}: {frame.trial_id.nunique()} trials, {len(frame)} rows")
    return 0
