"""Learning curves: every trial's validation accuracy per epoch, coloured by outcome, with the best trial, where
stopped trials stopped, and the epochs the critical-period detectors that acted on the run fired.

A search of hundreds of trials would draw a grey tangle of stopped curves; beyond MAX_STOPPED_LINES the stopped
trials with the highest (predicted) finals stay lines and the others become a band of per-epoch quantiles.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go

from clp_tune.report.markup import BEST_COLOR, TRACE_COLORS, Page, note
from clp_tune.report.outcomes import outcomes
from clp_tune.report.run import Run
from clp_tune.vocabulary import OUTCOMES

#: One colour per trial outcome, in OUTCOMES' order: finished, stopped, diverged, error, unfinished.
_STATUS_COLORS = dict(
    zip(
        OUTCOMES,
        ("rgba(31, 119, 180, 0.35)", "rgba(127, 127, 127, 0.45)", "rgba(148, 103, 189, 0.7)",
         "rgba(214, 39, 40, 0.5)", "rgba(255, 127, 14, 0.5)"),
        strict=True,
    )
)  # fmt: skip
#: Stopped trials drawn as lines at most; the rest are summarized as a band.
MAX_STOPPED_LINES = 30
#: The per-epoch quantile ranges of the banded stopped curves, outer first.
BAND_QUANTILES = ((0.1, 0.9), (0.25, 0.75))
_HOVER = "trial %{text}<br>epoch %{x}<br>val_acc %{y:.4f}<extra></extra>"


def render(run: Run, page: Page) -> str:
    """One figure of all curves (one trace per outcome keeps the page small) and a sentence per marked detector."""
    curves = run.trajectories
    if curves.empty or "val_acc" not in curves:
        return page.section("curves", "Learning curves", note("No trial reported an epoch."))
    curves = curves.dropna(subset=["val_acc"]).sort_values(["trial_id", "epoch"])
    status = run.trials.set_index("trial_id")["status"]
    best = run.best_trial()
    best_id = None if best is None else best["trial_id"]
    reported = set(curves["trial_id"])
    banded = _banded(run, status)
    fig = go.Figure()
    notes = []
    if banded:
        _add_band(fig, curves[curves["trial_id"].isin(banded)])
        notes.append(note(f"{len(status[status == 'stopped'])} stopped trials: the {MAX_STOPPED_LINES} with the "
                          f"highest predicted finals are lines, the other {len(banded)} a band of per-epoch "
                          "quantiles (10–90 % and 25–75 %)."))  # fmt: skip
    for name, color in _STATUS_COLORS.items():
        ids = [t for t in status.index[status == name] if t != best_id and t in reported and t not in banded]
        if ids:
            mode = "lines+markers" if name == "diverged" else "lines"
            fig.add_trace(_lines(curves, ids, name, mode, {"color": color, "width": 1.5}))
    if best_id is not None:
        fig.add_trace(_lines(curves, [best_id], f"best ({best_id})", "lines", {"color": BEST_COLOR, "width": 3}))
    ends = curves.groupby("trial_id").tail(1)
    ends = ends[(ends["trial_id"].map(status) == "stopped") & ~ends["trial_id"].isin(banded)]
    if not ends.empty:
        fig.add_trace(_markers(ends, "stopped here", {"symbol": "x", "size": 9, "color": "#444"}))
    notes += _mark_detectors(run, curves, fig)
    fig.update_layout(title="Validation accuracy per epoch", xaxis_title="epoch", yaxis_title="val_acc")
    return page.section("curves", "Learning curves", page.figure(fig, 480) + "".join(notes))


def _banded(run: Run, status: pd.Series) -> set[str]:
    """The stopped trials drawn as a band: all but the MAX_STOPPED_LINES with the highest final the scheduler
    predicted (their last val_acc where there is no prediction); none when there are few enough."""
    stopped = status.index[status == "stopped"]
    if len(stopped) <= MAX_STOPPED_LINES:
        return set()
    predicted = outcomes(run).set_index("trial_id")["final"]
    last = run.trials.set_index("trial_id")["val_acc"]
    rank = predicted.reindex(stopped).fillna(last.reindex(stopped)).sort_values(ascending=False)
    return set(rank.index[MAX_STOPPED_LINES:])


def _add_band(fig: go.Figure, curves: pd.DataFrame) -> None:
    """Per-epoch quantile ranges of ``curves``' val_acc, each as its upper end and then its lower end filled up to
    it (plotly's ``tonexty``)."""
    by_epoch = curves.groupby("epoch")["val_acc"]
    for index, (low, high) in enumerate(BAND_QUANTILES):
        name = f"other stopped trials ({low:.0%} to {high:.0%})"
        ends = by_epoch.quantile(high).round(5), by_epoch.quantile(low).round(5)
        fill = f"rgba(127, 127, 127, {0.15 + 0.15 * index})"
        for end, extra in zip(ends, ({"showlegend": False}, {"fill": "tonexty", "fillcolor": fill}), strict=True):
            fig.add_trace(go.Scatter(x=end.index.tolist(), y=end.tolist(), mode="lines", line={"width": 0},
                                     name=name, legendgroup=name, hoverinfo="skip", **extra))  # fmt: skip


def _mark_detectors(run: Run, curves: pd.DataFrame, fig: go.Figure) -> list[str]:
    """Add a marker trace per detector that acted on the run, at the epoch it fired; returns the notes saying why
    each is marked (or why it could not be)."""
    marks = run.detector_marks()
    notes = []
    for index, mark in enumerate(marks):
        fired = mark.epochs.dropna()
        points = curves.merge(fired.rename("cp_end").rename_axis("trial_id").reset_index(), on="trial_id")
        points = points[points["epoch"] == points["cp_end"].round()]
        if points.empty:
            notes.append(note(f"{mark.detector} ({mark.role}) is not marked: this run records no epoch of it "
                              f"(cp_end_{mark.detector}) for the trials it acted on."))  # fmt: skip
            continue
        color = TRACE_COLORS[(index + 2) % len(TRACE_COLORS)]
        name = f"{mark.detector} fired ({mark.role})"
        fig.add_trace(_markers(points, name, {"symbol": "circle", "size": 7, "color": color}))
        notes.append(note(f"Marked: the epoch {mark.detector} fired. {mark.why}"))
    if not marks:
        notes.append(note("No critical-period detector is marked: no detector acted on these trials (the scheduler "
                          "is not the trajectory one and no trial's mixup_off is auto:<detector>)."))  # fmt: skip
    return notes


def _lines(curves: pd.DataFrame, ids: Sequence[str], name: str, mode: str, line: dict) -> go.Scatter:
    """Several trials' curves as one trace, broken between trials (None): a trace per trial would bloat the page."""
    xs: list = []
    ys: list = []
    texts: list = []
    for trial_id, curve in curves[curves["trial_id"].isin(ids)].groupby("trial_id", sort=True):
        xs += curve["epoch"].tolist() + [None]
        ys += curve["val_acc"].round(5).tolist() + [None]
        texts += [trial_id] * len(curve) + [None]
    return go.Scatter(x=xs, y=ys, text=texts, mode=mode, name=name, line=line, hovertemplate=_HOVER, connectgaps=False)


def _markers(points: pd.DataFrame, name: str, marker: dict) -> go.Scatter:
    """Single epochs of some trials (``epoch``, ``val_acc``, ``trial_id`` columns) as markers on the curves."""
    return go.Scatter(
        x=points["epoch"], y=points["val_acc"], text=points["trial_id"], mode="markers", name=name, marker=marker,
        hovertemplate=_HOVER,
    )  # fmt: skip
