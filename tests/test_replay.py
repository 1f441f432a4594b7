"""The simulator against real Ray Tune: one trial at a time, both must take the same decisions."""

from __future__ import annotations

import json
import platform
from importlib.metadata import version
from pathlib import Path

from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.cli import main

CHECKED = ["fifo", "asha-ray", "traj-file"]  # no stopping, ASHA at Ray's defaults, the trajectory scheduler


def test_simulator_and_real_ray_tune_take_the_same_decisions(ray_local, tmp_path: Path, capsys) -> None:
    synthetic_bank(8, 6, seed=4).to_parquet(tmp_path / "bank.parquet")
    synthetic_bank(20, 6, seed=5).to_parquet(tmp_path / "prior.parquet")  # enough trials for the prior's trees
    common = ["bench", "schedulers", "--bank", str(tmp_path / "bank.parquet"), "--orders", "1",
              "--prior", str(tmp_path / "prior.parquet"), "--schedulers", ",".join(CHECKED)]  # fmt: skip
    tables, figures = {}, {}
    for backend, flags in (("ray", ["--ray"]), ("simulator", ["--workers", "1"])):
        assert main([*common, *flags, "--json", str(tmp_path / f"{backend}.json")]) == 0
        tables[backend] = capsys.readouterr().out.rsplit("\n\n", 1)[0]  # the last paragraph: wall time, backend
        figures[backend] = json.loads((tmp_path / f"{backend}.json").read_text())
    assert tables["ray"] == tables["simulator"]
    assert figures["ray"]["packages"]["scikit-learn"] == version("scikit-learn")  # the fits' versions, recorded
    machine = figures["ray"]["machine"]  # and where they ran: the processor and the BLAS kernels chosen for it
    assert machine["architecture"] == platform.machine() and machine["cpu"] and machine["blas"] != "none found"
    epochs = {}
    for backend, result in figures.items():
        rows = result["tasks"][0]["schedulers"]["1"]
        epochs[backend] = {name: list(rows[name]["per_order"][0]["trial_epochs"].items()) for name in CHECKED}
    assert epochs["ray"] == epochs["simulator"]
    assert [sum(e for _, e in epochs["ray"][name]) for name in CHECKED][0] == 48  # FIFO runs every epoch
    assert all(sum(e for _, e in epochs["ray"][name]) < 48 for name in CHECKED[1:])  # the others stopped trials
