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

from clp_tune.spec import KNOBS
from clp_tune.vocabulary import STATISTIC_GROUPS

if TYPE_CHECKING:
    import pandas as pd

# Where learning rate and dropout are sampled from (log-uniform, uniform). "wide" is the quickstart's space, the
# shipped bank's; "regularized" keeps only good learning rates and strong dropout, so the best trials are the
# strongly regularized ones, which start slowly: curves cross at the top (a stress test for early stopping).
SPACES = {
    "wide": {"lr": (3e-4, 5e-2), "dropout": (0.0, 0.6)},
    "regularized": {"lr": (3e-3, 3e-2), "dropout": (0.0, 0.75)},
}


def sample_configs(n: int, epochs: int, seed: int, space: str = "wide") -> list[dict[str, Any]]:
    """Configurations spread over ``SPACES[space]`` and the Mixup, noise and batch-size knobs."""
    import numpy as np

    lr, dropout = SPACES[space]["lr"], SPACES[space]["dropout"]
    rng = np.random.default_rng(seed)
    configs = []
    for index in range(n):
        config = {name: knob.default for name, knob in KNOBS.items()}
        config.update(
            dataset="mnist1d", model="cnn1d", epochs=epochs, statistics=",".join(STATISTIC_GROUPS),
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

    from clp_tune.trial.trainable import run_trial

    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    run_trial({k: v for k, v in config.items() if k != "trial_id"}, lambda row, state: rows.append(row))
    frame = pd.DataFrame(rows)
    frame.insert(0, "trial_id", config["trial_id"])
    for key, value in config.items():
        if key not in ("trial_id", "dataset", "model", "statistics"):
            frame[f"config/{key}"] = str(value) if key == "mixup_off" else value
    return frame


def record_bank(out: Path, trials: int, epochs: int, workers: int, seed: int = 0, space: str = "wide") -> pd.DataFrame:
    """Train ``trials`` configurations sampled from ``space`` for ``epochs`` each and write the bank to ``out``."""
    import pandas as pd

    from clp_tune.store import write_table

    configs = sample_configs(trials, epochs, seed, space)
    frames, started = [], time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_record_one, config) for config in configs]
        for done, future in enumerate(as_completed(futures), 1):
            frames.append(future.result())
            if done % 10 == 0 or done == trials:
                print(f"recorded {done}/{trials} trials in {time.perf_counter() - started:.0f} s", flush=True)
    bank = pd.concat(frames, ignore_index=True).sort_values(["trial_id", "epoch"])
    floats = bank.select_dtypes("float64").columns
    bank[floats] = bank[floats].astype("float32")  # the bank ships with the package: keep it small
    out.parent.mkdir(parents=True, exist_ok=True)
    write_table(bank, out)
    return bank


def record_command(args) -> int:
    """``clp-tune bank record``: exit 2 for an unknown ``--space``, else record and say what was written."""
    if args.space not in SPACES:
        print(f"error: --space: expected one of {', '.join(SPACES)}, got {args.space!r}", file=sys.stderr)
        return 2
    frame = record_bank(args.out, args.trials, args.epochs, args.workers, args.seed, args.space)
    print(f"wrote {args.out}: {frame.trial_id.nunique()} trials, {len(frame)} rows")
    return 0
