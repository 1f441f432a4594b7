"""Build a Ray Tune search from a validated spec, run or resume it, and leave Parquet and a report behind.

Everything here is assembly of what Ray Tune and Optuna already provide (``Tuner``, ``OptunaSearch``, ASHA,
the median rule, ``Tuner.restore``); the only policy of our own is the trajectory scheduler.
"""

from __future__ import annotations

import datetime
import os
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import yaml

from clp_tune.inputs import blocking_file, is_uri, one_line
from clp_tune.remote import RunFileSync, holds_run, local_copy, push_report
from clp_tune.spec import Spec, SpecError, load_spec, param_space
from clp_tune.stopping.factory import build_scheduler
from clp_tune.trial.trainable import train_trial
from clp_tune.vocabulary import REPORT_DIR, SPEC_FILE, TRAJECTORIES_FILE, TRIALS_FILE


@dataclass(frozen=True)
class RunPaths:
    """Where a run lives: Ray's experiment directory (local path), the report's directory, and the run's bank in
    the user's bank library (None: the library is off, or the run recorded no trajectory)."""

    run_dir: Path
    report_dir: Path
    library_bank: Path | None = None


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


def _resource_amount(value: float) -> str:
    return f"{value:g}"


def check_embedded_resources(spec: Spec, num_cpus: int | None = None) -> None:
    """Reject, before an embedded Ray starts, a trial that could never be placed on it.

    Ray would accept such a trial and keep it pending forever (it cannot know no node will ever join), so the
    search would hang with no hint. The embedded Ray gets ``num_cpus`` or all of this machine's cores, and the
    GPUs torch sees (checked with ``torch.cuda.device_count()``, which starts nothing).
    """
    cpus = num_cpus or os.cpu_count() or 1
    source = f"--num-cpus {num_cpus}" if num_cpus else "this machine's cores; --num-cpus sets it"
    wanted = spec.resources.cpu
    if wanted > cpus:
        raise SpecError(
            f"resources.cpu: each trial asks for {_resource_amount(wanted)} CPUs, but the embedded Ray has {cpus} "
            f"({source}), so no trial could ever start; expected cpu <= {cpus} here, or --address of a Ray "
            f"cluster with nodes that big, got cpu {_resource_amount(wanted)}"
        )
    if spec.resources.gpu > 0:
        import torch

        gpus = torch.cuda.device_count()
        if gpus == 0:
            raise SpecError(
                f"resources.gpu: each trial asks for {_resource_amount(spec.resources.gpu)} GPU, but this machine "
                f"has no GPU (torch.cuda.device_count() is 0), so no trial could ever start on the embedded Ray; "
                f"expected gpu: 0 here, or --address of a Ray cluster with GPUs, got gpu "
                f"{_resource_amount(spec.resources.gpu)}"
            )


def cluster_fit_warning(spec: Spec) -> str | None:
    """On a connected cluster, one line saying what the search waits for when no alive node can hold one trial
    now; None when one can. Not an error: an autoscaler may add such a node (a trial needs its CPUs and GPU on
    one node)."""
    import ray

    cpu, gpu = spec.resources.cpu, spec.resources.gpu
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    if any(node.get("CPU", 0) >= cpu and node.get("GPU", 0) >= gpu for node in nodes):
        return None
    most_cpu = max((node.get("CPU", 0) for node in nodes), default=0)
    most_gpu = max((node.get("GPU", 0) for node in nodes), default=0)
    total_cpu = sum(node.get("CPU", 0) for node in nodes)
    total_gpu = sum(node.get("GPU", 0) for node in nodes)
    return (
        f"waiting: each trial needs {_resource_amount(cpu)} CPU and {_resource_amount(gpu)} GPU on one node "
        f"(resources:), but no node of the cluster has that now ({len(nodes)} node(s), at most "
        f"{_resource_amount(most_cpu)} CPU and {_resource_amount(most_gpu)} GPU each, {_resource_amount(total_cpu)} "
        f"CPU and {_resource_amount(total_gpu)} GPU in all); trials stay pending until such a node joins (the "
        f"cluster's autoscaler may add one)"
    )


def ensure_ray_for(spec: Spec, num_cpus: int | None = None, address: str | None = None) -> str | None:
    """:func:`ensure_ray`, checked against what one trial of ``spec`` needs.

    On the embedded Ray (no ``address``, no ``RAY_ADDRESS``) a trial that can never fit raises :class:`SpecError`
    before Ray starts (:func:`check_embedded_resources`). On a cluster (or a Ray already running), returns
    :func:`cluster_fit_warning`'s line for the caller to print, or None.
    """
    import ray

    cluster = bool(address or os.environ.get("RAY_ADDRESS")) or ray.is_initialized()
    if not cluster:
        check_embedded_resources(spec, num_cpus)
    ensure_ray(num_cpus=num_cpus, address=address)
    return cluster_fit_warning(spec) if cluster else None


def failed_search_reason(run_dir: Path) -> str | None:
    """Why a search produced nothing, from its ``trials.parquet``: None when at least one trial finished.

    A search whose trials all errored, diverged or were stopped still writes its tables and report (they say
    what went wrong), but it has no result, and a script or scheduler running ``clp-tune`` must see that in the
    exit code, not only in a report nobody opens.
    """
    import pandas as pd

    path = Path(run_dir) / TRIALS_FILE
    if not path.is_file():
        return f"no {TRIALS_FILE} in {run_dir}: the search wrote no trial table"
    trials = pd.read_parquet(path)
    if (trials.status == "finished").any():
        return None
    if trials.empty:
        return f"no trial ran (see {path})"
    counts = ", ".join(f"{count} {status}" for status, count in trials.status.value_counts().items())
    errors = trials.loc[trials.status == "error", "error"].dropna() if "error" in trials else pd.Series()
    first = f"; first error: {one_line(errors.iloc[0])}" if len(errors) else ""
    return f"no trial finished ({counts} of {len(trials)}){first}; every trial is in {path} and the report"


def _no_checkpoint_sync_warnings() -> None:
    """Checkpointing every epoch (for exact resume) makes Tune save its experiment state often; it warns each time."""
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


def make_searcher(spec: Spec):
    """Optuna TPE (through Ray's OptunaSearch) or plain random sampling, limited to ``max_concurrent_trials`` trials
    at once, trials the scheduler froze (PAUSED) not counted (:mod:`clp_tune.stopping.slots`).

    With nothing searched, always the basic variant generator, whatever ``searcher:`` says: there is nothing for
    a searcher to sample (OptunaSearch raises on an empty space), and the generator expands the seed grid
    :func:`~clp_tune.spec.param_space` puts in the space (repeats over seeds).
    """
    from clp_tune.stopping.slots import FrozenSlotsLimiter, FrozenSlotsVariantGenerator

    if spec.searcher == "optuna" and spec.searched():
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        startup = max(2, min(10, spec.num_samples // 3))
        sampler = optuna.samplers.TPESampler(seed=spec.search_seed, n_startup_trials=startup)
        return FrozenSlotsLimiter(OptunaSearch(sampler=sampler), spec.max_concurrent_trials)
    return FrozenSlotsVariantGenerator(random_state=spec.search_seed, max_concurrent=spec.max_concurrent_trials)


def make_scheduler(spec: Spec, run_dir: Path):
    """The trial scheduler named in the spec (:func:`~clp_tune.stopping.factory.build_scheduler` builds them all)."""
    options = spec.scheduler
    trajectory = options.trajectory_options()
    if options.type == "trajectory" and "bank" not in trajectory:
        trajectory["user_banks"] = prior_banks(spec, run_dir)
    return build_scheduler(
        options.type, spec.epochs, state_dir=run_dir, grace_period=options.grace_period,
        reduction_factor=options.reduction_factor, trajectory_options=trajectory,
    )  # fmt: skip


def prior_banks(spec: Spec, run_dir: Path) -> list[str]:
    """The banks of the user's library that the trajectory prior fits on, with the shipped suite's: the newest of
    the spec's dataset and model with complete trials, up to :data:`~clp_tune.stopping.user_banks.PRIOR_TRIALS`.
    Chosen when the search starts and kept in the run directory
    (:func:`~clp_tune.stopping.user_banks.keep_banks`), so that a resumed search fits on the same banks however the
    library has changed since; said on stderr, since they change what the scheduler stops."""
    from clp_tune.stopping.user_banks import (
        PRIOR_TRIALS,
        keep_banks,
        kept_banks,
        library_dir,
        list_banks,
        matching,
        newest,
    )

    kept = kept_banks(run_dir)
    if kept is not None:  # a resumed search
        return kept
    directory = library_dir(spec.bank_library)
    own = matching(list_banks(directory), spec.dataset, spec.model)
    chosen = newest(own, PRIOR_TRIALS)
    if directory is None:
        where = "(the bank library is off)"
    elif chosen:
        trials = sum(b.complete for b in chosen)
        older = len(own) - len(chosen)
        left = f"; {older} older bank(s) left out, past the newest {PRIOR_TRIALS} complete trials" if older else ""
        where = (f"+ {len(chosen)} bank(s) of your library {directory} for {spec.dataset}/{spec.model} ({trials} "
                 f"complete trials{left}; `bank_library: off` in the spec leaves them all out)")  # fmt: skip
    else:
        where = f"(your library {directory} has no complete bank of {spec.dataset}/{spec.model} yet)"
    print(f"trajectory prior: the shipped suite's banks {where}", file=sys.stderr)
    paths = [str(b.path) for b in chosen]
    keep_banks(run_dir, paths)
    return paths


def trainable_for(spec: Spec):
    from ray import tune

    return tune.with_resources(train_trial, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})


def _run_location(storage_path: str | Path, run_name: str) -> tuple[str, Path]:
    """Ray's storage path (a URI, or the local path made absolute) and the driver's run directory: the run's own
    directory there, or for a URI its local copy (:func:`~clp_tune.remote.local_copy`)."""
    storage = str(storage_path) if is_uri(storage_path) else str(Path(storage_path).resolve())
    local_dir = local_copy(f"{storage}/{run_name}") if is_uri(storage) else Path(storage) / run_name
    return storage, local_dir


def _shown(path: Path) -> str:
    """``path`` as the user most likely typed it: relative to the working directory when it is under it."""
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def check_new_run(storage_path: str | Path, run_name: str) -> None:
    """Refuse (:class:`SpecError`, exit 2, before Ray starts) a ``--run-name`` whose run directory already holds a
    run (:func:`~clp_tune.remote.holds_run`).

    A search would otherwise write into it beside the earlier one: both experiments' states and trial directories
    in one directory, tables of the second alone, and a trajectory scheduler taking the first one's state and kept
    banks for its own, as if resumed. For a URI, both the run's directory there (one listing) and the driver's
    local copy are checked: a local copy left by an earlier run or report of that name would be mixed in the same
    way. A file where the driver's run directory goes (``runs/NAME``, or the ``runs`` of a URI run's local copy) is
    refused too: the search would fail making it, after Ray started. ``storage_path`` must have passed
    :func:`~clp_tune.remote.check_storage` and, when local, the CLI's check of a file in its way.
    """
    storage, local_dir = _run_location(storage_path, run_name)
    blocking = blocking_file(local_dir)
    if blocking is not None:
        raise SpecError(f"--run-name {run_name}: expected a directory (or a path to make one) at {_shown(local_dir)}, "
                        f"but {_shown(blocking)} is a file")  # fmt: skip
    if is_uri(storage):
        uri = f"{storage.rstrip('/')}/{run_name}"
        if holds_run(uri):
            raise SpecError(f"--run-name {run_name}: {uri} already holds a run; continue it with clp-tune resume "
                            f"{uri}, or choose another --run-name")  # fmt: skip
        if holds_run(local_dir):
            raise SpecError(f"--run-name {run_name}: {_shown(local_dir)}, where this driver keeps its copy of a run "
                            f"named {run_name}, already holds one's files (an earlier run or report of that name); "
                            f"move it away, or choose another --run-name")  # fmt: skip
    elif holds_run(local_dir):
        where = Path(storage_path) / run_name  # as the user gave it
        raise SpecError(f"--run-name {run_name}: {where} already holds a run; continue it with clp-tune resume "
                        f"{where}, or choose another --run-name")  # fmt: skip


def run_search(
    spec: Spec, storage_path: str | Path = "runs", run_name: str | None = None, reports_dir: str | Path = "reports"
) -> RunPaths:
    """Run the whole search; returns where its results and report are.

    ``storage_path`` may be a local directory or a URI (``s3://...``) that every node of a cluster can reach;
    with a URI, the driver keeps a local copy of the run's own files under ``runs/`` and mirrors them to the URI
    while the search runs (:class:`~clp_tune.remote.RunFileSync`), so ``clp-tune resume`` can continue it from there.
    A ``run_name`` whose directory holds a run already is the caller's to refuse first (:func:`check_new_run`).
    """
    from ray import tune

    _no_checkpoint_sync_warnings()
    run_name = run_name or f"{spec.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    storage, local_dir = _run_location(storage_path, run_name)
    local_dir.mkdir(parents=True, exist_ok=True)
    (local_dir / SPEC_FILE).write_text(yaml.safe_dump(spec.model_dump(), sort_keys=False))
    tuner = tune.Tuner(
        trainable_for(spec),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(
            metric=spec.metric, mode=spec.mode, search_alg=make_searcher(spec),
            scheduler=make_scheduler(spec, local_dir), num_samples=spec.tune_num_samples(),
        ),  # the searcher holds max_concurrent_trials (make_searcher)
        run_config=tune.RunConfig(
            name=run_name, storage_path=storage, verbose=1,
            callbacks=[RunFileSync(local_dir, f"{storage}/{run_name}")] if is_uri(storage) else None,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=spec.checkpoints_kept),
        ),
    )  # fmt: skip
    tuner.fit()
    return _finish_search(f"{storage}/{run_name}", local_dir, reports_dir)


def resume_search(experiment: str, local_dir: Path, reports_dir: str | Path = "reports") -> RunPaths:
    """Continue an interrupted search: finished trials are kept, unfinished ones resume from checkpoints.

    ``experiment`` is the run's path or URI and ``local_dir`` the driver's run directory with the run's own files
    (:func:`clp_tune.remote.open_run` finds both, fetching a URI's from the bucket). Ray unpickles the scheduler
    and callbacks it pickled at the start, which point at the first driver's run directory (a dead machine's path
    for a cluster run) and forget the scheduler's state (ray-project/ray#30838); so the scheduler is built again
    from the spec over ``local_dir``, reloading the state found there, and a URI run mirrors its files again.
    """
    from ray import tune

    if not tune.Tuner.can_restore(experiment):
        raise SpecError(f"{experiment}: not a Ray Tune run that can be resumed (no tuner.pkl)")
    spec = load_spec(local_dir / SPEC_FILE)
    _no_checkpoint_sync_warnings()
    tuner = tune.Tuner.restore(experiment, trainable=trainable_for(spec), resume_unfinished=True, resume_errored=False)
    restored = tuner._local_tuner  # Ray 2.60's TunerInternal: the restored TuneConfig and RunConfig
    restored._tune_config.scheduler = make_scheduler(spec, local_dir)
    restored._run_config.callbacks = [RunFileSync(local_dir, experiment)] if is_uri(experiment) else None
    tuner.fit()
    return _finish_search(experiment, local_dir, reports_dir)


def finish(experiment: str, local_dir: Path, reports_dir: str | Path = "reports") -> RunPaths:
    """Write the Parquet tables and the report into ``local_dir`` and ``reports/<name>/``; all ``clp-tune report``
    does. The bank library is left alone: a bank the user removed must not come back because a report was
    rewritten (searches add theirs, :func:`_finish_search`).

    When the experiment lives at a URI, the run's own files are uploaded next to Ray's there, so a client
    (``clp-tune submit``) can fetch the report from shared storage.
    """
    return _finish(load_spec(local_dir / SPEC_FILE), experiment, local_dir, reports_dir)


def _finish(spec: Spec, experiment: str, local_dir: Path, reports_dir: str | Path) -> RunPaths:
    """:func:`finish` with the run's ``spec`` already read."""
    from clp_tune.report.page import write_report
    from clp_tune.stopping.persistence import compact
    from clp_tune.store import write_store

    compact(local_dir)  # the scheduler's journal into its snapshot and decisions.parquet
    write_store(experiment, local_dir)
    report_dir = Path(reports_dir) / spec.name
    write_report(local_dir, report_dir)
    shutil.copytree(report_dir, local_dir / REPORT_DIR, dirs_exist_ok=True)
    if is_uri(experiment):
        push_report(local_dir, experiment)
    return RunPaths(run_dir=local_dir, report_dir=report_dir)


def _finish_search(experiment: str, local_dir: Path, reports_dir: str | Path) -> RunPaths:
    """:func:`finish` a search that just ran (``run``, ``resume``), then add its trajectories to the user's bank
    library (:mod:`clp_tune.stopping.user_banks`; a resumed run's bank replaces its earlier one)."""
    import pandas as pd

    from clp_tune.stopping.user_banks import add_run, library_dir

    spec = load_spec(local_dir / SPEC_FILE)
    paths = _finish(spec, experiment, local_dir, reports_dir)
    trajectories = pd.read_parquet(local_dir / TRAJECTORIES_FILE)
    library_bank = add_run(
        library_dir(spec.bank_library), local_dir.name, trajectories, spec.dataset, spec.model, spec.epochs
    )
    return replace(paths, library_bank=library_bank)
