"""Build a Ray Tune search from a validated spec, run or resume it, and leave Parquet and a report behind.

Everything here is assembly of what Ray Tune and Optuna already provide (``Tuner``, ``OptunaSearch``, ASHA,
the median rule, ``Tuner.restore``); the only policy of our own is the trajectory scheduler.
"""

from __future__ import annotations

import datetime
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import yaml

from clp_tune.spec import Spec, load_spec, param_space
from clp_tune.trainable import train_trial

SPEC_FILE = "spec.yaml"


@dataclass(frozen=True)
class RunPaths:
    """Where a run lives: Ray's experiment directory (local path) and the report's directory."""

    run_dir: Path
    report_dir: Path


def ensure_ray(num_cpus: int | None = None, address: str | None = None) -> None:
    """Connect to a cluster (``address`` or ``RAY_ADDRESS``) or start an embedded Ray on this machine."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address)
    else:
        ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, configure_logging=False)
    token = Path.home() / ".ray" / "auth_token"
    if token.exists():
        token.chmod(0o600)  # Ray 2.60 writes it world-readable; it grants control of the cluster


def _no_checkpoint_sync_warnings() -> None:
    """Checkpointing every epoch (for exact resume) makes Tune save its experiment state often; it warns each time."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def make_searcher(spec: Spec):
    """Optuna TPE (through Ray's OptunaSearch) or plain random sampling."""
    if spec.searcher == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        startup = max(2, min(10, spec.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=spec.search_seed, n_startup_trials=startup)
        return OptunaSearch(sampler=sampler)
    from ray.tune.search.basic_variant import BasicVariantGenerator

    # Tune ignores TuneConfig.max_concurrent_trials for a passed-in generator: give it the limit itself.
    return BasicVariantGenerator(random_state=spec.search_seed, max_concurrent=spec.max_concurrent_trials)


def stock_scheduler_args(kind: str, budget: int, grace_period: int | None = None, reduction_factor: float = 3.0):
    """Arguments of Ray's ASHA (``asha``) or median stopping rule (``median``) with this product's settings:
    epochs (not Ray iterations) are the time axis, and the grace period defaults to a tenth of the budget."""
    grace = grace_period or max(1, budget // 10)
    if kind == "asha":
        return {"time_attr": "epoch", "max_t": budget, "grace_period": grace, "reduction_factor": reduction_factor}
    return {"time_attr": "epoch", "grace_period": grace, "min_samples_required": 3}


def stock_scheduler(kind: str, budget: int, grace_period: int | None = None, reduction_factor: float = 3.0):
    """Ray's FIFO (no stopping), ASHA or median stopping rule, as :func:`stock_scheduler_args` sets them up."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler, MedianStoppingRule

    if kind == "fifo":
        return FIFOScheduler()
    scheduler = AsyncHyperBandScheduler if kind == "asha" else MedianStoppingRule
    return scheduler(**stock_scheduler_args(kind, budget, grace_period, reduction_factor))


def make_scheduler(spec: Spec, run_dir: Path):
    """The trial scheduler named in the spec."""
    options = spec.scheduler
    if options.type == "trajectory":
        from clp_tune.scheduler import TrajectoryScheduler

        return TrajectoryScheduler(budget=spec.epochs, state_dir=str(run_dir), **options.trajectory_options())
    return stock_scheduler(options.type, spec.epochs, options.grace_period, options.reduction_factor)


def trainable_for(spec: Spec):
    from ray import tune

    return tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def run_search(
    spec: Spec, storage_path: str | Path = "runs", run_name: str | None = None, reports_dir: str | Path = "reports"
) -> RunPaths:
    """Run the whole search; returns where its results and report are.

    ``storage_path`` may be a local directory or a URI (``s3://...``) that every node of a cluster can reach;
    with a URI, the driver keeps a local copy of the run's own files under ``runs/`` and uploads them at the end.
    """
    from ray import tune

    _no_checkpoint_sync_warnings()
    run_name = run_name or f"{spec.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    storage = str(storage_path) if _is_uri(storage_path) else str(Path(storage_path).resolve())
    local_dir = (Path("runs") / run_name).resolve() if _is_uri(storage) else Path(storage) / run_name
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    tuner = tune.Tuner(
        trainable_for(spec),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec, local_dir), num_samples=spec.num_samples,
            max_concurrent_trials=spec.max_concurrent_trials,
        ),
        run_config=tune.RunConfig(
            name=run_name, storage_path=storage, verbose=1,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
        ),
    )  # fmt: skip
    tuner.fit()
    return finish(f"{storage}/{run_name}", local_dir, reports_dir)


def resume_search(run_dir: str | Path, reports_dir: str | Path = "reports") -> RunPaths:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume from checkpoints."""
    from ray import tune

    run_dir = Path(run_dir).resolve()
    if not tune.Tuner.can_restore(str(run_dir)):
        raise FileNotFoundError(f"{run_dir} is not a Ray Tune run directory that can be resumed")
    spec = load_spec(run_dir / SPEC_FILE)
    _no_checkpoint_sync_warnings()
    tuner = tune.Tuner.restore(
        str(run_dir), trainable=trainable_for(spec), resume_unfinished=True, resume_errored=False
    )
    tuner.fit()
    return finish(str(run_dir), run_dir, reports_dir)


def finish(experiment: str, local_dir: Path, reports_dir: str | Path = "reports") -> RunPaths:
    """Write the Parquet tables and the report into ``local_dir`` and ``reports/<name>/``.

    When the experiment lives at a URI, the run's own files are uploaded next to Ray's there, so a client
    (``clp-tune submit``) can fetch the report from shared storage.
    """
    from clp_tune.report import write_report
    from clp_tune.store import write_store

    spec = load_spec(local_dir / SPEC_FILE)
    write_store(experiment, local_dir)
    report_dir = Path(reports_dir) / spec.name
    write_report(local_dir, report_dir)
    shutil.copytree(report_dir, local_dir / "report", dirs_exist_ok=True)
    if _is_uri(experiment):
        import pyarrow.fs

        pyarrow.fs.copy_files(str(local_dir), experiment)
    return RunPaths(run_dir=local_dir, report_dir=report_dir)
