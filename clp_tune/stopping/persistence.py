"""The trajectory scheduler's state on disk, so that a resumed search decides as an uninterrupted one.

Ray Tune does not keep scheduler state across ``Tuner.restore`` (ray-project/ray issue #30838; the scheduler is
unpickled as it was at the start), so the state is kept in the run directory: a journal of every event
(``scheduler_state.journal.jsonl``, one flushed line per result with its decision, per thaw, and per trial that
ends) and a snapshot it is folded into (``scheduler_state.json``, written atomically). The snapshot holds every
trial's whole history, so it is rewritten only once the journal has grown to half its size (and at least
``snapshot_every`` lines): the rewriting costs O(1) per result however many trials a search runs. Loading replays
the journal onto the snapshot (onto nothing, before the first). :func:`compact` folds it in when a search ends.
``decisions.parquet`` is a directory of Parquet parts (pyarrow and pandas read it as one table): each snapshot
adds a part with the decisions made since the last one, so a search of thousands of trials never rewrites its
decision history either; those since the last part are in the journal. The predictor is not saved: it relearns
from the finished trials in their original order (its fits are deterministic).

No Ray here: the run's tables read the outcomes the scheduler judged (:func:`stopped_outcomes`) without it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from clp_tune.stopping.policy import PAUSED, STOP_OUTCOMES, TrialState, clean
from clp_tune.store import atomic_replace
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
        decisions_saved: how many of them are in ``decisions.parquet``'s parts.
    """

    trials: dict[str, TrialState] = field(default_factory=dict)
    finished_order: list[str] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    decisions_saved: int = 0

    def decisions_frame(self) -> pd.DataFrame:
        """Every decision so far (:func:`latest_decisions`)."""
        return latest_decisions(pd.DataFrame(self.decisions, columns=DECISION_COLUMNS))


def latest_decisions(frame: pd.DataFrame) -> pd.DataFrame:
    """The decisions in order, a re-reported epoch (a resumed trial) keeping its latest decision of each action:
    a pause and the thaw after it share their epoch, and both stay."""
    return frame.drop_duplicates(["trial_id", "epoch", "action"], keep="last").reset_index(drop=True)


def read_decisions(path: str | Path) -> pd.DataFrame:
    """``decisions.parquet`` as one table (a directory of parts, or one file as older runs wrote it)."""
    return latest_decisions(_parts(Path(path)))


def _parts(path: Path) -> pd.DataFrame:
    """All rows of a decisions table, in order, without dropping any (the state keeps every row)."""
    if path.is_file():
        return pd.read_parquet(path)
    files = sorted(path.glob("part-*.parquet"))
    frames = [pd.read_parquet(f) for f in files]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=DECISION_COLUMNS)


class StateStore:
    """The snapshot and journal of one scheduler's :class:`SchedulerState` in ``state_dir``.

    Args:
        state_dir: run directory for ``scheduler_state.json``, its journal and ``decisions.parquet``; None keeps
            nothing (every call is a no-op and :meth:`load` finds nothing).
        snapshot_every: the journal's least length before it is folded into the snapshot.
    """

    def __init__(self, state_dir: str | Path | None, snapshot_every: int = 500):
        self.state_dir = Path(state_dir) if state_dir else None
        self.snapshot_every = snapshot_every
        self._since_snapshot = 0  # journal lines since the snapshot
        self._snapshot_rows = 0  # history rows the snapshot holds

    def load(self) -> SchedulerState | None:
        """The snapshot with the journal replayed onto it; None when there is neither."""
        if self.state_dir is None:
            return None
        snapshot, journal = self.state_dir / SCHEDULER_STATE_FILE, self.state_dir / SCHEDULER_JOURNAL_FILE
        if not snapshot.is_file() and not journal.is_file():
            return None
        saved = json.loads(snapshot.read_text()) if snapshot.is_file() else {"trials": {}, "finished_order": []}
        state = SchedulerState(
            trials={tid: TrialState(**s) for tid, s in saved["trials"].items()},
            finished_order=list(saved["finished_order"]),
        )
        self._snapshot_rows = _rows(state)
        decisions = self.state_dir / DECISIONS_FILE
        state.decisions = _parts(decisions).to_dict("records") if decisions.exists() else []
        state.decisions_saved = len(state.decisions)
        for text in journal.read_text().splitlines() if journal.is_file() else []:
            try:
                line = json.loads(text)
            except json.JSONDecodeError:  # a line torn by a crash mid-write: the result will be re-reported
                continue
            trial_id = line["trial_id"]
            trial = state.trials.setdefault(trial_id, TrialState(line["budget"], line["config"]))
            trial.config = line["config"]
            if line["epoch"] is not None:
                trial.record(line["epoch"], line["row"])
            trial.status, trial.grace, trial.final = line["status"], line["grace"], line.get("final")
            trial.pred_mean, trial.pred_std = line["pred_mean"], line.get("pred_std")
            trial.p_beat, trial.thawed_at = line.get("p_beat"), line.get("thawed_at")
            trial.judged_mean, trial.scores = line.get("judged_mean"), line.get("scores")
            trial.probed = line.get("probed", False)
            if trial.status == "finished" and trial_id not in state.finished_order:
                state.finished_order.append(trial_id)
            self._since_snapshot += 1
            if line["decision"] is not None:
                state.decisions.append({k: math.nan if v is None else v for k, v in line["decision"].items()})
        return state

    def journal(self, state: SchedulerState, trial_id: str, decision: Mapping[str, Any] | None) -> None:
        """Append ``trial_id``'s state after an event (its latest row, status, final, prediction) and the decision
        it made (None: a trial that ended); once the journal is long enough (class docstring), snapshot."""
        if self.state_dir is None:
            return
        self._since_snapshot += 1
        if self._since_snapshot >= max(self.snapshot_every, self._snapshot_rows // 2):
            self.snapshot(state)
            return
        trial = state.trials[trial_id]
        line = {
            "trial_id": trial_id, "budget": trial.budget, "config": trial.config,
            "row": {c: v[-1] for c, v in trial.history.items()}, "epoch": trial.epochs[-1] if trial.epochs else None,
            "status": trial.status, "grace": trial.grace, "final": trial.final, "pred_mean": trial.pred_mean,
            "pred_std": trial.pred_std, "p_beat": trial.p_beat, "thawed_at": trial.thawed_at,
            "judged_mean": trial.judged_mean, "scores": trial.scores, "probed": trial.probed,
            "decision": None if decision is None else {k: clean(v) if isinstance(v, float) else v
                                                       for k, v in decision.items()},
        }  # fmt: skip
        with open(self.state_dir / SCHEDULER_JOURNAL_FILE, "a") as f:
            f.write(json.dumps(line) + "\n")
            f.flush()

    def snapshot(self, state: SchedulerState) -> None:
        """Write the whole state atomically and the new decisions as a part, then empty the journal they now
        contain."""
        if self.state_dir is None:
            return
        saved = {
            "version": _STATE_VERSION,
            "trials": {tid: vars(s) for tid, s in state.trials.items()},  # (asdict would deep-copy every list)
            "finished_order": state.finished_order,
        }
        atomic_replace(self.state_dir / SCHEDULER_STATE_FILE, lambda tmp: tmp.write_text(json.dumps(saved)))
        new = pd.DataFrame(state.decisions[state.decisions_saved :], columns=DECISION_COLUMNS)
        if len(new):
            parts = self.state_dir / DECISIONS_FILE
            if parts.is_file():  # one file, as an older version wrote it (a resumed run): it becomes a part
                old = pd.read_parquet(parts)
                parts.unlink()
                parts.mkdir()
                old.to_parquet(parts / "part-000000000.parquet", index=False)
            parts.mkdir(exist_ok=True)
            name = f"part-{state.decisions_saved:09d}.parquet"  # named by its first row: sorted = in order
            atomic_replace(parts / name, lambda tmp: new.to_parquet(tmp, index=False))
            state.decisions_saved = len(state.decisions)
        (self.state_dir / SCHEDULER_JOURNAL_FILE).unlink(missing_ok=True)
        self._since_snapshot, self._snapshot_rows = 0, _rows(state)


def _rows(state: SchedulerState) -> int:
    return sum(len(trial.epochs) for trial in state.trials.values())


def compact(state_dir: str | Path) -> None:
    """Fold the journal into the snapshot and the decision parts: once a search has ended, its tables and report
    read ``decisions.parquet`` whole. Nothing to do where the scheduler left no state."""
    store = StateStore(state_dir)
    state = store.load()
    if state is not None:
        store.snapshot(state)


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
    ended = latest.loc[latest["action"].isin(["stop", "pause"]), "trial_id"]
    outcome = {PAUSED: "stopped"}  # frozen when the search ended or was interrupted: not thawed, so stopped
    statuses = {tid: outcome.get(state.trials[tid].status, state.trials[tid].status) for tid in ended}
    return {tid: status for tid, status in statuses.items() if status in STOP_OUTCOMES}
