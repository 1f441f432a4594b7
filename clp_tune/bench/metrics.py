"""What the scheduler benchmark measures of one run, and of a scheduler over all its orders.

A run is the list of its trials' completions (:class:`clp_tune.bench.simulator.Completion`), from the simulator
or the real-Ray replay alike. Regret is counted only for trials that ran their whole budget: a stopped trial's
last value is not a result a search can report. Every figure is in points of validation accuracy or in epochs.

* regret: 100 x (the bank's best final - the best final among trials that ran their whole budget);
* a miss: an order whose regret exceeds :data:`MISS_POINTS`;
* epochs to near-best: epochs spent (by all trials) when a trial within :data:`NEAR_POINTS` of the bank's best
  had finished its budget;
* regret area: the regret as a function of the epochs spent, averaged over the epochs no stopping would spend
  (before any trial has finished, the regret is that of the bank's worst final: nothing found is no better;
  after the run's last epoch it keeps its final value): lower means good results sooner.
"""

from __future__ import annotations

import math
import statistics as stats
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from clp_tune.bench.simulator import Completion
from clp_tune.stopping.features import Trajectory, is_complete

MISS_POINTS = 0.1
NEAR_POINTS = 0.5


@dataclass(frozen=True)
class Reference:
    """What every run on one bank is measured against: its trials, its best and worst final, FIFO's epochs."""

    trajectories: Mapping[str, Trajectory]
    best: float
    worst: float
    fifo_epochs: int

    @classmethod
    def of(cls, trajectories: Mapping[str, Trajectory]) -> Reference:
        finals = [t.final for t in trajectories.values() if is_complete(t)]
        if not finals:
            raise ValueError("the bank has no trial that ran its whole budget")
        return cls(trajectories, max(finals), min(finals), sum(t.epochs for t in trajectories.values()))


def score(run: Sequence[Completion], ref: Reference) -> dict[str, Any]:
    """The figures of one run (see the module docstring)."""
    finished = []  # (epochs spent when it finished, its final), in completion order
    for c in run:
        t = ref.trajectories[c.trial_id]
        if is_complete(t) and c.epochs >= t.budget:
            finished.append((c.spent, t.final))
    spent = max((c.spent for c in run), default=0)
    regret_of = [(s, 100 * (ref.best - f)) for s, f in _running_best(finished)]
    final_regret = regret_of[-1][1] if regret_of else 100 * (ref.best - ref.worst)
    near = next((s for s, f in finished if f >= ref.best - NEAR_POINTS / 100 - 1e-12), None)
    return {
        "epochs": spent,
        "epoch_ratio": spent / ref.fifo_epochs,
        "regret": final_regret,
        "epochs_to_near_best": near,
        "regret_area": _area(regret_of, 100 * (ref.best - ref.worst), ref.fifo_epochs),
        "finished": len(finished),
        "makespan": max((c.time for c in run), default=0.0),
        "trial_epochs": {c.trial_id: c.epochs for c in run},
    }


def _running_best(finished: list[tuple[int, float]]) -> list[tuple[int, float]]:
    out: list[tuple[int, float]] = []
    for spent, final in finished:
        if not out or final > out[-1][1]:
            out.append((spent, final))
    return out


def _area(steps: list[tuple[int, float]], start: float, horizon: int) -> float:
    """Mean over [0, horizon] epochs of a step function: ``start`` until the first step, then each step's value."""
    area, at, value = 0.0, 0, start
    for spent, regret in steps:
        spent = min(spent, horizon)
        area += value * (spent - at)
        at, value = spent, regret
    return (area + value * (horizon - at)) / horizon


def summarize(scores: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One scheduler over its orders: means, worst cases, misses, and every order's figures."""
    ratios = [s["epoch_ratio"] for s in scores]
    regrets = [s["regret"] for s in scores]
    near = [s["epochs_to_near_best"] for s in scores if s["epochs_to_near_best"] is not None]
    return {
        "orders": len(scores),
        "epoch_ratio": stats.mean(ratios),
        "epoch_ratio_worst": max(ratios),
        "regret": stats.mean(regrets),
        "regret_worst": max(regrets),
        "misses": sum(r > MISS_POINTS for r in regrets),
        "epochs_to_near_best": stats.mean(near) if near else None,
        "near_best_reached": len(near),
        "regret_area": stats.mean(s["regret_area"] for s in scores),
        "makespan": stats.mean(s["makespan"] for s in scores),
        "per_order": list(scores),
    }


def across_tasks(summaries: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """One scheduler over the suite's tasks: task means of the means, worst cases over every order of every task,
    and all the misses."""
    return {
        "tasks": len(summaries),
        "orders": sum(s["orders"] for s in summaries),
        "epoch_ratio": stats.mean(s["epoch_ratio"] for s in summaries),
        "epoch_ratio_worst": max(s["epoch_ratio_worst"] for s in summaries),
        "regret": stats.mean(s["regret"] for s in summaries),
        "regret_worst": max(s["regret_worst"] for s in summaries),
        "misses": sum(s["misses"] for s in summaries),
        "regret_area": stats.mean(s["regret_area"] for s in summaries),
    }


def mean_spearman(tables: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Task means of each predictor's Spearman correlation at each fraction (NaN-free tasks only)."""
    out: dict[str, dict[str, float]] = {}
    for name in dict.fromkeys(n for t in tables for n in t):
        rows = [t[name] for t in tables if name in t]
        out[name] = {}
        for fraction in rows[0]:
            values = [r[fraction] for r in rows if not math.isnan(r[fraction])]
            out[name][fraction] = stats.mean(values) if values else math.nan
    return out
