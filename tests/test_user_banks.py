"""The user's bank library: a finished search adds its trajectories, a later search of the same dataset and model
fits its prior on them, and damaged files in the library are skipped with a warning, never fatal."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pandas as pd
import pytest
from conftest import REPO, tiny_spec

from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.cli import main
from clp_tune.search import make_scheduler, prior_banks, run_search
from clp_tune.spec import SpecError, parse_spec
from clp_tune.stopping.user_banks import bank_rows, list_banks, matching, newest
from clp_tune.vocabulary import PRIOR_BANKS_FILE


def test_a_search_grows_the_library_and_the_next_one_fits_on_it(ray_local, tmp_path: Path, caplog, capsys) -> None:
    library = tmp_path / "banks"
    library.mkdir()
    (library / "junk.parquet").write_bytes(b"\x00 not parquet at all")
    pd.DataFrame({"x": [1, 2]}).to_parquet(library / "foreign.parquet")  # Parquet, but not a bank
    spec = parse_spec(tiny_spec(epochs=3, num_samples=3, scheduler={"type": "trajectory"}, statistics=[],
                                bank_library=str(library)))  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="clp_tune.stopping.user_banks"):
        paths = run_search(spec, storage_path=tmp_path / "runs", run_name="first", reports_dir=tmp_path / "reports")
    assert "skipping" in caplog.text and "junk.parquet" in caplog.text and "foreign.parquet" in caplog.text
    assert "has no complete bank of digits/mlp yet" in capsys.readouterr().err  # the user is told what it fits on
    assert paths.library_bank == library / "first.parquet"

    trials = pd.read_parquet(paths.run_dir / "trials.parquet")
    (bank,) = list_banks(library)  # the damaged files are skipped
    assert (bank.name, bank.dataset, bank.model) == ("first", "digits", "mlp")
    assert bank.trials == len(trials) and bank.complete == int((trials["status"] == "finished").sum()) > 0

    scheduler = make_scheduler(spec, tmp_path / "next")
    assert scheduler.user_banks == (str(library / "first.parquet"),)
    assert f"+ 1 bank(s) of your library {library} for digits/mlp" in capsys.readouterr().err
    shutil.copyfile(library / "first.parquet", library / "later.parquet")  # the library grows while it runs
    assert make_scheduler(spec, tmp_path / "next").user_banks == scheduler.user_banks  # resumed: the same prior
    assert len(make_scheduler(spec, tmp_path / "fresh").user_banks) == 2  # a new search: both
    (tmp_path / "torn").mkdir()
    (tmp_path / "torn" / PRIOR_BANKS_FILE).write_text('["/lib/fir')  # torn by a crash as it was written
    assert len(make_scheduler(spec, tmp_path / "torn").user_banks) == 2  # chosen again, not a crash
    (library / "later.parquet").unlink()
    fitted_on = {tid.split("/")[0] for tid in scheduler.predictor.prior_trial_ids}
    assert "user:first" in fitted_on and len(fitted_on) > 1  # the user's bank on top of the shipped suite
    other = parse_spec(tiny_spec(dataset="mnist1d", model="cnn1d", scheduler={"type": "trajectory"},
                                 bank_library=str(library)))  # fmt: skip
    assert make_scheduler(other, tmp_path / "other").user_banks == ()  # another dataset: not a match
    partial = pd.read_parquet(library / "first.parquet").assign(complete=False)  # a run stopped before any end
    partial.to_parquet(library / "partial.parquet")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="clp_tune.stopping.user_banks"):
        assert [(b.name, b.complete) for b in list_banks(library)] == [("first", bank.complete), ("partial", 0)]
        fitted = matching(list_banks(library), "digits", "mlp")
        assert [b.path for b in fitted] == [library / "first.parquet"]  # none of the partial run's trials yet
    assert "partial" not in caplog.text  # a valid entry, not a damaged one

    assert main(["bank", "list", "--library", str(library)]) == 0
    assert "first" in capsys.readouterr().out
    assert main(["bank", "add", str(library / "foreign.parquet"), "--library", str(tmp_path / "b2")]) == 2
    assert "foreign.parquet" in capsys.readouterr().err
    assert main(["bank", "add", str(library / "first.parquet"), "--library", str(tmp_path / "b2")]) == 0
    assert [b.name for b in list_banks(tmp_path / "b2")] == ["first"]
    for again in (library / "first.parquet", tmp_path / "b2" / "first.parquet"):  # the same name; the same file
        assert main(["bank", "add", str(again), "--library", str(tmp_path / "b2")]) == 2
        assert "already has a bank named 'first'" in capsys.readouterr().err
    shutil.copyfile(library / "first.parquet", tmp_path / "other.pq")
    assert main(["bank", "add", str(tmp_path / "other.pq"), "--library", str(tmp_path / "b2")]) == 0
    assert [b.name for b in list_banks(tmp_path / "b2")] == ["first", "other"]  # listed whatever its suffix was
    assert list((tmp_path / "b2").glob("*.tmp")) == []
    assert main(["bank", "remove", "other", "--library", str(tmp_path / "b2")]) == 0
    assert main(["bank", "remove", "nothing", "--library", str(tmp_path / "b2")]) == 2
    assert main(["bank", "remove", "first", "--library", str(tmp_path / "b2")]) == 0
    assert list_banks(tmp_path / "b2") == []


def test_the_library_can_be_turned_off(tmp_path: Path, monkeypatch) -> None:
    spec = parse_spec(tiny_spec(scheduler={"type": "trajectory"}, bank_library="off"))
    assert make_scheduler(spec, tmp_path).user_banks == ()
    monkeypatch.setenv("CLP_TUNE_BANKS", str(tmp_path / "lib"))
    assert main(["bank", "list"]) == 0


def test_a_library_that_is_a_file_is_refused_naming_where_it_was_set(tmp_path: Path, monkeypatch, capsys) -> None:
    """Before, a spec's ``bank_library`` naming a file was valid: the search ran without a library and then failed to
    add its bank with a warning; `bank add --library FILE` blamed a bank of that name. A path under a file
    (`FILE/banks`) stayed valid after that, until the nearest existing parent was checked."""
    a_file = tmp_path / "banks.txt"
    a_file.write_text("not a directory")
    for library in (a_file, a_file / "banks" / "more"):
        with pytest.raises(SpecError, match=r"bank_library: expected a directory .* but .*banks\.txt is a file$"):
            parse_spec(tiny_spec(scheduler={"type": "trajectory"}, bank_library=str(library)))
    for command in (["list"], ["add", str(a_file)], ["remove", "x"]):
        assert main(["bank", *command, "--library", str(a_file)]) == 2, command
        assert capsys.readouterr().err.startswith("error: --library: expected a directory"), command
        assert main(["bank", *command, "--library", str(a_file / "banks")]) == 2, command
        assert capsys.readouterr().err.startswith("error: --library: expected a directory"), command
    monkeypatch.setenv("CLP_TUNE_BANKS", str(a_file))
    with pytest.raises(SpecError, match=r"\$CLP_TUNE_BANKS: expected a directory"):
        parse_spec(tiny_spec(scheduler={"type": "trajectory"}))
    assert main(["bank", "list"]) == 2 and "$CLP_TUNE_BANKS" in capsys.readouterr().err
    monkeypatch.setenv("CLP_TUNE_BANKS", str(tmp_path / "not yet made"))  # made when the first bank is added
    assert parse_spec(tiny_spec(scheduler={"type": "trajectory"})).bank_library is None


def test_a_search_fits_on_the_newest_banks_up_to_a_bound(tmp_path: Path, capsys) -> None:
    """The prior's fits grow with the rows they are given and the library by a bank per finished search: a search
    fits on its newest banks until they hold PRIOR_TRIALS complete trials, says how many it left out, and a resumed
    search keeps its choice."""
    library = tmp_path / "banks"
    library.mkdir()
    for age, (name, trials) in enumerate([("newest", 6), ("middle", 5), ("oldest", 7)]):
        frame = synthetic_bank(trials, 4, seed=age, statistics=False)
        bank_rows(frame, "digits", "mlp", budget=4).to_parquet(library / f"{name}.parquet")
        os.utime(library / f"{name}.parquet", (1e9 - age, 1e9 - age))
    assert [b.name for b in newest(list_banks(library), trials=11)] == ["newest", "middle"]  # 6 + 5 reach 11
    assert [b.name for b in newest(list_banks(library), trials=7)] == ["newest", "middle"]  # kept whole
    assert [b.name for b in newest(list_banks(library), trials=6)] == ["newest"]

    spec = parse_spec(tiny_spec(epochs=4, scheduler={"type": "trajectory"}, bank_library=str(library)))
    with mock.patch("clp_tune.stopping.user_banks.PRIOR_TRIALS", 11):
        chosen = prior_banks(spec, tmp_path / "run")
    assert chosen == [str(library / "newest.parquet"), str(library / "middle.parquet")]
    assert "+ 2 bank(s) of your library" in (err := capsys.readouterr().err) and "(11 complete trials" in err
    assert "1 older bank(s) left out" in err
    with mock.patch("clp_tune.stopping.user_banks.PRIOR_TRIALS", 11):
        assert main(["bank", "list", "--library", str(library)]) == 0
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed["oldest"].endswith("left out (older)") and listed["middle"].endswith("fitted on")
    os.utime(library / "oldest.parquet")  # rewritten now (a resumed run): the newest for a new search
    assert prior_banks(spec, tmp_path / "run") == chosen  # the resumed search: the same banks
    with mock.patch("clp_tune.stopping.user_banks.PRIOR_TRIALS", 11):
        assert prior_banks(spec, tmp_path / "new")[0] == str(library / "oldest.parquet")
    capsys.readouterr()
    assert prior_banks(spec, tmp_path / "all") and "left out" not in capsys.readouterr().err  # under the bound


@pytest.mark.parametrize("source", ["shipped", "foreign", "empty"])
def test_adding_a_file_that_is_not_a_library_bank_is_one_error_line(
    source: str, tmp_path: Path, caplog, capsys
) -> None:
    """Before, `bank add` of a shipped suite bank (a bank, but without the library's config/dataset, config/model and
    complete columns) printed the library's "skipping" warning and then the error: one mistake, two lines."""
    files = {
        "shipped": REPO / "clp_tune" / "stopping" / "banks" / "bank_mnist1d.parquet",
        "foreign": tmp_path / "foreign.parquet",
        "empty": tmp_path / "empty.parquet",
    }
    pd.DataFrame({"x": [1, 2]}).to_parquet(files["foreign"])
    library_bank = bank_rows(synthetic_bank(2, 4, seed=0, statistics=False), "digits", "mlp", budget=4)
    library_bank.iloc[:0].to_parquet(files["empty"])  # the library's columns, no rows
    path, library = files[source], tmp_path / "library"
    with caplog.at_level(logging.WARNING, logger="clp_tune.stopping.user_banks"):
        assert main(["bank", "add", str(path), "--library", str(library)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {path}: "), err
    assert caplog.text == ""  # no "bank library: skipping" for a file that was never in the library
    assert list_banks(library) == []
    # The real stderr (no pytest logging handler): Python's last-resort handler printed the warning there.
    command = [sys.executable, "-m", "clp_tune.cli", "bank", "add", str(path), "--library", str(library)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(f"error: {path}: ")


def test_a_non_library_file_found_in_the_library_is_still_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    """The warning belongs to listing and loading the library, a cache whose damaged entries must never be fatal."""
    library = tmp_path / "library"
    library.mkdir()
    shutil.copyfile(REPO / "clp_tune" / "stopping" / "banks" / "bank_mnist1d.parquet", library / "shipped.parquet")
    (library / "junk.parquet").write_bytes(b"\x00 not parquet at all")
    bank_rows(synthetic_bank(2, 4, seed=0, statistics=False), "digits", "mlp", budget=4).to_parquet(
        library / "good.parquet"
    )
    with caplog.at_level(logging.WARNING, logger="clp_tune.stopping.user_banks"):
        assert [bank.name for bank in list_banks(library)] == ["good"]
        assert main(["bank", "list", "--library", str(library)]) == 0
    assert "bank library: skipping" in caplog.text
    assert "shipped.parquet" in caplog.text and "junk.parquet" in caplog.text
