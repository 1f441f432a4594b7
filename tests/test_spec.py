"""Search-space validation: every shipped spec is valid; each kind of mistake gets one message and exit 2."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, tiny_spec, write_spec

from clp_tune.cli import main
from clp_tune.spec import SpecError, load_spec, param_space, parse_spec
from clp_tune.vocabulary import DETECTORS, STATISTIC_GROUPS, TRAIN_SIZES, detector_group


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path: Path) -> None:
    spec = load_spec(path)
    space = param_space(spec)
    assert space["epochs"] == spec.epochs and space["dataset"] == spec.dataset


def test_the_readmes_example_spec_is_valid(tmp_path: Path) -> None:
    """The README's "Search-space files" example is the one a newcomer copies: it must validate as it stands (its
    bank library pointed here, so that nothing is made in the user's home)."""
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Search-space files") :]
    example = section[section.index("```yaml\n") + len("```yaml\n") : section.index("\n```", section.index("```yaml"))]
    data = yaml.safe_load(example)
    assert data["bank_library"] == "~/my_banks", "the example changed: check what this test keeps out of home"
    data["bank_library"] = str(tmp_path / "banks")
    spec = parse_spec(data)
    assert spec.name == "quickstart" and spec.searched()


def test_defaults_fill_every_knob() -> None:
    spec = parse_spec(tiny_spec())
    config = spec.fixed_config()
    for knob in ("mixup_off", "mixup_alpha", "mixup_kind", "weight_decay", "label_noise", "seed", "optimizer"):
        assert knob in config
    assert "lr" not in config and "dropout" not in config  # searched, not fixed
    assert spec.scheduler.type == "fifo"


def test_window_forms_accepted() -> None:
    for window in (0, 3, 0.25, "auto:acc50", "auto:layer_rotation"):
        parse_spec(tiny_spec(params={"mixup_off": window}))


BAD_SPECS = {
    "unknown top-level key": (tiny_spec(epoch=3), "epoch: unknown key"),
    "unknown parameter": (tiny_spec(params={"learning_rate": 0.1}), "params.learning_rate: unknown parameter"),
    "wrong type": (tiny_spec(epochs="ten"), "epochs"),
    "empty choice list": (tiny_spec(params={"batch_size": {"choice": []}}), "params.batch_size.choice"),
    "low > high": (tiny_spec(params={"lr": {"uniform": [0.1, 0.01]}}), "params.lr.uniform: expected low < high"),
    "non-positive epochs": (tiny_spec(epochs=0), "epochs"),
    "unknown dataset": (tiny_spec(dataset="imagenet"), "dataset"),
    "unknown model": (tiny_spec(model="vit"), "model"),
    "unknown scheduler": (tiny_spec(scheduler="hyperband"), "scheduler.type"),
    "unknown searcher": (tiny_spec(searcher="grid"), "searcher"),
    "window longer than budget": (tiny_spec(params={"mixup_off": 10}), "params.mixup_off: the Mixup-off window"),
    "window fraction of 1": (tiny_spec(params={"mixup_off": 1.0}), "params.mixup_off: expected"),
    "unknown window detector": (tiny_spec(params={"mixup_off": "auto:magic"}), "params.mixup_off"),
    "gpu fraction above 1": (tiny_spec(resources={"cpu": 1, "gpu": 1.5}), "resources.gpu"),
    "gpu fraction below 0": (tiny_spec(resources={"cpu": 1, "gpu": -0.5}), "resources.gpu"),
    "bad mixup kind": (
        tiny_spec(params={"mixup_kind": {"choice": ["input", "cutmix"]}}),
        "params.mixup_kind.choice[1]",
    ),
    "log scale from zero": (tiny_spec(params={"lr": {"loguniform": [0, 0.1]}}), "params.lr.loguniform"),
    "range of a categorical": (tiny_spec(params={"optimizer": {"uniform": [0, 1]}}), "params.optimizer.uniform"),
    "two distributions": (tiny_spec(params={"lr": {"uniform": [0.1, 0.2], "choice": [0.1]}}), "params.lr"),
    "missing key": ({k: v for k, v in tiny_spec().items() if k != "dataset"}, "dataset: required key is missing"),
    "incompatible model": (tiny_spec(model="cnn1d"), "model: 'cnn1d' needs a 1-D dataset"),
    "grid with optuna": (tiny_spec(searcher="optuna", params={"seed": {"grid": [0, 1]}}), "params.seed.grid"),
    "unknown statistic": (tiny_spec(statistics=["entropy"]), "statistics"),
    "seed too large for a generator": (
        tiny_spec(params={"seed": 2**64}),
        "params.seed: expected an integer in [0, 2**32)",
    ),
    "mask noise of 1": (
        tiny_spec(params={"pretrain": "stacked", "pretrain_noise_level": {"grid": [0.2, 1.5]}}),
        "params.pretrain_noise_level: masking noise",
    ),
    "dropout of 1": (tiny_spec(params={"dropout": 1.0}), "params.dropout: expected a number in [0, 1)"),
    "trajectory on val_loss": (
        tiny_spec(scheduler="trajectory", metric="val_loss", mode="min"),
        "scheduler.type: 'trajectory' predicts the final val_acc",
    ),
    "trajectory delta of 1": (tiny_spec(scheduler={"type": "trajectory", "delta": 1.0}), "scheduler.delta"),
    "trajectory unknown detector": (
        tiny_spec(scheduler={"type": "trajectory", "detector": "magic"}),
        "scheduler.detector",
    ),
    "trajectory bank missing": (
        tiny_spec(scheduler={"type": "trajectory", "bank": "/nonexistent/bank.parquet"}),
        "scheduler.bank: no such file",
    ),
    # Each valid alone, not together: validated, then TrajectoryPolicy / Ray's ASHA refused them once Ray had started.
    "trajectory hopeless above the default delta": (
        tiny_spec(scheduler={"type": "trajectory", "hopeless": 0.2}),
        "scheduler.hopeless: must be <= scheduler.delta (0.05, the default; scheduler.delta not given)",
    ),
    "trajectory delta below the default hopeless": (
        tiny_spec(scheduler={"type": "trajectory", "delta": 0.005}),
        "scheduler.delta: must be >= scheduler.hopeless (0.01, the default; scheduler.hopeless not given)",
    ),
    "trajectory hopeless above the given delta": (
        tiny_spec(scheduler={"type": "trajectory", "delta": 0.03, "hopeless": 0.04}),
        "scheduler.hopeless: must be <= scheduler.delta (0.03)",
    ),
    "trajectory noise_factor infinite": (
        tiny_spec(scheduler={"type": "trajectory", "noise_grace": True, "noise_factor": float("inf")}),
        "scheduler.noise_factor: Value error, expected a finite number >= 0, got inf",
    ),
    "asha grace period past the budget": (
        tiny_spec(scheduler={"type": "asha", "grace_period": 4}),
        "scheduler.grace_period: must be <= epochs (3) for asha",
    ),
    "median grace period past the budget": (
        tiny_spec(scheduler={"type": "median", "grace_period": 4}),
        "scheduler.grace_period: must be <= epochs (3) for median",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_SPECS))
def test_bad_spec_names_the_key_and_exits_2(case: str, tmp_path: Path, capsys) -> None:
    data, expected = BAD_SPECS[case]
    path = write_spec(tmp_path / "bad.yaml", data)
    with pytest.raises(SpecError, match=None) as raised:
        load_spec(path)
    assert expected in str(raised.value)
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and expected in err  # one clear line


def test_not_yaml_and_missing_file(tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n  dataset: : :")
    assert main(["validate", str(broken)]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["validate", str(tmp_path / "absent.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    scalar = write_spec(tmp_path / "scalar.yaml", ["just", "a", "list"])
    assert main(["validate", str(scalar)]) == 2
    assert "expected a YAML mapping" in capsys.readouterr().err


def test_run_rejects_bad_file_before_ray_starts(tmp_path: Path) -> None:
    path = write_spec(tmp_path / "bad.yaml", tiny_spec(resources={"cpu": 1, "gpu": 2}))
    code = "import sys, ray; from clp_tune.cli import main; rc = main(['run', sys.argv[1]]); " \
           "print('ray-started' if ray.is_initialized() else 'ray-not-started'); sys.exit(rc)"  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "ray-not-started" in result.stdout
    assert "resources.gpu" in result.stderr


@pytest.mark.parametrize(
    "scheduler",
    [
        {"type": "trajectory", "hopeless": 0.05},  # = the default delta
        {"type": "trajectory", "delta": 0.01},  # = the default hopeless
        {"type": "trajectory", "delta": 0.2, "hopeless": 0.2},
        {"type": "trajectory", "delta": 0.3, "hopeless": 0.2},  # above the default delta, below the given one
        {"type": "trajectory", "noise_grace": True, "noise_factor": 1e6},
        {"type": "asha", "grace_period": 3},  # = epochs
        {"type": "median", "grace_period": 3},
    ],
    ids=str,
)
def test_scheduler_options_at_their_limits_validate_and_build(scheduler: dict, tmp_path: Path) -> None:
    """The cross-key checks refuse only what the scheduler refuses: what they let through builds."""
    from clp_tune.search import make_scheduler

    spec = parse_spec(tiny_spec(scheduler=scheduler, bank_library="off"))
    built = make_scheduler(spec, tmp_path)
    if scheduler["type"] == "trajectory":
        assert (built.delta, built.hopeless) == (spec.scheduler.delta or 0.05, spec.scheduler.hopeless or 0.01)


def test_run_refuses_contradicting_scheduler_options_and_duplicate_keys_before_ray_starts(tmp_path: Path) -> None:
    """`run` shares `validate`'s checks: before, these started Ray and then failed building the scheduler (hopeless,
    grace_period) or ran a search the file did not describe (a repeated key)."""
    duplicate = tmp_path / "duplicate.yaml"
    duplicate.write_text(yaml.safe_dump(tiny_spec(), sort_keys=False) + "name: again\n")
    cases = [  # (spec file, the line's start)
        (write_spec(tmp_path / "hopeless.yaml", tiny_spec(scheduler={"type": "trajectory", "hopeless": 0.2})),
         "scheduler.hopeless: must be <= scheduler.delta"),
        (write_spec(tmp_path / "delta.yaml", tiny_spec(scheduler={"type": "trajectory", "delta": 0.005})),
         "scheduler.delta: must be >= scheduler.hopeless"),
        (write_spec(tmp_path / "asha.yaml", tiny_spec(scheduler={"type": "asha", "grace_period": 9})),
         "scheduler.grace_period: must be <= epochs (3)"),
        (duplicate, "name: duplicate key 'name'"),
    ]  # fmt: skip
    code = (
        "import sys, ray; from clp_tune.cli import main\n"
        "for path in sys.argv[2:]:\n"
        "    rc = main(['run', path, '--storage-path', sys.argv[1]])\n"
        "    print(rc, 'ray-started' if ray.is_initialized() else 'ray-not-started', flush=True)\n"
        "    print('--', file=sys.stderr, flush=True)\n"
    )
    command = [sys.executable, "-c", code, str(tmp_path / "runs"), *(str(path) for path, _ in cases)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    outcomes, errors = result.stdout.splitlines(), result.stderr.split("--\n")
    assert len(outcomes) == len(cases), result.stdout + result.stderr
    for (path, words), outcome, err in zip(cases, outcomes, errors, strict=False):
        assert outcome == "2 ray-not-started", (path.name, outcome, err)
        assert err.count("\n") == 1 and err.startswith(f"error: {path}: {words}"), (path.name, err)
    assert not (tmp_path / "runs").exists()


def test_trajectory_options_reach_the_scheduler(tmp_path: Path) -> None:
    from clp_tune.search import make_scheduler
    from clp_tune.stopping.scheduler import TrajectoryScheduler

    given = {"type": "trajectory", "k": 4, "delta": 0.2, "min_fraction": 0.3, "max_fraction": 0.4, "noise_factor": 2.0}
    scheduler = make_scheduler(parse_spec(tiny_spec(scheduler=given)), tmp_path)
    assert isinstance(scheduler, TrajectoryScheduler)
    assert (scheduler.k, scheduler.delta, scheduler.min_fraction, scheduler.max_fraction, scheduler.noise_factor) == (
        4,
        0.2,
        0.3,
        0.4,
        2.0,
    )
    defaults = make_scheduler(parse_spec(tiny_spec(scheduler="trajectory")), tmp_path / "defaults")
    assert defaults.k == TrajectoryScheduler(budget=10).k  # left out: the scheduler's own default


# --- checks added for specs that validated, then failed or misbehaved at run time ----------------------------


def _digits_train() -> int:
    return TRAIN_SIZES["digits"]


def _groups_feeding(detector: str) -> list[str]:
    """The statistic group holding the detector's input (empty: always reported, like train_acc)."""
    group = detector_group(detector)
    return [] if group is None else [group]


def _statistics_without(groups: list[str]) -> list[str]:
    return [group for group in STATISTIC_GROUPS if group not in groups]


def _statistic_fed_detectors() -> list[str]:
    return [name for name in DETECTORS if _groups_feeding(name)]


def _always_fed_detectors() -> list[str]:
    return [name for name in DETECTORS if not _groups_feeding(name)]


def _error(data: dict) -> str:
    with pytest.raises(SpecError) as raised:
        parse_spec(data)
    return str(raised.value)


def test_fixed_seed_with_nothing_searched_and_several_samples_is_rejected(tmp_path: Path, capsys) -> None:
    """num_samples trials of one fixed configuration with one fixed seed would be the same trial repeated."""
    message = _error(tiny_spec(num_samples=4, params={"lr": 0.01, "batch_size": 64, "seed": 3}))
    assert message.startswith("<spec>: num_samples:") and "params.seed" in message and "got num_samples 4" in message
    parse_spec(tiny_spec(num_samples=1, params={"lr": 0.01, "batch_size": 64, "seed": 3}))  # one trial: fine
    path = write_spec(tmp_path / "same.yaml", tiny_spec(num_samples=4, params={"batch_size": 64, "seed": 3}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "num_samples" in err and "params.seed" in err


def test_nothing_searched_becomes_a_seed_grid(tmp_path: Path, capsys) -> None:
    """All params fixed: num_samples repeats over seeds search_seed.., through the basic generator even when the
    spec asks for Optuna (which refuses an empty space)."""
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from clp_tune.search import make_searcher

    data = tiny_spec(num_samples=4, searcher="optuna", search_seed=5, params={"lr": 0.01, "batch_size": 64})
    spec = parse_spec(data)
    space = param_space(spec)
    assert space["seed"] == {"grid_search": [5, 6, 7, 8]}
    assert spec.tune_num_samples() == 1
    assert isinstance(make_searcher(spec), BasicVariantGenerator)
    assert main(["validate", str(write_spec(tmp_path / "fixed.yaml", data))]) == 0
    assert "searched: nothing — 4 repeats over seeds 5..8" in capsys.readouterr().out

    searched = parse_spec(tiny_spec(num_samples=4, searcher="optuna"))  # something searched: unchanged
    assert "seed" not in searched.searched() and param_space(searched)["seed"] == 0
    assert searched.tune_num_samples() == 4 and not isinstance(make_searcher(searched), BasicVariantGenerator)


def test_high_loss_q_that_leaves_no_minibatch_is_rejected() -> None:
    """An early epoch keeps n_train - int(n_train * q) samples; fewer than batch_size fails every such trial."""
    n = _digits_train()
    q = 0.99
    kept = n - int(n * q)
    fixed = _error(tiny_spec(params={"high_loss_q": q, "batch_size": kept + 1, "mixup_off": 1}))
    assert "params.high_loss_q and params.batch_size" in fixed and f"= {kept} of the {n} digits" in fixed
    parse_spec(tiny_spec(params={"high_loss_q": q, "batch_size": kept, "mixup_off": 1}))  # exactly one batch: fine
    # Searched: judged at the worst case, the largest q and the largest batch size.
    searched = _error(
        tiny_spec(params={"high_loss_q": {"uniform": [0.0, q]}, "batch_size": {"choice": [kept, 256]},
                          "mixup_off": {"choice": [0, "auto:acc50"]}})
    )  # fmt: skip
    assert "params.high_loss_q and params.batch_size" in searched and "largest values" in searched
    assert "batch_size 256" in searched
    # No early period (mixup_off 0, or a fraction that rounds to 0 epochs): nothing is dropped, nothing to check.
    parse_spec(tiny_spec(params={"high_loss_q": q, "batch_size": 256}))
    parse_spec(tiny_spec(epochs=3, params={"high_loss_q": q, "batch_size": 256, "mixup_off": 0.1}))
    parse_spec(tiny_spec(params={"high_loss_q": 0.0, "batch_size": n, "mixup_off": 1}))


def test_high_loss_q_check_uses_each_datasets_training_split() -> None:
    """The same pair is fine on a large training split (cifar10) and not on a small one (digits)."""
    pair = {"high_loss_q": 0.9, "batch_size": 256, "mixup_off": 2}
    parse_spec(tiny_spec(dataset="cifar10", model="convnet", params=pair))
    assert "params.high_loss_q and params.batch_size" in _error(tiny_spec(params=pair))


@pytest.mark.parametrize("detector", _statistic_fed_detectors())
def test_auto_window_needs_its_detectors_statistic(detector: str, tmp_path: Path, capsys) -> None:
    """mixup_off: auto:<detector> (fixed or among choices) with the detector's input statistic switched off."""
    groups = _groups_feeding(detector)
    statistics = _statistics_without(groups)
    fixed = _error(tiny_spec(statistics=statistics, params={"mixup_off": f"auto:{detector}"}))
    assert f"params.mixup_off: auto:{detector} needs statistic {groups[0]!r}, which statistics: leaves out" in fixed
    choice = _error(tiny_spec(statistics=statistics, params={"mixup_off": {"choice": [1, f"auto:{detector}"]}}))
    assert f"params.mixup_off.choice[1]: auto:{detector} needs statistic" in choice
    grid = _error(tiny_spec(searcher="random", statistics="none", params={"mixup_off": {"grid": [f"auto:{detector}"]}}))
    assert "params.mixup_off.grid[0]" in grid and "statistics:" in grid
    parse_spec(tiny_spec(statistics=groups, params={"mixup_off": f"auto:{detector}"}))  # switched on: fine
    path = write_spec(tmp_path / "off.yaml", tiny_spec(statistics=statistics, params={"mixup_off": f"auto:{detector}"}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "params.mixup_off" in err and "statistics:" in err


@pytest.mark.parametrize("detector", _statistic_fed_detectors())
def test_trajectory_detector_needs_its_statistic(detector: str) -> None:
    groups = _groups_feeding(detector)
    data = tiny_spec(scheduler={"type": "trajectory", "detector": detector}, statistics=_statistics_without(groups))
    message = _error(data)
    assert f"scheduler.detector: detector {detector!r} needs statistic {groups[0]!r}" in message
    assert "which statistics: leaves out" in message
    parse_spec(tiny_spec(scheduler={"type": "trajectory", "detector": detector}, statistics=groups))


@pytest.mark.parametrize("detector", _always_fed_detectors())
def test_detectors_on_always_reported_columns_need_no_statistic(detector: str) -> None:
    parse_spec(tiny_spec(statistics="none", params={"mixup_off": f"auto:{detector}"}))
    parse_spec(tiny_spec(statistics="none", scheduler={"type": "trajectory", "detector": detector}))


def test_trajectory_default_detector_reads_an_always_reported_column() -> None:
    """The scheduler's default detector (from the vocabulary) needs no statistic, so `statistics: none` is valid."""
    from clp_tune.vocabulary import TRAJECTORY_OPTIONS

    assert detector_group(TRAJECTORY_OPTIONS["detector"].default) is None
    spec = parse_spec(tiny_spec(scheduler="trajectory", statistics="none"))
    assert spec.scheduler.trajectory_options() == {}


def test_run_rejects_a_trial_bigger_than_the_embedded_ray_before_ray_starts(tmp_path: Path) -> None:
    """resources: more CPUs than the embedded Ray gets, or a GPU on a machine without one, would wait forever."""
    import os

    import torch

    cases = [  # (spec file, extra CLI arguments, key, words the line must hold)
        ("cpu64.yaml", {"cpu": 64}, [], "resources.cpu", f"has {os.cpu_count()} (this machine's cores"),
        ("cpu3.yaml", {"cpu": 3}, ["--num-cpus", "2"], "resources.cpu", "has 2 (--num-cpus 2)"),
    ]
    if torch.cuda.device_count() == 0:
        cases.append(("gpu.yaml", {"cpu": 1, "gpu": 0.5}, [], "resources.gpu", "this machine has no GPU"))
    code = (
        "import sys, ray; from clp_tune.cli import main\n"
        "for arg in sys.argv[2:]:\n"
        "    path, *extra = arg.split(' ')\n"
        "    rc = main(['run', path, '--storage-path', sys.argv[1], *extra])\n"
        "    print(rc, 'ray-started' if ray.is_initialized() else 'ray-not-started', flush=True)\n"
        "    print('--', file=sys.stderr, flush=True)\n"
    )
    args = []
    for name, resources, extra, _, _ in cases:
        args.append(" ".join([str(write_spec(tmp_path / name, tiny_spec(resources=resources))), *extra]))
    command = [sys.executable, "-c", code, str(tmp_path / "runs"), *args]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    outcomes = result.stdout.splitlines()
    errors = result.stderr.split("--\n")
    assert len(outcomes) == len(cases), result.stdout + result.stderr
    for (name, _, _, key, words), outcome, err in zip(cases, outcomes, errors, strict=False):
        assert outcome == "2 ray-not-started", (name, outcome, err)
        assert err.count("\n") == 1 and err.startswith(f"error: {key}: ") and words in err, (name, err)
    assert not (tmp_path / "runs").exists()


def test_run_refuses_a_bad_run_location_or_cpu_count_before_ray_starts(tmp_path: Path) -> None:
    """Before, `--num-cpus 0` started a search that could place no trial, `--run-name ../x` started one outside the
    storage path, an S3 URI without a bucket or out of reach was a traceback after the run directory was made, and a
    `--reports-dir` under a file was a traceback once the search was over."""
    spec = str(write_spec(tmp_path / "tiny.yaml", tiny_spec()))
    cases = [  # (CLI arguments, the line's start)
        (["--run-name", "../elsewhere"], "clp-tune run: error: argument --run-name: expected a directory name"),
        (["--run-name", "."], "clp-tune run: error: argument --run-name: expected a directory name"),
        (["--storage-path", "s3://"], "error: --storage-path: expected s3://BUCKET/PATH, got 's3://'"),
        (["--storage-path", "s3://bucket/runs"], "error: --storage-path: cannot reach s3://bucket/runs ("),
        (["--num-cpus", "0"], "clp-tune run: error: argument --num-cpus: expected an integer >= 1"),
        (["--reports-dir", "tiny.yaml/reports"], "clp-tune run: error: argument --reports-dir: expected a directory"),
    ]
    code = (
        "import json, sys, ray; from clp_tune.cli import main\n"
        "for extra in json.loads(sys.argv[1]):\n"
        "    try:\n"
        "        rc = main(['run', sys.argv[2], '--storage-path', 'runs', *extra])\n"
        "    except SystemExit as exit:\n"
        "        rc = exit.code\n"
        "    print(rc, 'ray-started' if ray.is_initialized() else 'ray-not-started', flush=True)\n"
        "    print('--', file=sys.stderr, flush=True)\n"
    )
    unreachable = {**os.environ, "AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_ACCESS_KEY_ID": "x",
                   "AWS_SECRET_ACCESS_KEY": "x"}  # fmt: skip
    command = [sys.executable, "-c", code, json.dumps([extra for extra, _ in cases]), spec]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180, cwd=tmp_path, env=unreachable)
    outcomes, errors = result.stdout.splitlines(), result.stderr.split("--\n")
    assert len(outcomes) == len(cases), result.stdout + result.stderr
    for (extra, start), outcome, err in zip(cases, outcomes, errors, strict=False):
        assert outcome == "2 ray-not-started", (extra, outcome, err)
        assert err.strip().splitlines()[-1].startswith(start), (extra, err)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "elsewhere").exists()
    for command in (["report", "runs/any"], ["submit", spec, "--address", "http://127.0.0.1:8265"]):
        with pytest.raises(SystemExit) as refused:
            main([*command, "--reports-dir", spec])
        assert refused.value.code == 2, command


@pytest.mark.parametrize("argv", [["validate", str(REPO / "search_spaces" / "quickstart.yaml")], ["--help"]])
def test_validate_and_help_import_neither_torch_nor_ray(argv: list[str]) -> None:
    """Checking a spec or reading the help must be instant: the vocabulary, not the trial or Ray, names things."""
    code = (
        "import sys\nfrom clp_tune.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'ray', 'pandas', 'sklearn'})\n"
        "print('heavy:', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=60)
    assert "heavy: []" in result.stdout, result.stdout + result.stderr


# --- duplicate keys ----------------------------------------------------------------------------------------------

DUPLICATE_TEXT = """\
name: dup
dataset: digits
model: mlp
epochs: 3
num_samples: 2
searcher: random
params:
  lr: {loguniform: [0.001, 0.1]}
  batch_size: 64
  lr: 0.001
"""


@pytest.mark.parametrize(
    "text, expected",
    [
        (DUPLICATE_TEXT, "params.lr: duplicate key 'lr' at line 10 (first at line 8)"),
        (
            "name: a\n" + DUPLICATE_TEXT.replace("  lr: 0.001\n", ""),
            "name: duplicate key 'name' at line 2 (first at line 1)",
        ),
        (
            DUPLICATE_TEXT.replace("  lr: 0.001\n", "  mixup_off: {grid: [0, 1], grid: [2]}\n").replace(
                "searcher: random", "searcher: random\nscheduler: {type: asha, grace_period: 1, type: fifo}"
            ),
            "scheduler.type: duplicate key 'type' at line 7 (first at line 7)",
        ),
        (
            DUPLICATE_TEXT.replace("  lr: 0.001\n", "  mixup_off: {choice: [0, 1], choice: [2]}\n"),
            "params.mixup_off.choice: duplicate key 'choice' at line 10 (first at line 10)",
        ),
        (
            DUPLICATE_TEXT.replace("  lr: 0.001\n", "  seed: {grid: [{a: 1, a: 2}]}\n"),
            "params.seed.grid[0].a: duplicate key 'a' at line 10 (first at line 10)",
        ),
    ],
    ids=["params", "top level", "the first of two by line", "inline distribution", "inside a list"],
)
def test_duplicate_keys_are_refused_with_their_path_and_lines(text: str, expected: str, tmp_path: Path, capsys) -> None:
    """PyYAML keeps the last of a repeated key silently: a second `lr: 0.001` dropped lr from the search."""
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(SpecError) as raised:
        load_spec(path)
    assert str(raised.value).startswith(f"{path}: {expected}")
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: {expected}"), err


def test_keys_repeated_only_through_a_merge_or_an_alias_are_not_duplicates(tmp_path: Path) -> None:
    """A key overriding what a merge key (`<<: *anchor`) brought in is YAML's intended override, and a mapping shared
    by aliases is one mapping, checked once."""
    path = tmp_path / "merge.yaml"
    path.write_text(
        DUPLICATE_TEXT.replace("  lr: 0.001\n", "").replace(
            "params:\n", "params:\n  <<: &fixed {lr: 0.01, dropout: 0.1}\n"
        )
        + "resources: &res {cpu: 1}\n"
    )
    spec = load_spec(path)
    assert spec.params["lr"] == {"loguniform": [0.001, 0.1]} and spec.params["dropout"] == 0.1


# --- how many trials `validate` announces ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, trials",
    [
        ({"num_samples": 3}, 3),  # nothing gridded: num_samples
        ({"num_samples": 2, "params": {"lr": {"grid": [0.01, 0.1]}, "seed": {"grid": [0, 1, 2]}}}, 12),
        ({"num_samples": 4, "params": {"lr": 0.01, "batch_size": 64}}, 4),  # repeats over seeds
        ({"num_samples": 1, "params": {"lr": {"grid": [0.01]}, "dropout": {"choice": [0.0, 0.1]}}}, 1),
    ],
    ids=["sampled", "two grids", "seed repeats", "grid of one"],
)
def test_trial_count_is_what_tune_generates(overrides: dict, trials: int) -> None:
    """num_samples times the product of the grid sizes: what Tune's variant generator expands the space to."""
    from ray.tune.search.variant_generator import generate_variants

    spec = parse_spec(tiny_spec(**overrides))
    assert spec.trial_count() == trials
    variants = sum(1 for _ in generate_variants({"config": param_space(spec)}))
    assert variants * spec.tune_num_samples() == trials


@pytest.mark.parametrize(
    "name, line",
    [
        ("clp_window.yaml", "valid — 24 trials (num_samples 1 × grid 8 × 3) of cnn1d on mnist1d for 20 epochs;"),
        ("gradual_dae.yaml", "valid — 9 trials (num_samples 1 × grid 3 × 3) of mlp on digits for 15 epochs;"),
    ],
)
def test_validate_counts_every_grid_point(name: str, line: str, capsys) -> None:
    """Before, `validate` printed num_samples alone: "1 trials" for the 24 of clp_window.yaml's grid."""
    path = REPO / "search_spaces" / name
    assert main(["validate", str(path)]) == 0
    assert capsys.readouterr().out.splitlines()[0] == f"{path}: {line}"


def test_validate_says_one_trial_in_the_singular(tmp_path: Path, capsys) -> None:
    path = write_spec(tmp_path / "one.yaml", tiny_spec(num_samples=1))
    assert main(["validate", str(path)]) == 0
    assert f"{path}: valid — 1 trial of mlp" in capsys.readouterr().out
