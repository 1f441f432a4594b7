"""Replay recorded trials through a scheduler's own Ray Tune hooks, on a simulated clock, without Ray.

Benchmarking schedulers through real Ray Tune costs seconds per run, and with concurrent trials it is not
deterministic (results arrive as the actors happen to finish). Like Syne Tune's simulator backend, this module
plays Tune's controller itself: it calls each scheduler's hooks in the order ``TuneController`` calls them
(``ray/tune/execution/tune_controller.py``, Ray 2.60), on a clock that advances one unit per epoch, with events
ordered by (time, sequence) so that ties resolve the same way every time:

* ``set_search_properties(metric, mode)`` once, before any trial (``tune.run`` does);
* the searcher creates a trial only while fewer than ``workers`` trials are live, i.e. not terminated (Tune's
  ``max_concurrent_trials``); each new trial gets ``on_trial_add``; trials are created in the given order; once
  the order is spent the searcher is finished (``search_alg.is_finished()``);
* a free slot is given to the trial ``choose_trial_to_run`` picks (``FIFOScheduler``'s: pending first, then
  paused); it reports its next recorded row one time unit later;
* each result goes to ``on_trial_result``: CONTINUE schedules the next row; STOP ends the trial with
  ``on_trial_complete(last result)``, as ``stop_trial`` does, and frees its slot; PAUSE frees the slot but the
  trial stays live for the searcher unless the scheduler marks it frozen (``search_alg.frozen``, as the product's
  limit reads it): ``choose_trial_to_run`` resumes it at its next epoch (a trainable that checkpoints every epoch),
  or the scheduler ends it with ``stop_trial`` (``on_trial_remove``, as Tune calls for a paused trial);
* a trial whose rows run out ends with ``on_trial_complete`` too: Tune's closing duplicate result carries
  ``done`` and is never shown to ``on_trial_result``.

A result is the recorded row (``config/<key>`` columns included, as a flattened real result carries them) plus
what Tune adds to it: ``training_iteration``, ``time_total_s`` and ``time_this_iter_s`` on the simulated clock,
``trial_id`` and the trial's config, which is ``{"trial_id": ...}`` as in the real-Ray replay's ``param_space``
(``config/trial_id``). The stand-ins below have only what the schedulers read.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from ray.tune.schedulers import TrialScheduler

Rows = Mapping[str, Sequence[Mapping[str, Any]]]


def result_rows(bank: pd.DataFrame) -> dict[str, list[dict[str, Any]]]:
    """Per trial, the rows it reports, one per epoch: numbers as floats (non-finite as NaN), strings as they are,
    ``epoch`` as an int. Both the simulator and the real-Ray replay send exactly these."""
    out: dict[str, list[dict[str, Any]]] = {}
    for trial_id, rows in bank.sort_values(["trial_id", "epoch"], kind="stable").groupby("trial_id", sort=False):
        records = []
        for record in rows.drop(columns=["trial_id"]).to_dict("records"):
            row: dict[str, Any] = {}
            for key, value in record.items():
                if isinstance(value, str):
                    row[key] = value
                elif value is not None and not isinstance(value, (list, dict)):
                    number = float(value)
                    row[key] = number if math.isfinite(number) else math.nan
            row["epoch"] = int(record["epoch"])
            records.append(row)
        out[str(trial_id)] = records
    return out


@dataclass(eq=False)  # hashed by identity, as Ray's Trial is (the median rule keys its results by trial)
class SimTrial:
    """What the schedulers read of ``ray.tune.experiment.Trial``: its id, config, status and last result."""

    trial_id: str
    config: dict[str, Any]
    status: str = "PENDING"
    last_result: dict[str, Any] = field(default_factory=dict)
    reported: int = 0  # rows reported so far (the next row's index)


@dataclass
class SimSearch:
    """What the trajectory scheduler reads of the search's limit (:mod:`clp_tune.stopping.slots`): its slots, the
    trials it no longer counts (frozen), and whether it has suggested its last trial (Tune's ``is_finished``)."""

    max_concurrent: int
    frozen: frozenset[str] = frozenset()
    finished: bool = False

    def is_finished(self) -> bool:
        return self.finished


class SimController:
    """What the schedulers read of ``TuneController``: the trials, in the order they were added, and the live ones;
    the search's limit; setting a trial's status and ending a paused one (``stop_trial``)."""

    def __init__(self, workers: int, end_paused: Callable[[SimTrial], None]) -> None:
        self._trials: list[SimTrial] = []
        self.by_id: dict[str, SimTrial] = {}
        self.search_alg = SimSearch(workers)
        self._end_paused = end_paused

    def get_trials(self) -> list[SimTrial]:
        return self._trials

    def get_live_trials(self) -> set[SimTrial]:
        return {t for t in self._trials if t.status != "TERMINATED"}

    def _set_trial_status(self, trial: SimTrial, status: str) -> None:
        trial.status = status

    def stop_trial(self, trial: SimTrial) -> None:
        if trial.status != "PAUSED":
            raise NotImplementedError("the simulator ends only paused trials from a hook")
        self._end_paused(trial)


@dataclass(frozen=True)
class Completion:
    """One trial's end: how many epochs it reported, the epochs all trials had reported by then, and when.

    Args:
        trial_id: the trial.
        epochs: results it reported (its last epoch, unless it was paused and never resumed).
        spent: results reported by every trial up to and including this one's last.
        time: the simulated clock when it ended (one unit per epoch).
    """

    trial_id: str
    epochs: int
    spent: int
    time: float


def simulate(
    scheduler: TrialScheduler, order: Sequence[str], rows: Rows, workers: int = 1, metric: str = "val_acc",
    mode: str = "max",
) -> list[Completion]:  # fmt: skip
    """Run the trials ``order`` names (their results in ``rows``) under ``scheduler`` with ``workers`` slots.

    Returns the trials' completions in the order they ended. Raises ValueError when the scheduler refuses the
    metric and mode (Tune would too), RuntimeError when it leaves trials paused with nothing left to run
    (Tune would wait for ever).
    """
    from ray.tune.schedulers import TrialScheduler

    if workers < 1:
        raise ValueError(f"need workers >= 1, got workers={workers}")
    if not scheduler.set_search_properties(metric, mode):
        raise ValueError(f"{type(scheduler).__name__} refused metric={metric!r}, mode={mode!r}")

    def end_paused(trial: SimTrial) -> None:
        nonlocal live
        scheduler.on_trial_remove(controller, trial)
        trial.status = "TERMINATED"
        live -= 1
        completions.append(Completion(trial.trial_id, trial.reported, spent, clock))

    controller = SimController(workers, end_paused)
    to_create = iter(order)
    events: list[tuple[float, int, SimTrial]] = []
    sequence = itertools.count()
    completions: list[Completion] = []
    clock, spent, live, running = 0.0, 0, 0, 0

    def complete(trial: SimTrial) -> None:
        nonlocal live
        scheduler.on_trial_complete(controller, trial, {**trial.last_result, "done": True})
        trial.status = "TERMINATED"
        live -= 1
        completions.append(Completion(trial.trial_id, trial.reported, spent, clock))

    def fill_slots() -> None:
        nonlocal live, running
        while live - _frozen_live(controller) < workers:
            trial_id = next(to_create, None)
            if trial_id is None:
                controller.search_alg.finished = True
                break
            trial = SimTrial(str(trial_id), {"trial_id": str(trial_id)})
            controller.get_trials().append(trial)
            controller.by_id[trial.trial_id] = trial
            live += 1
            scheduler.on_trial_add(controller, trial)
        while running < workers and (trial := scheduler.choose_trial_to_run(controller)) is not None:
            if trial.reported >= len(rows[trial.trial_id]):  # paused after its last row: it ends on resuming
                complete(trial)
                continue
            trial.status = "RUNNING"
            running += 1
            heapq.heappush(events, (clock + 1, next(sequence), trial))

    fill_slots()
    while events:
        clock, _, trial = heapq.heappop(events)
        row = rows[trial.trial_id][trial.reported]
        trial.reported += 1
        spent += 1
        result = {**row, "training_iteration": trial.reported, "time_total_s": float(trial.reported),
                  "time_this_iter_s": 1.0, "trial_id": trial.trial_id, "done": False,
                  **{f"config/{k}": v for k, v in trial.config.items()}}  # fmt: skip
        decision = scheduler.on_trial_result(controller, trial, result)
        trial.last_result = result
        if decision == TrialScheduler.CONTINUE and trial.reported < len(rows[trial.trial_id]):
            heapq.heappush(events, (clock + 1, next(sequence), trial))
            continue
        running -= 1
        if decision == TrialScheduler.PAUSE:
            trial.status = "PAUSED"
        elif decision in (TrialScheduler.STOP, TrialScheduler.CONTINUE):
            complete(trial)
        else:
            raise ValueError(f"{type(scheduler).__name__} returned an unknown decision {decision!r}")
        fill_slots()
    if live:
        raise RuntimeError(f"{type(scheduler).__name__} left {live} trial(s) paused with nothing running")
    return completions


def _frozen_live(controller: SimController) -> int:
    """Live trials the search's limit does not count (frozen: paused by the scheduler)."""
    return sum(controller.by_id[tid].status != "TERMINATED" for tid in controller.search_alg.frozen)
