"""Bad input everywhere: each is refused with exit 2 and one line naming the file (and the key or column), fast,
before anything starts (no Ray, no run directory).

Specs go through ``clp-tune run`` itself, in this process: a spec the checks let through would start Ray and make
a run directory, which the test sees. Banks go through ``clp-tune bench schedulers --bank`` and through a spec's
``scheduler.bank``; run directories through ``clp-tune report`` and ``clp-tune resume``; where a search goes
(``--storage-path``, ``--run-name``, ``--address``) through ``clp-tune run``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import tiny_spec
from s3_server import moto_s3

from clp_tune.cli import main, ray_address

SECONDS = 1.0  # per refusal, measured inside the test on a busy 2-core machine


def _spec_text(**overrides) -> str:
    return yaml.safe_dump(tiny_spec(**overrides), sort_keys=False)


def _without(key: str) -> str:
    spec = tiny_spec()
    del spec[key]
    return yaml.safe_dump(spec, sort_keys=False)


def _with_params(**params) -> str:
    return _spec_text(params={"lr": {"loguniform": [0.001, 0.01]}, **params})


BILLION_LAUGHS = "name: lol\n" + "".join(
    f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]\n" if i else "l0: &l0 [lol]\n" for i in range(10)
)

#: (id, file contents as text or bytes, a word the one-line error must contain besides the file's name)
SPECS: list[tuple[str, str | bytes, str]] = [
    # types
    ("epochs-string", _spec_text(epochs="ten"), "epochs"),
    ("num-samples-float", _spec_text(num_samples=2.5), "num_samples"),
    ("name-int", _spec_text(name=123), "name"),
    ("dataset-list", _spec_text(dataset=["digits"]), "dataset"),
    ("params-list", _spec_text(params=[1, 2]), "params"),
    ("resources-string", _spec_text(resources="cpu"), "resources"),
    ("statistics-int", _spec_text(statistics=5), "statistics"),
    ("scheduler-int", _spec_text(scheduler=7), "scheduler"),
    ("concurrency-bool", _spec_text(max_concurrent_trials=True), "max_concurrent_trials"),
    ("distribution-args-string", _with_params(dropout={"uniform": "low"}), "dropout"),
    # ranges
    ("epochs-zero", _spec_text(epochs=0), "epochs"),
    ("num-samples-negative", _spec_text(num_samples=-1), "num_samples"),
    ("gpu-fraction-above-one", _spec_text(resources={"cpu": 1, "gpu": 1.5}), "gpu"),
    ("cpu-zero", _spec_text(resources={"cpu": 0}), "cpu"),
    ("search-seed-negative", _spec_text(search_seed=-3), "search_seed"),
    ("loguniform-reversed", _with_params(weight_decay={"loguniform": [0.1, 0.001]}), "weight_decay"),
    ("delta-above-one", _spec_text(scheduler={"type": "trajectory", "delta": 1.5}), "delta"),
    ("k-zero", _spec_text(scheduler={"type": "trajectory", "k": 0}), "k"),
    ("min-fraction-zero", _spec_text(scheduler={"type": "trajectory", "min_fraction": 0}), "min_fraction"),
    ("checkpoints-kept-zero", _spec_text(checkpoints_kept=0), "checkpoints_kept"),
    ("checkpoint-every-zero", _spec_text(checkpoint_every=0), "checkpoint_every"),
    ("fixed-seed-repeated", _spec_text(params={"seed": 3}), "seed"),
    # unknown keys and values
    ("unknown-top-level-key", _spec_text(epoch=3), "epoch"),
    ("unknown-knob", _with_params(learning_rate=0.1), "learning_rate"),
    ("unknown-scheduler-option", _spec_text(scheduler={"type": "trajectory", "kk": 1}), "kk"),
    ("unknown-resource", _spec_text(resources={"cpu": 1, "tpu": 1}), "tpu"),
    ("unknown-scheduler", _spec_text(scheduler="hyperband"), "scheduler"),
    ("unknown-dataset", _spec_text(dataset="imagenet"), "dataset"),
    ("missing-dataset", _without("dataset"), "dataset"),
    # not a spec at all
    ("empty-file", "", "mapping"),
    ("only-a-comment", "# nothing here\n", "mapping"),
    ("a-scalar", "hello\n", "mapping"),
    ("a-list", "- name: x\n- dataset: digits\n", "mapping"),
    ("binary-junk", bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)), "read"),
    ("broken-yaml", "name: [unclosed\ndataset: digits\n", "YAML"),
    ("utf16", _spec_text().encode("utf-16"), "read"),
    # too big to be a spec, or to parse
    ("ten-megabytes", "name: big\ndescription: '" + "x" * 10_000_000 + "'\n", "bytes"),
    ("billion-laughs", BILLION_LAUGHS, "aliases are expanded"),
    ("nested-500-deep", "name: " + "[" * 500 + "]" * 500 + "\n", "nested"),
    ("nested-past-libyaml", "name: " + "[" * 5000 + "]" * 5000 + "\n", "YAML"),
    ("a-wide-list", "name: [" + "1," * 2_500 + "1]\n", "nodes"),
]


@pytest.mark.parametrize(("contents", "word"), [case[1:] for case in SPECS], ids=[case[0] for case in SPECS])
def test_malformed_spec_is_refused_fast_and_starts_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], contents: str | bytes, word: str
) -> None:
    import ray

    path = tmp_path / "spec.yaml"
    if isinstance(contents, bytes):
        path.write_bytes(contents)
    else:
        path.write_text(contents)
    runs, reports = tmp_path / "runs", tmp_path / "reports"
    started = time.perf_counter()
    code = main(["run", str(path), "--storage-path", str(runs), "--reports-dir", str(reports), "--num-cpus", "2"])
    seconds = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2, err
    assert seconds < SECONDS, f"refused in {seconds:.2f} s"
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}"), err
    assert word in lines[0], lines[0]
    assert not ray.is_initialized() and not runs.exists() and not reports.exists()


def test_a_directory_or_no_file_is_not_a_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (tmp_path, tmp_path / "absent.yaml"):
        assert main(["validate", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err, err


# --- banks ------------------------------------------------------------------------------------------------------


def _bank(trials: int = 3, epochs: int = 4) -> pd.DataFrame:
    rows = [
        {"trial_id": f"t{t}", "epoch": e, "val_acc": 0.1 + 0.2 * e / epochs + 0.01 * t, "config/epochs": epochs,
         "config/lr": 0.01 * (t + 1)}
        for t in range(trials) for e in range(1, epochs + 1)
    ]  # fmt: skip
    return pd.DataFrame(rows)


def _string_val_acc(bank: pd.DataFrame) -> pd.DataFrame:
    return bank.assign(val_acc=bank["val_acc"].map(lambda v: f"{v:.2f}"))


def _nan_val_acc(bank: pd.DataFrame) -> pd.DataFrame:
    return bank.assign(val_acc=bank["val_acc"].where(bank.index != 5))


def _repeated_epoch(bank: pd.DataFrame) -> pd.DataFrame:
    return pd.concat([bank, bank.iloc[[2]]], ignore_index=True)


def _no_complete_trial(bank: pd.DataFrame) -> pd.DataFrame:
    return bank[bank["epoch"] < 4]


#: (id, how a good bank is broken, the column the error names)
BANKS: list[tuple[str, Callable[[pd.DataFrame], pd.DataFrame] | None, str]] = [
    ("missing-val-acc", lambda bank: bank.drop(columns=["val_acc"]), "val_acc"),
    ("missing-epoch", lambda bank: bank.drop(columns=["epoch"]), "epoch"),
    ("missing-trial-id", lambda bank: bank.drop(columns=["trial_id"]), "trial_id"),
    ("string-val-acc", _string_val_acc, "val_acc"),
    ("nan-val-acc", _nan_val_acc, "val_acc"),
    ("repeated-epoch", _repeated_epoch, "epoch"),
    ("no-complete-trial", _no_complete_trial, "epoch"),
    ("not-parquet", None, "Parquet"),
]


def _write_bank(path: Path, broken: Callable[[pd.DataFrame], pd.DataFrame] | None) -> Path:
    if broken is None:
        path.write_text("trial_id,epoch,val_acc\nt0,1,0.5\n")
    else:
        broken(_bank()).to_parquet(path)
    return path


@pytest.mark.parametrize(("broken", "column"), [case[1:] for case in BANKS], ids=[case[0] for case in BANKS])
def test_bad_bank_is_refused_by_the_benchmark(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: Callable | None, column: str
) -> None:
    bank = _write_bank(tmp_path / "bank.parquet", broken)
    assert main(["bench", "schedulers", "--bank", str(bank), "--orders", "1", "--workers", "1", "--jobs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(bank) in err and column in err, err


@pytest.mark.parametrize(("broken", "column"), [case[1:] for case in BANKS], ids=[case[0] for case in BANKS])
def test_bad_bank_in_a_spec_is_refused_at_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], broken: Callable | None, column: str
) -> None:
    import ray

    bank = _write_bank(tmp_path / "bank.parquet", broken)
    path = tmp_path / "spec.yaml"
    path.write_text(_spec_text(scheduler={"type": "trajectory", "bank": str(bank)}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "scheduler.bank" in err and str(bank) in err and column in err, err
    runs = tmp_path / "runs"
    assert main(["run", str(path), "--storage-path", str(runs), "--reports-dir", str(tmp_path / "r")]) == 2
    assert not ray.is_initialized() and not runs.exists()


def test_a_good_bank_passes(tmp_path: Path) -> None:
    """The checks refuse the broken banks above, not banks as such."""
    bank = _write_bank(tmp_path / "bank.parquet", lambda bank: bank)
    path = tmp_path / "spec.yaml"
    path.write_text(_spec_text(scheduler={"type": "trajectory", "bank": str(bank)}))
    assert main(["validate", str(path)]) == 0


# --- run directories ---------------------------------------------------------------------------------------------


def _not_runs(tmp_path: Path) -> dict[str, Path]:
    spec_only = tmp_path / "spec-only"
    spec_only.mkdir()
    (spec_only / "spec.yaml").write_text(_spec_text())
    empty = tmp_path / "empty"
    empty.mkdir()
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    return {"absent": tmp_path / "absent", "empty": empty, "a-file": a_file, "under-a-file": a_file / "run",
            "spec-only": spec_only}  # fmt: skip


@pytest.mark.parametrize("command", ["report", "resume"])
def test_report_and_resume_refuse_what_is_not_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    import ray

    for name, path in _not_runs(tmp_path).items():
        assert main([command, str(path), "--reports-dir", str(tmp_path / "reports")]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and str(path) in err, (name, err)
    assert not ray.is_initialized() and not (tmp_path / "reports").exists()


#: (a URI pyarrow cannot even parse, its refusal's start): refused before any network is asked.
UNPARSABLE_URIS = [
    ("s3://", "error: RUN_DIR: expected s3://BUCKET/PATH, got 's3://'"),  # no bucket
    ("s3:///x", "error: RUN_DIR: expected s3://BUCKET/PATH, got 's3:///x'"),
    ("foo://x/y", "error: RUN_DIR: cannot read foo://x/y (Unrecognized filesystem type"),  # an unknown scheme
]


@pytest.mark.parametrize("command", ["report", "resume"])
def test_report_and_resume_refuse_a_uri_that_names_no_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Before, these were tracebacks (exit 1) from pyarrow's ArrowInvalid, which is not an OSError."""
    import ray

    monkeypatch.chdir(tmp_path)  # where a URI run's local copy (runs/<name>) would go
    for uri, start in UNPARSABLE_URIS:
        assert main([command, uri, "--reports-dir", "reports"]) == 2, uri
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(start), (uri, lines)
    assert not ray.is_initialized() and not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()


def _refused_by_argparse(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The last stderr line of a command line argparse refuses (exit 2), after its usage line."""
    with pytest.raises(SystemExit) as refused:
        main(argv)
    assert refused.value.code == 2, argv
    return capsys.readouterr().err.strip().splitlines()[-1]


def test_run_refuses_a_storage_path_that_is_or_is_under_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the search started Ray and failed making its run directory (NotADirectoryError, exit 1)."""
    import ray

    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_text())
    for storage in (spec, spec / "runs", spec / "runs" / "deeper"):
        line = _refused_by_argparse(["run", str(spec), "--storage-path", str(storage), "--reports-dir",
                                     str(tmp_path / "reports")], capsys)  # fmt: skip
        assert line == (f"clp-tune run: error: argument --storage-path: expected a directory (or a path to make "
                        f"one), but {spec} is a file"), line  # fmt: skip
    assert not ray.is_initialized() and not (tmp_path / "reports").exists()


#: (--address, words its refusal must hold besides the address)
BAD_ADDRESSES = [
    ("http://127.0.0.1:8265", "clp-tune submit --address"),  # the Jobs API's: submit's, as in the README
    ("https://ray.example.org:8265", "clp-tune submit --address"),
    ("ray://127.0.0.1:10001", "HOST:PORT"),
    ("127.0.0.1", "HOST:PORT"),
    ("127.0.0.1:port", "HOST:PORT"),
    (":6379", "HOST:PORT"),
    ("local", "HOST:PORT"),
]


@pytest.mark.parametrize("command", ["run", "resume"])
def test_run_and_resume_refuse_an_address_ray_cannot_join(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """Before, ``run --address http://...`` (the dashboard's address, which ``submit`` takes) started the search and
    ended in a ValueError traceback from ray.init (exit 1). RAY_ADDRESS, read when ``--address`` is not given, is
    checked the same way."""
    import ray

    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_text())
    target = [str(spec), "--storage-path", str(tmp_path / "runs")] if command == "run" else [str(tmp_path / "r")]
    reports = ["--reports-dir", str(tmp_path / "reports")]
    for address, words in BAD_ADDRESSES:
        line = _refused_by_argparse([command, *target, "--address", address, *reports], capsys)
        assert line.startswith(f"clp-tune {command}: error: argument --address: expected a Ray cluster's address"), line
        assert repr(address) in line and words in line, line
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")
    assert main([command, *target, *reports]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: $RAY_ADDRESS: expected"), lines
    assert "'http://127.0.0.1:8265'" in lines[0] and "clp-tune submit --address" in lines[0], lines
    assert not ray.is_initialized() and not (tmp_path / "runs").exists() and not (tmp_path / "reports").exists()
    for good in ("10.0.0.5:6379", "head.example.org:6379", "[::1]:6379", "auto"):  # what ray.init joins
        assert ray_address(good) == good


def _run_refusal(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """The one error line of a ``clp-tune run`` refused with exit 2 before Ray started."""
    import ray

    assert main(argv) == 2, argv
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert not ray.is_initialized()
    return lines[0]


def test_run_refuses_a_run_name_that_holds_a_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, a second search with the same --run-name wrote into the first one's directory: both experiments'
    states and trial directories in one place, tables of the second alone, and a trajectory scheduler taking the
    first one's state and kept banks for its own. A run is what a search writes first (spec.yaml) or what resume
    reads (Ray's experiment state); a directory holding neither is not one."""
    from clp_tune.search import check_new_run

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_text())
    for name, marker in (("spec-only", "spec.yaml"), ("state-only", "experiment_state-2026-01-01_00-00-00.json")):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True)
        (run_dir / marker).write_text("{}")
        for storage in ("runs", str(tmp_path / "runs")):
            line = _run_refusal(["run", str(spec), "--storage-path", storage, "--run-name", name, "--reports-dir",
                                 "reports"], capsys)  # fmt: skip
            where = f"{storage}/{name}"
            assert line == (f"error: --run-name {name}: {where} already holds a run; continue it with clp-tune "
                            f"resume {where}, or choose another --run-name"), line  # fmt: skip
        assert [entry.name for entry in run_dir.iterdir()] == [marker]  # nothing written beside it
    (tmp_path / "runs" / "a-file").write_text("x")  # making the run directory would fail after Ray started
    line = _run_refusal(["run", str(spec), "--run-name", "a-file", "--reports-dir", "reports"], capsys)
    assert line == ("error: --run-name a-file: expected a directory (or a path to make one) at runs/a-file, but "
                    "runs/a-file is a file"), line  # fmt: skip
    assert not (tmp_path / "reports").exists()
    (tmp_path / "runs" / "not-a-run").mkdir()
    (tmp_path / "runs" / "not-a-run" / "notes.txt").write_text("mine")
    for name in ("not-a-run", "absent"):  # a directory of other files, or none: a new run's
        check_new_run("runs", name)


def test_run_refuses_a_run_name_that_holds_a_run_on_s3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for a URI storage path (a local S3 server): the run's directory in the bucket is listed, and the
    driver's local copy of a run of that name (runs/<name>, from an earlier run or report) is checked too."""
    import pyarrow.fs

    from clp_tune.search import check_new_run

    monkeypatch.chdir(tmp_path)
    spec = tmp_path / "spec.yaml"
    spec.write_text(_spec_text())
    with moto_s3("clp-tune-bad-input", tmp_path / "moto.log"):
        storage = "s3://clp-tune-bad-input/runs"
        fs, base = pyarrow.fs.FileSystem.from_uri(f"{storage}/taken")
        with fs.open_output_stream(f"{base}/spec.yaml") as out:
            out.write(_spec_text().encode())
        line = _run_refusal(["run", str(spec), "--storage-path", storage, "--run-name", "taken"], capsys)
        assert line == (f"error: --run-name taken: {storage}/taken already holds a run; continue it with clp-tune "
                        f"resume {storage}/taken, or choose another --run-name"), line  # fmt: skip
        (tmp_path / "runs" / "copied").mkdir(parents=True)
        (tmp_path / "runs" / "copied" / "spec.yaml").write_text(_spec_text())
        line = _run_refusal(["run", str(spec), "--storage-path", storage, "--run-name", "copied"], capsys)
        assert line.startswith("error: --run-name copied: runs/copied, where this driver keeps its copy"), line
        check_new_run(storage, "fresh")
    assert sorted(path.name for path in (tmp_path / "runs").iterdir()) == ["copied"]
