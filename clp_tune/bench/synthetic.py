"""A synthetic trajectory bank whose learning curves cross: the mechanism a stopper must not be fooled by.

Real banks rarely have late bloomers at the top; this one is made so that strong dropout, label noise and a poor
learning rate slow a trial down but raise its asymptote. It is for tests and for the benchmark's stress case only;
no figure of a real task comes from it.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd


def synthetic_bank(trials: int, epochs: int, seed: int, statistics: bool = True) -> pd.DataFrame:
    """Bank-schema rows of curves that cross: strong dropout / label noise / a small lr rise late but high.

    val_acc(e) = 0.1 + (a - 0.1) * (1 - exp(-(e/T) / tau)) + noise, with the asymptote ``a`` best near lr 1e-2
    and raised by dropout, and the time scale ``tau`` lengthened by dropout, label noise and a poor lr.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(trials):
        lr = 10 ** rng.uniform(-3.5, -1.0)
        batch_size = int(rng.choice([32, 64, 128, 256]))
        dropout = float(rng.choice([0.0, 0.2, 0.5]))
        label_noise = float(rng.choice([0.0, 0.1, 0.3]))
        quality = float(np.clip(1 - ((math.log10(lr) + 2) / 1.5) ** 2, 0, 1))
        a = float(np.clip(0.5 + 0.3 * quality + 0.15 * dropout - 0.1 * label_noise + rng.normal(0, 0.02), 0.2, 0.98))
        tau = 0.04 + 0.5 * dropout + 0.3 * label_noise + 0.3 * (1 - quality)
        tse = 0.0
        for epoch in range(1, epochs + 1):
            x = epoch / epochs
            level = 0.1 + (a - 0.1) * (1 - math.exp(-x / tau))
            val_acc = float(np.clip(level + rng.normal(0, 0.006), 0, 1))
            train_acc = float(np.clip((1 - label_noise) * min(1.0, level + 0.1 * x) + rng.normal(0, 0.004), 0, 1))
            train_loss = -math.log(max(train_acc, 1e-3)) + label_noise
            tse += train_loss
            row = {
                "trial_id": f"s{seed}_{i:03d}", "epoch": epoch, "val_acc": val_acc, "train_acc": train_acc,
                "train_loss": train_loss, "val_loss": -math.log(max(val_acc, 1e-3)) + 0.2 * x * (1 - dropout),
                "lr": lr * 0.5 * (1 + math.cos(math.pi * x)),
                "config/lr": lr, "config/batch_size": batch_size, "config/dropout": dropout,
                "config/label_noise": label_noise, "config/epochs": epochs, "config/optimizer": "sgd",
            }  # fmt: skip
            if statistics:
                row.update(tse=tse, layer_rotation=min(1.0, x / (tau + 0.05)) + rng.normal(0, 0.01))
            rows.append(row)
    return pd.DataFrame(rows)
