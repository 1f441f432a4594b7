"""The fit cache: a prior read back from disk predicts exactly what its fit did, fits nothing, and a damaged or
unwritable cache costs a refit and a warning, never a search."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from clp_tune.bench.synthetic import synthetic_bank
from clp_tune.stopping import fit_cache
from clp_tune.stopping.boosting import trees
from clp_tune.stopping.context import SearchContext
from clp_tune.stopping.features import is_complete, trajectories_from_frame
from clp_tune.stopping.fit_cache import CACHE_ENV, OFF, fit_key, show_fits
from clp_tune.stopping.predictor import FinalAccuracyPredictor
from clp_tune.stopping.prior import pooled

BANK = pooled({"first": synthetic_bank(12, 10, seed=1), "second": synthetic_bank(12, 10, seed=2)})
SEARCH = [t for t in trajectories_from_frame(synthetic_bank(12, 10, seed=3)) if is_complete(t)]


def first_predictions() -> list:
    """What a search's first results ask a fresh prior: one trial alone (gain trees), then among the others (the
    in-context model)."""
    predictor = FinalAccuracyPredictor(BANK)
    probe = SEARCH[0]
    context = SearchContext({str(i): t.history["val_acc"][:4] for i, t in enumerate(SEARCH[1:])})
    return [predictor.predict(probe.upto(4), probe.config, probe.budget),
            predictor.predict(probe.upto(4), probe.config, probe.budget, context)]  # fmt: skip


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "fits"))
    return tmp_path / "fits"


def test_a_prior_read_from_the_cache_fits_nothing_and_predicts_what_its_fit_did(cache: Path) -> None:
    fitted = first_predictions()
    kept = sorted(p.name for p in cache.iterdir())
    assert {name.rsplit("-", 1)[0] for name in kept} == {"target", "error", "out-of-fold"}, kept
    assert len(kept) == 5  # gain trees and their errors; in-context trees, their out-of-fold predictions and errors
    with mock.patch("clp_tune.stopping.boosting.trees", wraps=trees) as fits:
        assert first_predictions() == fitted
    assert fits.call_count == 0
    assert sorted(p.name for p in cache.iterdir()) == kept


def test_the_run_command_shows_each_fit_it_waits_for_and_no_read(cache: Path, capsys: pytest.CaptureFixture) -> None:
    """A machine's first search waits on the driver for the prior's fits, where Ray only says that a call was slow:
    ``clp-tune run`` shows each fit with its time (:func:`show_fits`); a later search reads them and shows none."""
    try:
        show_fits()
        show_fits()  # once is enough: no line twice
        first_predictions()
        shown = capsys.readouterr().err.splitlines()
        assert len(shown) == 5, shown
        assert all(line.startswith("trajectory prior: ") and " trees fitted in " in line for line in shown), shown
        assert all(f"kept in {cache}" in line for line in shown)
        first_predictions()
        assert capsys.readouterr().err == ""
    finally:
        for handler in list(fit_cache.logger.handlers):
            fit_cache.logger.removeHandler(handler)
        fit_cache.logger.setLevel(logging.NOTSET)


def test_a_damaged_entry_is_refitted_with_a_warning(cache: Path, caplog: pytest.LogCaptureFixture) -> None:
    fitted = first_predictions()
    entries = sorted(cache.iterdir())
    for entry in entries[1:]:
        entry.write_bytes(b"not an npz")
    with entries[0].open("wb") as foreign:  # a well-formed archive of other arrays
        np.savez(foreign, weights=np.zeros(3))
    with caplog.at_level(logging.WARNING, logger="clp_tune.stopping.fit_cache"):
        assert first_predictions() == fitted
    assert sum("unreadable" in r.getMessage() for r in caplog.records) == 5, caplog.text
    for entry in cache.iterdir():  # refitted and kept again
        with np.load(entry, allow_pickle=False) as arrays:
            assert {"value", "predicted"} & set(arrays.files), arrays.files


def test_a_cache_that_cannot_be_written_only_warns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(CACHE_ENV, OFF)
    fitted = first_predictions()
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocked / "fits"))
    with caplog.at_level(logging.INFO, logger="clp_tune.stopping.fit_cache"):
        assert first_predictions() == fitted
    assert "not kept" in caplog.text and "kept in" not in caplog.text  # no fit said to be kept
    assert blocked.read_text() == ""
    assert [p.name for p in tmp_path.iterdir()] == ["a-file"]  # and "off" kept nothing anywhere


def test_fits_on_the_searchs_own_trials_are_not_kept(cache: Path) -> None:
    """Only fits on the bank alone are the same in the next search; a refit with this search's trials is its own."""
    predictor = FinalAccuracyPredictor(BANK, refit_every=2)
    probe = SEARCH[0]
    predictor.predict(probe.upto(4), probe.config, probe.budget)
    kept = sorted(cache.iterdir())
    predictor.observe_finished(SEARCH[1:3])
    refitted = predictor.predict(probe.upto(4), probe.config, probe.budget)
    assert refitted != FinalAccuracyPredictor(BANK).predict(probe.upto(4), probe.config, probe.budget)
    assert sorted(cache.iterdir()) == kept


def test_the_key_changes_with_every_input() -> None:
    x = np.arange(12.0).reshape(4, 3)
    key = fit_key("target", x, x[:, 0], None, 0)
    changed = x.copy()
    changed[3, 2] += 1e-12
    assert fit_key("target", x, x[:, 0], None, 0) == key
    assert len({key, fit_key("target", changed, x[:, 0], None, 0), fit_key("target", x, x[:, 0], None, 1),
                fit_key("error", x, x[:, 0], None, 0), fit_key("target", x.astype(np.float32), x[:, 0], None, 0),
                fit_key("target", x, x[:, 0], np.ones(4), 0)}) == 6  # fmt: skip


def test_the_prior_fit_benchmark_gets_the_same_predictions_all_three_ways() -> None:
    from clp_tune.bench.cost import prior_fit_cost

    cost = prior_fit_cost(tasks=("digits_convnet_adamw_20",))
    assert cost["same"] and cost["kept_mb"] > 0
    assert set(cost["runs"]) == {"off", "empty", "warm"}
    assert all(run["predictions"][0] != run["predictions"][1] for run in cost["runs"].values())  # alone, in context


def test_the_least_recently_used_entries_go_beyond_the_bound(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:

    x = np.arange(30.0).reshape(10, 3)
    fits = [lambda i=i: {"value": np.full(2, float(i))} for i in range(4)]
    kept = [fit_cache.cached("probe", fit, dict, dict, x, i) for i, fit in enumerate(fits[:3])]
    oldest = next(p for p in cache.iterdir() if fit_key("probe", x, 0) in p.name)
    os.utime(oldest, (1, 1))  # long unused ...
    assert fit_cache.cached("probe", fits[0], dict, dict, x, 0)["value"][0] == kept[0]["value"][0]  # ... read now
    second = next(p for p in cache.iterdir() if fit_key("probe", x, 1) in p.name)
    os.utime(second, (2, 2))
    monkeypatch.setattr(fit_cache, "MAX_ENTRIES", 3)
    fit_cache.cached("probe", fits[3], dict, dict, x, 3)
    assert sorted(p.name for p in cache.iterdir()) == sorted(
        f"probe-{fit_key('probe', x, i)}.npz" for i in (0, 2, 3)
    )  # the entry used least recently went


def test_a_read_only_cache_is_still_read(cache: Path) -> None:
    """Marking an entry as used fails in a read-only cache (simulated: the tests may run as root, which writes
    anyway); the entry is read all the same, not refitted."""
    fitted = first_predictions()
    refused = mock.patch("os.utime", side_effect=PermissionError("read-only"))
    with refused, mock.patch("clp_tune.stopping.boosting.trees", wraps=trees) as fits:
        assert first_predictions() == fitted
    assert fits.call_count == 0
