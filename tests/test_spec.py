"""Search-space validation: every shipped spec is valid; each kind of mistake gets one message and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, tiny_spec, write_spec

from clp_tune.cli import main
from clp_tune.spec import SpecError, load_spec, param_space, parse_spec


@pytest.mark.parametrize("path", sorted((REPO / "search_spaces").glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_specs_are_valid(path: Path) -> None:
    spec = load_spec(path)
    space = param_space(spec)
    assert space["epochs"] == spec.epochs and space["dataset"] == spec.dataset


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


def test_trajectory_options_reach_the_scheduler(tmp_path: Path) -> None:
    from clp_tune.scheduler import TrajectoryScheduler
    from clp_tune.search import make_scheduler

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
