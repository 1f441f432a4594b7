"""Parameter effects: which searched parameters mattered for the final accuracy (Optuna's importances), and how
each setting fared (parallel coordinates, one slice per parameter).

Outcomes are the finished trials' finals and the stopped trials' predicted finals (``clp_tune.report.outcomes``),
marked as predicted; importances are computed on both and on the finished trials alone, side by side, and the
charts let the reader keep the finished trials only (legend or buttons).

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

from clp_tune.report import adjusted
from clp_tune.report.markup import TRACE_COLORS, Page, esc, note
from clp_tune.report.outcomes import BASES, FINISHED, PREDICTED, basis, outcomes
from clp_tune.report.run import Run
from clp_tune.report.statistics import numeric_sort_key, setting_label
from clp_tune.spec import Spec
from clp_tune.vocabulary import SPEC_FILE

#: Below this many trials (of a basis) parameter importances are noise, so the report does not show them.
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
    trials = outcomes(run)
    parts = ["<h3>Importances (Optuna)</h3>", _importances(page, distributions, trials)]
    if len(trials) < 2:
        parts.append(note("Fewer than two trials with an outcome: no parallel coordinates or slices."))
        return page.section("params", title, "".join(parts))
    parts += [
        "<h3>Parallel coordinates</h3>",
        note(
            "One line per trial; the 'from' axis tells finished trials from stopped ones (predicted final): use "
            "the buttons, or drag along that axis, to keep one kind."
        ),
        page.figure(_parallel_coordinates(trials, distributions), 460, {"l": 80, "r": 60, "t": 90, "b": 30}),
        "<h3>Slices</h3>",
        note(
            "Finished trials as dots, stopped trials at their predicted final as open diamonds (pred_std on hover): "
            "click the legend to hide either."
        ),
    ]
    parts.append(page.figure(*_slices(trials, distributions)))
    parts.append(adjusted.render_all(run, basis(trials, BASES[0][1])))
    return page.section("params", title, "".join(parts))


def _importances(page: Page, distributions: dict, trials: pd.DataFrame) -> str:
    """Optuna's default importances for the final val_acc on each basis, side by side in one figure, with a
    sentence for a basis that has none."""
    panels, notes = [], []
    for label, sources in BASES:
        found = _basis_importances(distributions, basis(trials, sources))
        if isinstance(found, str):
            notes.append(note(f"{label}: {found}"))
        else:
            panels.append((label, found))
    if not panels:
        return "".join(notes)
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{label} trials" for label, _ in panels])
    for col, (_, importances) in enumerate(panels, start=1):
        names = list(importances)[::-1]
        bar = go.Bar(x=[importances[n] for n in names], y=names, orientation="h", marker_color=TRACE_COLORS[col],
                     showlegend=False)  # fmt: skip
        fig.add_trace(bar, row=1, col=col)
        fig.update_xaxes(title_text="importance", row=1, col=col)
    fig.update_layout(title="Parameter importance for final val_acc (predicted finals for stopped trials)")
    return page.figure(fig, max(260, 80 + 40 * len(distributions))) + "".join(notes)


def _basis_importances(distributions: dict, trials: pd.DataFrame) -> dict[str, float] | str:
    """Optuna's default importances of one basis's trials, or why there are none."""
    study = _study(distributions, trials)
    if len(study.trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return (
            f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE} trials with in-range parameters; "
            f"there are {len(study.trials)}."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except Exception as error:  # Optuna raises several types for degenerate studies; the page must still render.
            return f"Optuna could not compute importances: {error}"
    # PED-ANOVA warns and returns equal importances when the trials are too few to tell parameters apart.
    degenerate = [w for w in caught if "too small" in str(w.message)]
    if degenerate:
        return f"Optuna could not compute meaningful importances: {degenerate[0].message}"
    return importances


def _parallel_coordinates(trials: pd.DataFrame, distributions: dict) -> go.Figure:
    """One axis per searched parameter (categories as ticks, log ranges as log10), one for the final val_acc and
    one for where it comes from, with buttons that keep all trials or the finished ones only."""
    dims = []
    for name, dist in distributions.items():
        values = trials[f"config/{name}"]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            dims.append(_category_axis(name, values.map(setting_label)))
        elif getattr(dist, "log", False):
            dims.append({"label": f"log10 {name}", "values": np.log10(values.astype(float)).round(5).tolist()})
        else:
            dims.append({"label": name, "values": values.astype(float).round(5).tolist()})
    final = trials["final"].round(5).tolist()
    dims.append({"label": "final val_acc", "values": final})
    dims.append(_category_axis("from", trials["source"], order=[FINISHED, PREDICTED]))
    source = f"dimensions[{len(dims) - 1}].constraintrange"
    buttons = [
        {"label": "all trials", "method": "restyle", "args": [{source: None}]},
        {"label": "finished only", "method": "restyle", "args": [{source: [[-0.25, 0.25]]}]},
    ]
    fig = go.Figure(go.Parcoords(line={"color": final, "colorscale": "Viridis", "showscale": True}, dimensions=dims))
    fig.update_layout(updatemenus=[{"type": "buttons", "direction": "right", "buttons": buttons, "x": 0, "y": 1.22,
                                    "xanchor": "left"}])  # fmt: skip
    return fig


def _category_axis(label: str, values: pd.Series, order: list[str] | None = None) -> dict:
    """A parallel-coordinates axis for category labels: one tick per category, in value order unless given."""
    order = order or sorted(set(values), key=numeric_sort_key)
    codes = values.map({name: i for i, name in enumerate(order)})
    return {"label": label, "values": codes.tolist(), "tickvals": list(range(len(order))), "ticktext": order}


def _slices(trials: pd.DataFrame, distributions: dict) -> tuple[go.Figure, int]:
    """Final val_acc against each searched parameter, three panels a row, finished and predicted finals as two
    legend entries; returns the figure and its height."""
    names = list(distributions)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_yaxes=True)
    styles = {  # predicted first, so the fewer finished trials are drawn on top
        PREDICTED: {"color": "#7f7f7f", "size": 8, "opacity": 0.6, "symbol": "diamond-open"},
        FINISHED: {"color": "#1f77b4", "size": 8, "opacity": 0.8},
    }
    for index, name in enumerate(names):
        row, col = index // cols + 1, index % cols + 1
        dist = distributions[name]
        categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)
        for source, marker in styles.items():
            group = trials[trials["source"] == source]
            values = group[f"config/{name}"]
            x = values.map(setting_label) if categorical else values.astype(float)
            spread = group["final_std"].round(5).tolist()
            fig.add_trace(
                go.Scatter(x=x.tolist(), y=group["final"].round(5).tolist(), mode="markers", name=source,
                           legendgroup=source, showlegend=index == 0 and not group.empty, marker=marker,
                           text=group["trial_id"].tolist(), customdata=spread,
                           hovertemplate=f"trial %{{text}} ({source})<br>{esc(name)} %{{x}}<br>final %{{y:.4f}} ± "
                                         "%{customdata:.4f}<extra></extra>"),
                row=row, col=col,
            )  # fmt: skip
        if categorical:
            order = sorted({setting_label(v) for v in trials[f"config/{name}"]}, key=numeric_sort_key)
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, row=row, col=col)
        elif getattr(dist, "log", False):
            fig.update_xaxes(type="log", row=row, col=col)
    fig.update_yaxes(title_text="final val_acc", col=1)
    return fig, 320 * rows


def _study(distributions: dict, trials: pd.DataFrame) -> optuna.Study:
    """An in-memory Optuna study of the trials (``final``: measured or predicted), so Optuna's importance
    evaluators can run on them."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, trial in trials.iterrows():
        params = {}
        for name, dist in distributions.items():
            value = _to_distribution(trial.get(f"config/{name}"), dist)
            if value is None:
                break
            params[name] = value
        else:
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=float(trial["final"]))
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
