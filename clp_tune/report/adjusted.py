"""An effect controlling for the other searched parameters: in a searched (non-grid) run, trials with one Mixup-off
window also differ in learning rate, batch size and the rest, so a difference of group means mixes their effects
in. A weighted least-squares regression on all trials separates them, with predicted finals weighted down by their
uncertainty (:func:`clp_tune.report.statistics.weighted_effects`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from clp_tune.report.markup import note, table
from clp_tune.report.outcomes import BASES, basis
from clp_tune.report.run import Run
from clp_tune.report.statistics import numeric_sort_key, setting_label, weighted_effects

#: The parameter whose settings are repeats, not a configuration: sampling it does not make a run "searched".
SEED = "seed"


def controls(run: Run, key: str) -> dict[str, str]:
    """The searched parameters other than ``key`` that the trials table records, each with its kind (uniform,
    choice, grid, ...)."""
    searched = run.spec.searched() if run.spec is not None else {}
    return {n: next(iter(e)) for n, e in searched.items() if n != key and f"config/{n}" in run.trials}


def is_searched(run: Run, key: str) -> bool:
    """Whether trials with different ``key`` settings also differ in sampled (non-grid) parameters besides the
    seed: then only a regression compares like with like, and a seed shared by two settings pairs nothing."""
    return any(kind != "grid" and name != SEED for name, kind in controls(run, key).items())


def render(run: Run, frame: pd.DataFrame, key: str, baseline: str) -> str:
    """The regression-adjusted effect of each ``key`` setting against ``baseline`` on both bases, or "" where the
    run is not searched (:func:`is_searched`: every setting then ran the same configurations and the grouped
    comparison is already controlled)."""
    if not is_searched(run, key):
        return ""
    others = controls(run, key)
    rows = []
    for label, sources in BASES:
        subset = basis(frame, sources)
        design = _design(subset, key, baseline, others)
        terms = [c for c in design.columns if c.startswith(f"{key}=")]
        if not terms:
            continue
        keep = design.notna().all(axis=1)
        effects = weighted_effects(design[keep], subset["final"][keep], subset["final_std"][keep], terms)
        for term, r in effects.iterrows():
            rows.append((term.removeprefix(f"{key}="), label, int(keep.sum()), r["coef"], r["low"], r["high"],
                         r["verdict"]))  # fmt: skip
    if not rows:
        return note(f"No {key} = {baseline} trials to adjust against.")
    listed = ", ".join(f"log10 {n}" if kind == "loguniform" else n for n, kind in others.items())
    explain = (
        f"Adjusted for the other searched parameters ({listed}): a weighted least-squares regression of the final "
        f"val_acc on one indicator per {key} setting (against {key} = {baseline}), the numeric parameters and "
        "indicators for the categorical ones. A predicted final weighs 1 / (pred_std² + noise) and a finished one "
        "1 / noise, noise being the residual variance of an unweighted fit; each coefficient has a 95 % t-interval "
        "(n − p degrees of freedom) and is 'not significant' wherever that interval contains zero."
    )
    header = [key, "from", "trials in fit", f"effect vs {baseline} (adjusted)", "95 % CI low", "95 % CI high",
              "verdict"]  # fmt: skip
    return f"<h3>{key}: effect adjusted for the other parameters</h3>" + note(explain) + table(header, rows)


def render_all(run: Run, frame: pd.DataFrame) -> str:
    """Every searched parameter's effect on the final val_acc, adjusted for the others, from all trials (finished
    and predicted): the one answer a run with few finished trials can still give for each knob."""
    searched = {name: kind for name, kind in controls(run, "").items() if name != SEED}  # a seed has no effect
    design = _design(frame, None, "", searched)
    keep = design.notna().all(axis=1)
    if design.empty or keep.sum() <= design.shape[1] + 1:
        return note("Too few trials with an outcome for an adjusted effect of every parameter.")
    effects = weighted_effects(design[keep], frame["final"][keep], frame["final_std"][keep], list(design.columns))
    rows = [
        (term, _unit(term, searched), r["coef"], r["low"], r["high"], r["verdict"]) for term, r in effects.iterrows()
    ]
    explain = (
        f"All {int(keep.sum())} trials with an outcome (finished, and stopped at their predicted final, weighted down "
        "by its spread): one weighted least-squares regression of the final val_acc on every searched parameter, as "
        "above; a numeric parameter's effect is per unit (per factor 10 for a log-uniform one), a categorical "
        "setting's is against its first setting."
    )
    header = ["parameter", "effect of", "effect on final val_acc", "95 % CI low", "95 % CI high", "verdict"]
    return "<h3>Adjusted effects (all trials)</h3>" + note(explain) + table(header, rows)


def _unit(term: str, searched: dict[str, str]) -> str:
    name, _, setting = term.partition("=")
    if setting:
        return f"{setting} instead of the first setting"
    return "x10" if searched[name] == "loguniform" else "+1"


def _design(frame: pd.DataFrame, key: str | None, baseline: str, others: dict[str, str]) -> pd.DataFrame:
    """The regressors: an indicator per non-baseline ``key`` setting (none when ``key`` is None), then each other
    parameter as a number (log10 for a log-uniform one) or as indicators of all its settings but the first
    (categorical: choice or grid)."""
    columns: dict[str, pd.Series] = {}
    if key is not None:
        labels = frame[f"config/{key}"].map(setting_label)
        if baseline not in set(labels):
            return pd.DataFrame(index=frame.index)
        for s in sorted(set(labels) - {baseline}, key=numeric_sort_key):
            columns[f"{key}={s}"] = (labels == s).astype(float)
    for name, kind in others.items():
        values = frame[f"config/{name}"]
        if kind in ("choice", "grid"):
            settings = values.map(setting_label)
            for s in sorted(set(settings), key=numeric_sort_key)[1:]:
                columns[f"{name}={s}"] = (settings == s).astype(float)
        else:
            numbers = pd.to_numeric(values, errors="coerce").astype(float)
            columns[name] = np.log10(numbers) if kind == "loguniform" else numbers
    return pd.DataFrame(columns, index=frame.index)
