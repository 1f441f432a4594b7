"""``clp-tune bench driver-load``: what a large search costs Tune's driver, through real Ray Tune.

``bench scheduler-cost`` times the trajectory scheduler alone on a simulated clock; here every result also passes
through Ray Tune's own machinery on the driver (the controller, the searcher, the result loggers, the experiment
checkpoints) with the trajectory scheduler persisting its state in the run directory, as in a search. The trials
are replays (:func:`clp_tune.bench.replay.make_replay_trainable`) of a synthetic bank
(:func:`clp_tune.bench.synthetic.synthetic_bank`), so no training competes with the driver for the CPUs: what
grows is the driver's memory and the run directory, which are what this measures.

Each ``--checkpoints-kept`` value runs in its own process, one after the other, so each peak is its own. The value
is Ray's ``CheckpointConfig(num_to_keep)``, which also decides how often Ray rewrites its experiment state (every
trial's state, so a file that grows with the search): Ray forces that rewrite whenever one trial has written
``num_to_keep`` checkpoints since the last one, so with 1 it is rewritten after every result of a trial that
checkpoints every epoch.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from clp_tune.bench.commands import positive_integers

_MB = 1024 * 1024


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tree_size(path: Path) -> tuple[int, int]:
    """Bytes and files under ``path``."""
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def driver_load(
    trials: int, epochs: int, workers: int, seed: int, kept: int, run_root: Path, bank: str | None = None
) -> dict[str, Any]:
    """Replay ``trials`` synthetic trials of ``epochs`` through real Ray Tune under the trajectory scheduler (its
    prior on ``bank``, else the default: every shipped bank) with ``workers`` concurrent trials, keeping ``kept``
    checkpoints per trial; the driver's resident memory is sampled every 0.2 s (and its peak read from the kernel),
    the run directory measured at the end."""
    import ray
    from ray import tune

    from clp_tune.bench.replay import _quiet_tune, make_replay_trainable
    from clp_tune.bench.simulator import result_rows
    from clp_tune.bench.synthetic import synthetic_bank
    from clp_tune.stopping.factory import build_scheduler
    from clp_tune.stopping.fit_cache import cache_at
    from clp_tune.stopping.slots import FrozenSlotsVariantGenerator

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

        def on_trial_complete(self, iteration, trials, trial, **info):
            reported["ended"] += 1
            if reported["ended"] % 100 == 0:
                print(f"  ... {reported['ended']} of {trials_total} trials ended, {time.perf_counter() - started:.0f} "
                      f"s", file=sys.stderr, flush=True)  # fmt: skip

    reported, trials_total = {"results": 0, "ended": 0}, len(rows)

    scheduler = build_scheduler("trajectory", epochs, state_dir=run_dir,
                                trajectory_options={"bank": bank} if bank else None)  # fmt: skip
    tuner = tune.Tuner(
        tune.with_parameters(make_replay_trainable(), rows=rows),
        param_space={"trial_id": tune.grid_search(list(rows))},
        tune_config=tune.TuneConfig(
            metric="val_acc", mode="max", scheduler=scheduler, reuse_actors=True,
            # The limit a search has (clp_tune.search.make_searcher): paused trials give their slots to new ones.
            search_alg=FrozenSlotsVariantGenerator(random_state=seed, max_concurrent=workers),
        ),
        run_config=tune.RunConfig(
            name=run_dir.name, storage_path=str(run_root), verbose=0, callbacks=[Count()],
            checkpoint_config=tune.CheckpointConfig(num_to_keep=kept),
        ),
    )  # fmt: skip
    started = time.perf_counter()
    sampler.start()
    try:
        with _quiet_tune(), cache_at(run_root / "fits"):  # each row fits its prior afresh, as a first search does
            results = tuner.fit()
    finally:
        done.set()
        sampler.join()
        ray.shutdown()
    wall = time.perf_counter() - started
    size, files = _tree_size(run_dir)
    state_size = size - sum(_tree_size(Path(result.path))[0] for result in results)  # less the trial directories
    return {
        "trials": trials, "epochs": epochs, "workers": workers, "kept": kept, "results": reported["results"],
        "finished": sum(epoch >= epochs for epoch in last_epoch.values()),
        "errors": len(results.errors), "wall_s": wall, "rss_before_mb": samples["before"] / _MB,
        "rss_peak_mb": max(samples["peak"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / _MB,
        "run_dir": str(run_dir), "run_dir_mb": size / _MB, "run_dir_files": files, "state_mb": state_size / _MB,
    }  # fmt: skip


def driver_load_command(args: argparse.Namespace) -> int:
    """``clp-tune bench driver-load``: one child process per ``--checkpoints-kept`` value; exit 1 if any replayed
    trial errored, 2 on bad arguments."""
    from clp_tune.bench.priors import BenchInputError, bank_at

    try:
        kept_values = positive_integers("--checkpoints-kept", args.checkpoints_kept, "1,2")
        if args.dir is not None:
            try:  # a missing folder is made: it only holds the replays' temporary run directories
                Path(args.dir).mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise ValueError(f"--dir: expected a folder that exists or can be made, got {args.dir!r} "
                                 f"({error.strerror})") from None  # fmt: skip
        if args.bank is not None:
            bank_at(args.bank, "--bank")
    except (ValueError, BenchInputError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(
        f"real Ray Tune, trajectory scheduler (prior on {args.bank or 'every shipped bank'}), {args.trials} replayed "
        f"trials x {args.epochs} epochs (synthetic bank, seed {args.seed}), max_concurrent_trials {args.workers}, a "
        "checkpoint per result",
        flush=True,
    )
    print(
        f"{'kept':>4}  {'results':>7}  {'finished':>8}  {'errors':>6}  {'wall s':>7}  {'results/s':>9}  "
        f"{'driver MB (start/peak)':>22}  {'run dir MB':>10}  {'files':>6}  {'outside trials MB':>17}",
        flush=True,
    )
    loads = []
    for kept in kept_values:
        with tempfile.TemporaryDirectory(prefix="clp-driver-load-", dir=args.dir) as root:
            job = [args.trials, args.epochs, args.workers, args.seed, kept, root, args.bank]
            done = subprocess.run([sys.executable, "-m", "clp_tune.bench.driver_load", json.dumps(job)],
                                  stdout=subprocess.PIPE, text=True)  # fmt: skip
            if done.returncode != 0:
                print(f"error: the replay with {kept} checkpoint(s) kept failed (exit {done.returncode})",
                      file=sys.stderr)  # fmt: skip
                return 1
            load = json.loads(done.stdout.strip().splitlines()[-1])
        loads.append(load)
        rate, memory = load["results"] / load["wall_s"], f"{load['rss_before_mb']:.0f} / {load['rss_peak_mb']:.0f}"
        print(f"{kept:>4}  {load['results']:>7}  {load['finished']:>8}  {load['errors']:>6}  {load['wall_s']:>7.0f}  "
              f"{rate:>9.1f}  {memory:>22}  {load['run_dir_mb']:>10.1f}  {load['run_dir_files']:>6}  "
              f"{load['state_mb']:>17.1f}", flush=True)  # fmt: skip
    if len(loads) > 1:
        base = loads[0]["results"] / loads[0]["wall_s"]
        print("results/s against the first row: " + ", ".join(
            f"{load['kept']} kept {load['results'] / load['wall_s'] / base:.2f}x" for load in loads[1:]))  # fmt: skip
    print(
        "kept: CheckpointConfig(num_to_keep), the spec's checkpoints_kept; outside trials: the scheduler's state "
        "and Ray's experiment files"
    )
    return 1 if any(load["errors"] for load in loads) else 0


if __name__ == "__main__":  # one replay: python -m clp_tune.bench.driver_load JOB_JSON; prints its load as JSON
    trials, epochs, workers, seed, kept, root, bank = json.loads(sys.argv[1])
    print(json.dumps(driver_load(trials, epochs, workers, seed, kept, Path(root), bank)))
