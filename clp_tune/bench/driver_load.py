"""``clp-tune bench driver-load``: what a large search costs Tune's driver, through real Ray Tune.

``bench scheduler-cost`` times the trajectory scheduler alone on a simulated clock; here every result also passes
through Ray Tune's own machinery on the driver (the controller, the searcher, the result loggers, the experiment
checkpoints) with the trajectory scheduler persisting its state in the run directory, as in a search. The trials
are replays (:func:`clp_tune.bench.replay.make_replay_trainable`) of a synthetic bank
(:func:`clp_tune.bench.synthetic.synthetic_bank`), so no training competes with the driver for the CPUs: what
grows is the driver's memory and the run directory, which are what this measures.
"""

from __future__ import annotations

import argparse
import os
import resource
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

_MB = 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tree_size(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path``."""
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def driver_load(trials: int, epochs: int, workers: int, seed: int, run_root: Path) -> dict[str, Any]:
    """Replay ``trials`` synthetic trials of ``epochs`` through real Ray Tune under the trajectory scheduler with
    ``workers`` concurrent trials; the driver's resident memory is sampled every 0.2 s (and its peak read from the
    kernel), the run directory measured at the end."""
    import ray
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from clp_tune.bench.replay import _quiet_tune, make_replay_trainable
    from clp_tune.bench.simulator import result_rows
    from clp_tune.bench.synthetic import synthetic_bank
    from clp_tune.stopping.factory import build_scheduler

    rows = result_rows(synthetic_bank(trials, epochs, seed))
    run_dir = run_root / "driver-load"
    run_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    # Logical CPUs: a replay sleeps on nothing and uses little, so `workers` of them share the real cores.
    ray.init(num_cpus=workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
    samples = {"before": _rss_bytes(), "peak": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.2):
            samples["peak"] = max(samples["peak"], _rss_bytes())

    sampler = threading.Thread(target=sample, daemon=True)
    last_epoch: dict[str, int] = {}

    class Count(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            last_epoch[trial.trial_id] = max(last_epoch.get(trial.trial_id, 0), int(result["epoch"]))
            reported["results"] += 1

    reported = {"results": 0}

    scheduler = build_scheduler("trajectory", epochs, state_dir=run_dir)
    tuner = tune.Tuner(
        tune.with_parameters(make_replay_trainable(), rows=rows),
        param_space={"trial_id": tune.grid_search(list(rows))},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", scheduler=scheduler, reuse_actors=True, max_concurrent_trials=workers,
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=workers),
        ),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=str(run_root), verbose=0, callbacks=[Count()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )  # fmt: skip
    started = time.perf_counter()
    sampler.start()
    try:
        with _quiet_tune():
            results = tuner.fit()
    finally:
        done.set()
        sampler.join()
        ray.shutdown()
    wall = time.perf_counter() - started
    size, files = _tree_size(run_dir)
    state_size = size - sum(_tree_size(Path(result.path))[0] for result in results)  # less the trial directories
    return {
        "trials": trials, "epochs": epochs, "workers": workers, "results": reported["results"],
        "finished": sum(epoch >= epochs for epoch in last_epoch.values()),
        "errors": len(results.errors), "wall_s": wall, "rss_before_mb": samples["before"] / _MB,
        "rss_peak_mb": max(samples["peak"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / _MB,
        "run_dir": str(run_dir), "run_dir_mb": size / _MB, "run_dir_files": files, "state_mb": state_size / _MB,
    }  # fmt: skip


def driver_load_command(args: argparse.Namespace) -> int:
    """``clp-tune bench driver-load``: exit 1 if any replayed trial errored."""
    with tempfile.TemporaryDirectory(prefix="clp-driver-load-", dir=args.dir) as root:
        load = driver_load(args.trials, args.epochs, args.workers, args.seed, Path(root))
        print(f"real Ray Tune, trajectory scheduler, {load['trials']} replayed trials x {load['epochs']} epochs "
              f"(synthetic bank, seed {args.seed}), max_concurrent_trials {load['workers']}")  # fmt: skip
        print(f"{load['results']} results, {load['finished']} trials ran their whole budget, {load['errors']} errored, "
              f"{load['wall_s']:.0f} s wall ({load['results'] / load['wall_s']:.0f} results/s)")  # fmt: skip
        print(f"driver resident memory: {load['rss_before_mb']:.0f} MB after Ray started, peak "
              f"{load['rss_peak_mb']:.0f} MB")  # fmt: skip
        print(f"run directory: {load['run_dir_mb']:.1f} MB in {load['run_dir_files']} files; outside the trial "
              f"directories (the scheduler's state, Ray's experiment files): {load['state_mb']:.1f} MB")  # fmt: skip
    return 1 if load["errors"] else 0
