"""``clp-tune bench packing SPEC --per-device 1,2,4,8``: how many trials of a spec to pack on one device.

For each packing it starts that many real trials of the spec side by side, each in its own process as Ray runs
them (a fractional ``resources.gpu`` puts several trial processes on one GPU), and prints the epoch time per trial,
the trials per hour the device finishes at the spec's budget, each trial's peak device memory and what one
checkpoint costs. The trials train the spec's recipe (searched knobs at a representative value: the first choice,
the middle of a range) on the spec's dataset, or on synthetic data of its shape when the dataset is not on this
machine (the output says so). Without CUDA the trials are CPU trials sharing the cores (threads split between
them), and the output says that too: CPU figures say nothing about a GPU.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from clp_tune.bench.commands import positive_integers
from clp_tune.spec import Spec, SpecError, load_spec
from clp_tune.trial.data import Splits, _carve_validation, _channel_moments, load_dataset
from clp_tune.vocabulary import DATASET_SHAPES, TRAIN_SIZES

SYNTHETIC_TEST = 100  # test images of synthetic data (never evaluated: see _worker)


class _Measured(Exception):
    """Raised by a packed trial's report after its last measured epoch: the trial runs a budget one epoch longer,
    so no measured epoch carries the test evaluation a trial does once, at its end."""


def representative_config(spec: Spec, epochs: int) -> dict[str, Any]:
    """One trial's config: the spec's fixed settings, each searched knob at a representative value (a choice's or
    grid's first value, a range's middle, geometric for loguniform), to be measured for ``epochs`` epochs."""
    config = spec.fixed_config() | {"epochs": epochs + 1, "checkpoint_every": 1}  # + 1: see _Measured
    for name, entry in spec.searched().items():
        kind, args = next(iter(entry.items()))
        if kind in ("choice", "grid"):
            config[name] = args[0]
        elif kind == "loguniform":
            config[name] = math.sqrt(args[0] * args[1])
        elif kind == "int":
            config[name] = (args[0] + args[1]) // 2
        else:
            config[name] = (args[0] + args[1]) / 2
    if "seed" not in config:
        config["seed"] = spec.search_seed
    return config


def synthetic_splits(dataset: str, train_size: int, seed: int = 0) -> Splits:
    """Random data of ``dataset``'s shape: uint8 images (normalized per batch, as the real ones) or float vectors."""
    shape = DATASET_SHAPES[dataset]
    rng = np.random.default_rng(seed)
    n = train_size + round(train_size / 9)  # the validation split takes a tenth back out
    if len(shape) == 3:
        x, x_test = (rng.integers(0, 256, (count, *shape), dtype=np.uint8) for count in (n, SYNTHETIC_TEST))
        moments = _channel_moments(x)
    else:
        x, x_test = (rng.standard_normal((count, *shape)).astype(np.float32) for count in (n, SYNTHETIC_TEST))
        moments = {}
    y, y_test = rng.integers(0, 10, n), rng.integers(0, 10, SYNTHETIC_TEST)
    return _carve_validation(x, y, x_test, y_test, 10, **moments)


def _subsample(splits: Splits, train_size: int | None) -> Splits:
    """The first ``train_size`` training samples (the split is already shuffled), or all of them."""
    if train_size is None or train_size >= len(splits.y_train):
        return splits
    return replace(splits, x_train=splits.x_train[:train_size], y_train=splits.y_train[:train_size])


def _peak_memory_mib(device: torch.device) -> float:
    """The trial's peak memory: CUDA memory reserved by its allocator (no CUDA context), else its peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_reserved(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _worker(job: dict[str, Any]) -> dict[str, Any]:
    """One trial in this process: train, time every epoch and one checkpoint per epoch, as Ray's trainable would
    save it (``torch.save``, then a copy into the run's storage)."""
    from clp_tune.trial.recipe import run_trial

    torch.set_num_threads(job["threads"])
    device = torch.device(job["device"])
    if job["synthetic"]:
        splits = synthetic_splits(job["config"]["dataset"], job["train_size"])
    else:
        splits = _subsample(load_dataset(job["config"]["dataset"], download=False), job["train_size"])
    epochs, checkpoints = [], []
    with tempfile.TemporaryDirectory(prefix="clp-pack-") as scratch:

        def report(row: dict[str, Any], state: dict[str, Any] | None) -> None:
            epochs.append(row["epoch_seconds"])
            if state is not None:
                started = time.perf_counter()
                saved = Path(scratch) / f"epoch{row['epoch']}"
                saved.mkdir()
                torch.save(state, saved / "trial_state.pt")
                shutil.copytree(saved, Path(scratch) / f"storage{row['epoch']}")
                checkpoints.append(time.perf_counter() - started)
                shutil.rmtree(saved)
                shutil.rmtree(Path(scratch) / f"storage{row['epoch']}")
            if row["epoch"] == job["config"]["epochs"] - 1:
                raise _Measured

        with contextlib.suppress(_Measured):
            run_trial(job["config"], report, splits=splits, device=device)
    return {"epoch_seconds": epochs, "checkpoint_seconds": checkpoints, "memory_mib": _peak_memory_mib(device),
            "train_samples": len(splits.y_train)}  # fmt: skip


def _run_packing(jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Start every job in its own process at once; wait for all; their results."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "clp_tune.bench.packing", json.dumps(job)], stdout=subprocess.PIPE, text=True
        )  # fmt: skip
        for job in jobs
    ]
    outputs = [process.communicate()[0] for process in processes]
    failed = [p.returncode for p in processes if p.returncode != 0]
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(jobs)} packed trials failed (exit codes {failed})")
    return [json.loads(output.strip().splitlines()[-1]) for output in outputs]


def packing_command(args: argparse.Namespace) -> int:
    try:
        spec = load_spec(args.spec)
        packings = positive_integers("--per-device", args.per_device, "1,2,4,8")
        if args.epochs < 1 or (args.train_size is not None and args.train_size < 1):
            raise SpecError("--epochs and --train-size: expected integers >= 1")
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    cores = os.cpu_count() or 1
    config = representative_config(spec, args.epochs)
    try:
        load_dataset(spec.dataset, download=False)
        synthetic, data_line = False, f"data: {spec.dataset} from {spec.dataset}'s files on this machine"
    except RuntimeError as error:
        synthetic = True
        data_line = (f"data: SYNTHETIC — {spec.dataset} is not on this machine ({str(error).split(' and ')[0]}); "
                     f"random data of its shape {DATASET_SHAPES[spec.dataset]}, 10 classes")  # fmt: skip
    train_size = args.train_size if args.train_size is not None else (TRAIN_SIZES[spec.dataset] if synthetic else None)
    if cuda:
        print(f"packing {spec.name} on {torch.cuda.get_device_name()}: trials share one GPU, "
              f"{max(1, int(spec.resources.cpu))} CPU thread(s) each")  # fmt: skip
    else:
        print(f"packing {spec.name} on the CPU: NO CUDA DEVICE here, so these are CPU trials side by side, the "
              f"{cores} cores split between them (threads/trial); they say nothing about a GPU")  # fmt: skip
    print(data_line)
    shown = {k: config[k] for k in ("model", "optimizer", "lr", "batch_size", "mixup_alpha", "mixup_kind", "augment",
                                    "statistics")}  # fmt: skip
    timing = "the first not timed (warm-up)" if args.epochs > 1 else "timed"
    print(f"config: {shown}; {args.epochs} epoch(s) per trial, {timing}; no test evaluation")
    print(f"{'trials/device':>13}  {'threads/trial':>13}  {'epoch s/trial':>13}  {'trials/hour':>11}  "
          f"{'peak memory/trial':>17}  {'checkpoint s':>12}")  # fmt: skip
    memory_kind = "MiB CUDA" if cuda else "MiB RSS"
    for k in packings:
        threads = max(1, int(spec.resources.cpu)) if cuda else max(1, cores // k)
        job = {"config": config, "device": device, "threads": threads, "synthetic": synthetic, "train_size": train_size}
        results = _run_packing([job] * k)
        timed = [r["epoch_seconds"][1:] or r["epoch_seconds"] for r in results]
        epoch_s = statistics.median(statistics.median(t) for t in timed)
        per_hour = k * 3600 / (epoch_s * spec.epochs)
        memory = statistics.median(r["memory_mib"] for r in results)
        checkpoint = statistics.median(s for r in results for s in r["checkpoint_seconds"])
        print(f"{k:>13}  {threads:>13}  {epoch_s:>13.4g}  {per_hour:>11.2f}  {memory:>10.0f} {memory_kind:<6}  "
              f"{checkpoint:>12.3f}", flush=True)  # fmt: skip
    samples = results[0]["train_samples"]
    print(f"epoch s/trial: median over trials of each trial's median epoch ({samples} training samples per epoch); "
          f"trials/hour: trials/device x 3600 / (epoch s x the spec's {spec.epochs} epochs), at that training-set "
          f"size; checkpoint s: torch.save of the trial state plus a copy to storage, per epoch")  # fmt: skip
    return 0


if __name__ == "__main__":  # a packed trial: python -m clp_tune.bench.packing JOB_JSON; prints its result as JSON
    print(json.dumps(_worker(json.loads(sys.argv[1]))))
