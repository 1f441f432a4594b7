"""The scheduler benchmark's tables (one per bank and worker count, the Spearman table, the summary) and its JSON.

Only figures that repeat for the same inputs are printed (no wall times: those go to the JSON), so two runs with
the same seed print the same tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from clp_tune.bench.crossfit import SPEARMAN_SETTINGS
from clp_tune.bench.metrics import MISS_POINTS, NEAR_POINTS

_HEADER = (f"{'scheduler':<15}{'epochs/FIFO':>12}{'worst':>7}{'regret':>8}{'worst':>7}{'misses':>8}"
           f"{f'to<={NEAR_POINTS:g}pt':>14}{'area':>7}")  # fmt: skip


def _number(value: Any, spec: str) -> str:
    missing = value is None or (isinstance(value, float) and math.isnan(value))
    return "-" if missing else format(value, spec)


def _name(name: str, headline: str) -> str:
    return name + (" *" if name == headline else "")


def print_legend(result: Mapping[str, Any]) -> None:
    """What each row and column means, once."""
    first = result["tasks"][0]
    print("rows (* marks the prior chosen with --prior):")
    for name, description in first["rows"].items():
        print(f"  {_name(name, first['headline']):<15}{description}")
    print(f"columns: epochs / no stopping (mean, worst order); regret in points = 100 x (bank's best final - best "
          f"final of a trial that ran its whole budget) (mean, worst); misses = orders with regret > {MISS_POINTS:g}; "
          f"epochs spent until a trial within {NEAR_POINTS:g} points of the best had finished (mean over the orders "
          f"that got there, and how many did); area = mean regret over the epochs no stopping spends.")  # fmt: skip


def print_task(task: Mapping[str, Any], orders: int) -> None:
    """One bank: its header, its priors, a table per worker count, its Spearman table."""
    print(
        f"\n== {task['task']}: {task['trials']} trials x {task['budget']} epochs, best final "
        f"{task['best_final']:.4f}, worst {task['worst_final']:.4f}; no stopping spends {task['fifo_epochs']} "
        f"epochs; {orders} orders =="
    )
    for name, prior in task["priors"].items():
        sources = ", ".join(prior["sources"]) or "nothing"
        print(f"  {name}: prior fitted on {sources} ({prior['trials']} trials)")
        for missing in prior["missing"]:
            print(f"    not included: {missing}")
    for workers, rows in task["schedulers"].items():
        print(f"-- {workers} worker{'s' if workers != '1' else ''} --")
        print(_HEADER)
        for name, s in rows.items():
            near = _number(s["epochs_to_near_best"], ".0f")
            if s["near_best_reached"] < s["orders"]:
                near += f" ({s['near_best_reached']}/{s['orders']})"
            print(f"{_name(name, task['headline']):<15}{s['epoch_ratio']:>12.3f}{s['epoch_ratio_worst']:>7.3f}"
                  f"{s['regret']:>8.2f}{s['regret_worst']:>7.2f}{s['misses']:>5}/{s['orders']:<2}{near:>14}"
                  f"{s['regret_area']:>7.2f}")  # fmt: skip
    for key, finished in SPEARMAN_SETTINGS.items():
        print_spearman(task[key], task["headline"], finished)


def print_spearman(table: Mapping[str, Mapping[str, float]], headline: str, finished: int) -> None:
    fractions = next(iter(table.values()))
    when = (f"once {finished} trials of the search have finished (learned online; the other trials scored)"
            if finished else "at the start of a search (nothing learned online)")  # fmt: skip
    print("Spearman(predicted, true final) at " + " / ".join(f"{float(f):.0%}" for f in fractions) + f" of the budget, "
          f"{when}:")  # fmt: skip
    for name, row in table.items():
        print(f"  {_name(name, headline):<15}" + "".join(f"{_number(v, '.3f'):>8}" for v in row.values()))


def print_summary(result: Mapping[str, Any]) -> None:
    """Each row over every bank: task means of the means, the worst order of any bank, all misses."""
    tasks = result["tasks"]
    headline = tasks[0]["headline"]
    print(f"\n== summary over {len(tasks)} bank(s): " + ", ".join(t["task"] for t in tasks) + " ==")
    for workers, rows in result["summary"].items():
        print(f"-- {workers} worker{'s' if workers != '1' else ''} --")
        print(f"{'scheduler':<15}{'epochs/FIFO':>12}{'worst':>7}{'regret':>8}{'worst':>7}{'misses':>9}{'area':>7}")
        for name, s in rows.items():
            misses = f"{s['misses']}/{s['orders']}"
            print(f"{_name(name, headline):<15}{s['epoch_ratio']:>12.3f}{s['epoch_ratio_worst']:>7.3f}"
                  f"{s['regret']:>8.2f}{s['regret_worst']:>7.2f}{misses:>9}{s['regret_area']:>7.2f}")  # fmt: skip
    print("mean over banks of the Spearman correlations:")
    for key, finished in SPEARMAN_SETTINGS.items():
        print_spearman(result[f"{key}_mean"], headline, finished)


def write_json(result: Mapping[str, Any], path: str | Path) -> None:
    """Every figure as strict JSON (NaN and infinities as null, numpy scalars as Python numbers)."""
    Path(path).write_text(json.dumps(_json_safe(result), indent=1, allow_nan=False))


def _json_safe(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
