"""The trajectory scheduler's state on disk, so that a resumed search decides as an uninterrupted one.

Ray Tune does not keep scheduler state across ``Tuner.restore`` (ray-project/ray issue #30838; the scheduler is
unpickled as it was at the start), so the state is kept in the run directory: a snapshot
(``scheduler_state.json``, written atomically whenever a trial ends and every ``snapshot_every`` results) plus a
journal of the results since (``scheduler_state.journal.jsonl``, one flushed line per result, decision included).
Loading replays both. The decisions are written to ``decisions.parquet`` (atomically) with each snapshot; those
since the last one are in the journal. The predictor is not saved: it relearns from the finished trials in their
original order (its fits are deterministic).

No Ray here: the run's tables read the outcomes the scheduler judged (:func:`stopped_outcomes`) without it.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clp_tune.stopping.policy import STOP_OUTCOMES, TrialState, clean
from clp_tune.vocabulary import DECISIONS_FILE, SCHEDULER_JOURNAL_FILE, SCHEDULER_STATE_FILE

_STATE_VERSION = 1
DECISION_COLUMNS = ["trial_id", "epoch", "pred_mean", "pred_std", "threshold", "p_beat", "action", "reason"]


@dataclass
class SchedulerState:
    """Everything the scheduler must remember to decide on after a restore as it would have without one.

    Args:
        trials: trial id -> its state.
        finished_order: the trials that finished their budget, in order (the predictor relearns them in it).
        decisions: every decision row, in order.
    """

    trials: dict[str, TrialState] = field(default_factory=dict)
    finished_order: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)

    def decisions_frame(self) -> pd.DataFrame:
        """Every decision so far (a re-reported epoch keeps its latest decision)."""
        frame = pd.DataFrame(self.decisions, columns=DECISION_COLUMNS)
        return frame.drop_duplicates(["trial_id", "epoch"], keep="last").reset_index(drop=True)


def _atomic_replace(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then rename it over ``path``: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


class StateStore:
    """The snapshot and journal of one scheduler's :class:`SchedulerState` in ``state_dir``.

    Args:
        state_dir: run directory for ``scheduler_state.json``, its journal and ``decisions.parquet``; None keeps
            nothing (every call is a no-op and :meth:`load` finds nothing).
        snapshot_every: snapshot instead of journaling after this many journaled results (bounds the journal).
    """

    def __init__(self, state_dir: str | Path | None, snapshot_every: int = 500):
        self.state_dir = Path(state_dir) if state_dir else None
        self.snapshot_every = snapshot_every
        self._since_snapshot = 0

    def load(self) -> SchedulerState | None:
        """The snapshot with the journal replayed onto it; None when there is no snapshot."""
        if self.state_dir is None or not (self.state_dir / SCHEDULER_STATE_FILE).is_file():
            return None
        saved = json.loads((self.state_dir / SCHEDULER_STATE_FILE).read_text())
        state = SchedulerState(
            trials={tid: TrialState(**s) for tid, s in saved["trials"].items()},
            finished_order=list(saved["finished_order"]),
        )
        decisions = self.state_dir / DECISIONS_FILE
        state.decisions = pd.read_parquet(decisions).to_dict("records") if decisions.is_file() else []
        journal = self.state_dir / SCHEDULER_JOURNAL_FILE
        for text in journal.read_text().splitlines() if journal.is_file() else []:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:  # a line torn by a crash mid-write: the result will be re-reported
                continue
            trial = state.trials.setdefault(line["trial_id"], TrialState(line["budget"], line["config"]))
            trial.config = line["config"]
            trial.record(line["epoch"], line["row"])
            trial.status, trial.grace = line["status"], line["grace"]
            trial.pred_mean, trial.pred_std = line["pred_mean"], line.get("pred_std")
            state.decisions.append({k: math.nan if v is None else v for k, v in line["decision"].items()})
        return state

    def journal(self, state: SchedulerState, trial_id: str, decision: Mapping[str, Any]) -> None:
        """Append the latest result of ``trial_id`` and its decision; every ``snapshot_every`` results, snapshot."""
        if self.state_dir is None:
            return
        self._since_snapshot += 1
        if self._since_snapshot >= self.snapshot_every:
            self.snapshot(state)
            return
        trial = state.trials[trial_id]
        line = {
            "trial_id": trial_id, "budget": trial.budget, "config": trial.config,
            "row": {c: v[-1] for c, v in trial.history.items()}, "epoch": trial.epochs[-1],
            "status": trial.status, "grace": trial.grace, "pred_mean": trial.pred_mean, "pred_std": trial.pred_std,
            "decision": {k: clean(v) if isinstance(v, float) else v for k, v in decision.items()},
        }  # fmt: skip
        with open(self.state_dir / SCHEDULER_JOURNAL_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def snapshot(self, state: SchedulerState) -> None:
        """Write the whole state and the decisions atomically, then empty the journal they now contain."""
        if self.state_dir is None:
            return
        saved = {
            "version": _STATE_VERSION,
            "trials": {tid: vars(s) for tid, s in state.trials.items()},  # (asdict would deep-copy every list)
            "finished_order": state.finished_order,
        }
        _atomic_replace(self.state_dir / SCHEDULER_STATE_FILE, lambda tmp: tmp.write_text(json.dumps(saved)))
        frame = state.decisions_frame()
        _atomic_replace(self.state_dir / DECISIONS_FILE, lambda tmp: frame.to_parquet(tmp, index=False))
        (self.state_dir / SCHEDULER_JOURNAL_FILE).unlink(missing_ok=True)
        self._since_snapshot = 0


def stopped_outcomes(state_dir: str | Path) -> dict[str, str]:
    """Trial id -> "stopped" or "diverged" for each trial the scheduler stopped, from the state it left in
    ``state_dir`` (snapshot and journal; empty when there is none).

    The decision is made by the scheduler, on the results it saw; the run's tables take it as it is instead of
    judging the trial again by a rule of their own, so a trial has one outcome wherever it is shown.
    """
    state = StateStore(state_dir).load()
    if state is None:
        return {}
    latest = state.decisions_frame().groupby("trial_id").tail(1)
    stopped = latest.loc[latest["action"] == "stop", "trial_id"]
    return {tid: state.trials[tid].status for tid in stopped if state.trials[tid].status in STOP_OUTCOMES}
