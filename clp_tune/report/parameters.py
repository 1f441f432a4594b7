"""Parameter effects: which searched parameters mattered for the final accuracy (Optuna's importances), and how
each setting fared (parallel coordinates, one slice per parameter).

The searched parameters and their ranges come from the validated spec (``Spec.searched()``), turned into Optuna
distributions so Optuna's evaluators can run on an in-memory study of the finished trials. Without a valid spec
there is nothing to say which parameters were searched, and the section says so.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from clp_tune.report.markup import Page, esc, note
from clp_tune.report.run import Run
from clp_tune.report.statistics import numeric_sort_key, setting_label
from clp_tune.spec import Spec
from clp_tune.vocabulary import SPEC_FILE

#: Below this many finished trials parameter importances are noise, so the report does not show them.
MIN_TRIALS_FOR_IMPORTANCE = 5


def searched_params(spec: Spec) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions for the spec's searched params (a grid counts as categorical); fixed ones are left out.

    The spec is validated, so every entry is one ``{kind: args}`` pair with ``[low, high]`` for a range.
    """
    found: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, entry in spec.searched().items():
        ((kind, args),) = entry.items()
        if kind in ("choice", "grid"):
            found[name] = optuna.distributions.CategoricalDistribution(args)
        elif kind == "int":
            found[name] = optuna.distributions.IntDistribution(int(args[0]), int(args[1]))
        else:
            found[name] = optuna.distributions.FloatDistribution(
                float(args[0]), float(args[1]), log=kind == "loguniform"
            )
    return found


def render(run: Run, page: Page) -> str:
    """Importances, parallel coordinates and slices over the searched parameters the trials table records."""
    title = "Parameter effects"
    if run.spec_error is not None:
        invalid = (
            f"This {SPEC_FILE} does not validate (the Spec section shows its text and why), and the "
            "searched-parameter sections need a valid spec."
        )
        return page.section("params", title, note(invalid))
    searched = searched_params(run.spec) if run.spec is not None else {}
    distributions = {n: d for n, d in searched.items() if f"config/{n}" in run.trials}
    if not distributions:
        return page.section("params", title, note("The spec searches no parameter, so there are no effects to show."))
    finished = run.finished()
    parts = ["<h3>Importances (Optuna)</h3>", _importances(page, distributions, finished)]
    if len(finished) < 2:
        parts.append(note("Fewer than two finished trials: no parallel coordinates or slices."))
        return page.section("params", title, "".join(parts))
    parts += [
        "<h3>Parallel coordinates (finished trials)</h3>",
        page.figure(_parallel_coordinates(finished, distributions), 440, {"l": 80, "r": 60, "t": 70, "b": 30}),
        "<h3>Slices</h3>",
    ]
    parts.append(page.figure(*_slices(finished, distributions)))
    return page.section("params", title, "".join(parts))


def _importances(page: Page, distributions: dict, finished: pd.DataFrame) -> str:
    """Optuna's default importances for final val_acc, or a sentence on why there are none."""
    study = _study(distributions, finished)
    if len(study.trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return note(
            f"Importances need at least {MIN_TRIALS_FOR_IMPORTANCE} finished trials with in-range parameters; "
            f"this run has {len(study.trials)}."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except Exception as error:  # Optuna raises several types for degenerate studies; the page must still render.
            return note(f"Optuna could not compute importances: {error}")
    # PED-ANOVA warns and returns equal importances when the trials are too few to tell parameters apart.
    degenerate = [w for w in caught if "too small" in str(w.message)]
    if degenerate:
        return note(f"Optuna could not compute meaningful importances: {degenerate[0].message}")
    names = list(importances)[::-1]
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h", marker_color="#1f77b4"))
    fig.update_layout(title="Parameter importance for final val_acc (finished trials)", xaxis_title="importance")
    return page.figure(fig, max(240, 60 + 40 * len(names)))


def _parallel_coordinates(finished: pd.DataFrame, distributions: dict) -> go.Figure:
    """One axis per searched parameter (categories as ticks, log ranges as log10) and one for val_acc."""
    dims = []
    for name, dist in distributions.items():
        values = finished[f"config/{name}"]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            labels = sorted({setting_label(v) for v in values}, key=numeric_sort_key)
            codes = values.map(setting_label).map({label: i for i, label in enumerate(labels)})
            dims.append({"label": name, "values": codes.tolist(), "tickvals": list(range(len(labels))),
                         "ticktext": labels})  # fmt: skip
        elif getattr(dist, "log", False):
            dims.append({"label": f"log10 {name}", "values": np.log10(values.astype(float)).tolist()})
        else:
            dims.append({"label": name, "values": values.astype(float).tolist()})
    dims.append({"label": "val_acc", "values": finished["val_acc"].tolist()})
    return go.Figure(
        go.Parcoords(
            line={"color": finished["val_acc"].tolist(), "colorscale": "Viridis", "showscale": True}, dimensions=dims
        )  # fmt: skip
    )


def _slices(finished: pd.DataFrame, distributions: dict) -> tuple[go.Figure, int]:
    """Final val_acc against each searched parameter, three panels a row; returns the figure and its height."""
    names = list(distributions)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_yaxes=True)
    for index, name in enumerate(names):
        row, col = index // cols + 1, index % cols + 1
        dist = distributions[name]
        values = finished[f"config/{name}"]
        categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)
        x = values.map(setting_label) if categorical else values.astype(float)
        fig.add_trace(
            go.Scatter(x=x.tolist(), y=finished["val_acc"].tolist(), mode="markers", showlegend=False,
                       text=finished["trial_id"].tolist(), marker={"color": "#1f77b4", "size": 8, "opacity": 0.7},
                       hovertemplate=f"trial %{{text}}<br>{esc(name)} %{{x}}<br>val_acc %{{y:.4f}}<extra></extra>"),
            row=row, col=col,
        )  # fmt: skip
        if categorical:
            order = sorted(set(x), key=numeric_sort_key)
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, row=row, col=col)
        elif getattr(dist, "log", False):
            fig.update_xaxes(type="log", row=row, col=col)
    fig.update_yaxes(title_text="final val_acc", col=1)
    return fig, 320 * rows


def _study(distributions: dict, finished: pd.DataFrame) -> optuna.Study:
    """An in-memory Optuna study of the finished trials, so Optuna's importance evaluators can run on them."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, trial in finished.iterrows():
        params = {}
        for name, dist in distributions.items():
            value = _to_distribution(trial.get(f"config/{name}"), dist)
            if value is None:
                break
            params[name] = value
        else:
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=float(trial["val_acc"]))
            )
    return study


def _to_distribution(value: object, dist: optuna.distributions.BaseDistribution) -> object | None:
    """The config value as the distribution holds it, or None when it is missing or outside it."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        labels = {setting_label(choice): choice for choice in dist.choices}
        return labels.get(setting_label(value))
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if isinstance(dist, optuna.distributions.IntDistribution):
        number = int(number)
    return number if dist.low <= number <= dist.high else None
