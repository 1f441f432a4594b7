"""The Ray Tune function trainable: Ray's side of a trial around :func:`clp_tune.trial.recipe.run_trial`.

Ray grants the trial its CPUs and maybe a GPU; the recipe's per-epoch state travels as one checkpoint file with every
``checkpoint_every``-th ``tune.report`` (and the last epoch's), so a trial killed with its node, or paused by its
scheduler, resumes from its last checkpoint. It then trains the epochs since again from the exactly restored state and
re-reports the same rows, which replace the earlier ones (``clp_tune.store`` and the trajectory scheduler keep the
last row of an epoch). Everything about training is the recipe's.
"""

from __future__ import annotations

import logging
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from clp_tune.trial.recipe import run_trial

CHECKPOINT_FILE = "trial_state.pt"


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

    every, budget = int(config.get("checkpoint_every", 1)), int(config["epochs"])

    def report(row: dict[str, Any], trial_state: dict[str, Any] | None) -> None:
        if trial_state is None or (row["epoch"] % every and row["epoch"] != budget):
            tune.report(row)
            return
        with tempfile.TemporaryDirectory() as directory:
            torch.save(trial_state, Path(directory) / CHECKPOINT_FILE)
            tune.report(row, checkpoint=tune.Checkpoint.from_directory(directory))

    run_trial(config, report, state=state, device=device)
