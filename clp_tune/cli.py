"""``clp-tune``: run, resume, submit, validate and report searches; benchmarks.

Exit codes: 0 success, 1 the search or job failed (for run and resume: no trial finished), 2 bad input (an
invalid search-space file, a missing run directory, a trial bigger than the embedded Ray); a bad file is rejected
before Ray starts.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from clp_tune.bench.commands import add_bank_parser, add_bench_parser, at_least_one
from clp_tune.inputs import blocking_file, is_uri
from clp_tune.spec import Spec, SpecError, load_spec
from clp_tune.spec_guard import load_spec_file
from clp_tune.vocabulary import REPORT_PAGE, SPEC_FILE, TRAJECTORIES_FILE

if TYPE_CHECKING:
    from clp_tune.search import RunPaths

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2


def local_directory(text: str) -> str:
    """An argparse type for ``--reports-dir`` and a local ``--storage-path``: a directory, or a path whose nearest
    existing parent is one (it is made when written to). A file there would fail only once Ray has started (the run
    directory) or the search is over (the report)."""
    blocking = blocking_file(text)
    if blocking is not None:
        raise argparse.ArgumentTypeError(f"expected a directory (or a path to make one), but {blocking} is a file")
    return text


def storage_path(text: str) -> str:
    """An argparse type for ``run --storage-path``: a local path as :func:`local_directory` checks it; a URI is
    checked once the spec is (:func:`clp_tune.remote.check_storage`: it may ask the network)."""
    return text if is_uri(text) else local_directory(text)


def ray_address_problem(text: str) -> str | None:
    """Why ``text`` is not an address ``ray.init`` can join for a search (None when it is): the GCS's HOST:PORT or
    ``auto``. The Jobs API's http:// address, which ``submit`` takes, is the easy mistake: ray.init refuses it only
    with a traceback. Ray Client's ray:// is refused too: Tune would run the driver on the head, away from the run
    directory the CLI writes and reads, and ``resume`` needs the driver here."""
    host, colon, port = text.rpartition(":")
    if text == "auto" or (colon and host.strip() and "/" not in host and port.isdigit() and 0 < int(port) < 65536):
        return None
    problem = f"expected a Ray cluster's address, HOST:PORT of its head (e.g. 10.0.0.5:6379) or auto, got {text!r}"
    if text.startswith(("http://", "https://")):
        problem += "; an http:// address is the dashboard's Jobs API, which clp-tune submit --address takes"
    return problem


def ray_address(text: str) -> str:
    """An argparse type for ``run``'s and ``resume``'s ``--address`` (:func:`ray_address_problem`)."""
    problem = ray_address_problem(text)
    if problem is not None:
        raise argparse.ArgumentTypeError(problem)
    return text


def _check_ray_address_env(args: argparse.Namespace) -> None:
    """``RAY_ADDRESS``, which ray.init joins when ``--address`` is not given, checked as ``--address`` is: the
    README's ``ray job submit`` line sets it to the dashboard's http:// address."""
    address = os.environ.get("RAY_ADDRESS")
    problem = ray_address_problem(address) if address and args.address is None else None
    if problem is not None:
        raise SpecError(f"$RAY_ADDRESS: {problem} (or pass --address)")


def directory_name(text: str) -> str:
    """An argparse type for ``--run-name``: one directory under the storage path, not a path that leaves it."""
    if not text.strip() or "/" in text or "\\" in text or text in (".", ".."):
        raise argparse.ArgumentTypeError(f"expected a directory name (no '/', not '.' or '..'), got {text!r}")
    return text


def _start_ray(spec: Spec, args: argparse.Namespace) -> None:
    """Start or join Ray for ``spec``: a trial too big for the embedded Ray is bad input (SpecError, exit 2);
    on a cluster that cannot hold one trial now, say what the search waits for and go on."""
    from clp_tune.search import ensure_ray_for

    waiting = ensure_ray_for(spec, num_cpus=args.num_cpus, address=args.address)
    if waiting:
        print(waiting, file=sys.stderr)


def _search_outcome(run_dir: Path) -> int:
    """Exit 1 with one line when no trial finished (the tables and report are written either way), else 0."""
    from clp_tune.search import failed_search_reason

    reason = failed_search_reason(run_dir)
    if reason:
        print(f"error: {reason}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def _print_library_bank(paths: RunPaths) -> None:
    if paths.library_bank is not None:
        print(f"bank library:  {paths.library_bank} (later searches of this dataset and model fit on it)")


def _run(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.spec)  # before importing the search (torch, Ray: seconds), so bad input is instant
    _check_ray_address_env(args)
    from clp_tune.remote import check_storage
    from clp_tune.search import check_new_run, run_search
    from clp_tune.stopping.fit_cache import show_fits

    check_storage(args.storage_path)
    if args.run_name is not None:  # the default name carries the time: a new directory
        check_new_run(args.storage_path, args.run_name)
    show_fits()
    _start_ray(spec, args)
    paths = run_search(spec, storage_path=args.storage_path, run_name=args.run_name, reports_dir=args.reports_dir)
    print(f"\nrun directory: {paths.run_dir}")
    print(f"trajectories:  {paths.run_dir / TRAJECTORIES_FILE}")
    print(f"report:        {paths.report_dir / REPORT_PAGE}")
    _print_library_bank(paths)
    return _search_outcome(paths.run_dir)


def _resume(args: argparse.Namespace) -> int:
    from clp_tune.remote import open_run
    from clp_tune.search import resume_search
    from clp_tune.stopping.fit_cache import show_fits

    _check_ray_address_env(args)
    experiment, local_dir = open_run(args.run_dir)
    show_fits()
    _start_ray(load_spec(local_dir / SPEC_FILE), args)
    paths = resume_search(experiment, local_dir, reports_dir=args.reports_dir)
    print(f"\nreport: {paths.report_dir / REPORT_PAGE}")
    _print_library_bank(paths)
    return _search_outcome(paths.run_dir)


def _validate(args: argparse.Namespace) -> int:
    spec = load_spec_file(args.spec)
    count, grids = spec.trial_count(), " × ".join(str(size) for size in spec.grid_sizes().values())
    trials = f"{count} trial" if count == 1 else f"{count} trials"
    if grids:  # Tune runs every grid point num_samples times
        trials += f" (num_samples {spec.num_samples} × grid {grids})"
    print(f"{args.spec}: valid — {trials} of {spec.model} on {spec.dataset} for {spec.epochs} epochs;")
    searcher = spec.searcher if spec.searched() else "none (nothing to sample)"
    print(f"  searcher {searcher}, scheduler {spec.scheduler.type}; searched: {spec.search_summary()}")
    return 0


def _report(args: argparse.Namespace) -> int:
    from clp_tune.remote import open_run
    from clp_tune.search import finish

    experiment, local_dir = open_run(args.run_dir)
    paths = finish(experiment, local_dir, args.reports_dir)
    print(f"report: {paths.report_dir / REPORT_PAGE}")
    return 0


def _submit(args: argparse.Namespace) -> int:
    from clp_tune.submit import submit_search

    load_spec_file(args.spec)  # reject a bad file before anything is uploaded
    return submit_search(args.spec, args.address, args.storage_path, report_dest=args.reports_dir)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="clp-tune",
        description="Hyperparameter search over the critical early period of training, on Ray Tune, with "
        "trajectory-aware early stopping. Each search is described by a YAML file (see search_spaces/).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_ray_options(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--address",
            type=ray_address,
            help="Ray cluster to join, HOST:PORT of its head or auto (default: RAY_ADDRESS, else an embedded Ray)",
        )
        command.add_argument("--num-cpus", type=at_least_one, help="CPUs of the embedded Ray (default: all cores)")
        command.add_argument(
            "--reports-dir", type=local_directory, default="reports", help="where reports/<name>/ go (default: reports)"
        )

    def command(name: str, handler, help: str, description: str | None = None) -> argparse.ArgumentParser:
        parser = commands.add_parser(name, help=help, description=description or help[0].upper() + help[1:] + ".")
        parser.set_defaults(handler=handler)
        return parser

    run = command(
        "run", _run, "run a search and write its report",
        "Validate SPEC, run the search under Ray Tune, write Parquet tables into the run directory and the HTML "
        "report into reports/<name>/index.html, and add the run's trajectories to your bank library (see `clp-tune "
        "bank`), which later trajectory searches of the same dataset and model fit their prior on. Exit 1 if no "
        "trial finished, 2 for bad input.",
    )  # fmt: skip
    run.add_argument("spec", help="search-space YAML file")
    run.add_argument(
        "--storage-path",
        type=storage_path,
        default="runs",
        help="runs directory or shared URI (s3://...); default runs",
    )
    run.add_argument("--run-name", type=directory_name, help="a new run directory's name (default: <name>-<timestamp>)")
    add_ray_options(run)

    resume = command(
        "resume", _resume, "continue an interrupted search",
        "Continue a search whose driver died: finished trials are kept, unfinished trials continue from their last "
        "checkpoint, and the search ends with the planned number of trials.",
    )  # fmt: skip
    resume.add_argument("run_dir", help="the run directory (runs/<name>-<timestamp>) or its URI (s3://.../<name>)")
    add_ray_options(resume)

    command("validate", _validate, "check a search-space file without running it").add_argument(
        "spec", help="search-space YAML file"
    )

    report = command("report", _report, "(re)write the Parquet tables and HTML report of a run")
    report.add_argument("run_dir", help="the run directory or its URI (s3://.../<name>)")
    report.add_argument(
        "--reports-dir", type=local_directory, default="reports", help="where reports/<name>/ go (default: reports)"
    )

    submit = command(
        "submit", _submit, "submit a search to a Ray cluster through the Jobs API",
        "Upload the working directory, run the search as a Ray job, stream its logs, and fetch the report from "
        "shared storage when it ends. Reach the dashboard through `ray dashboard cluster.yaml`.",
    )  # fmt: skip
    submit.add_argument("spec", help="search-space YAML file (relative to the working directory)")
    submit.add_argument("--address", required=True, help="Jobs API address, e.g. http://127.0.0.1:8265")
    submit.add_argument("--storage-path", help="shared storage URI for the run (default: CLP_TUNE_STORAGE)")
    submit.add_argument("--reports-dir", type=local_directory, default="reports", help="where the fetched report goes")

    add_bench_parser(commands)
    add_bank_parser(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except SpecError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
