"""Trajectory statistics: the per-epoch statistics the trials recorded, for the best trial and the stopped trials
that trained longest, so a reader can see how the trajectories that were stopped differed from the winner's."""

from __future__ import annotations

import math

import plotly.graph_objects as go
from plotly.subplots import make_subplots

from clp_tune.report.markup import TRACE_COLORS, Page, note
from clp_tune.report.run import Run
from clp_tune.vocabulary import STATISTIC_COLUMNS


def render(run: Run, page: Page) -> str:
    """One panel per recorded statistic column (in the vocabulary's order), one line per chosen trial."""
    title = "Trajectory statistics"
    columns = [c for c in STATISTIC_COLUMNS if c in run.trajectories and run.trajectories[c].notna().any()]
    if not columns:
        return page.section("statistics", title, note("This run recorded no trajectory statistics."))
    chosen: list[tuple[str, str]] = []
    best = run.best_trial()
    if best is not None:
        chosen.append((best["trial_id"], "best"))
    stopped = run.trials[run.trials["status"] == "stopped"].sort_values("epochs", ascending=False)
    chosen += [(trial_id, "stopped") for trial_id in stopped["trial_id"].head(3)]
    if not chosen:
        return page.section("statistics", title, note("No finished or stopped trial to show statistics for."))
    cols = min(3, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=columns, horizontal_spacing=0.07)
    for index, (trial_id, role) in enumerate(chosen):
        curve = run.trajectories[run.trajectories["trial_id"] == trial_id].sort_values("epoch")
        color = TRACE_COLORS[index % len(TRACE_COLORS)]
        for position, column in enumerate(columns):
            fig.add_trace(
                go.Scatter(x=curve["epoch"].tolist(), y=curve[column].tolist(), mode="lines",
                           name=f"{trial_id} ({role})", legendgroup=trial_id, showlegend=position == 0,
                           line={"color": color, "width": 2.5 if role == "best" else 1.5}),
                row=position // cols + 1, col=position % cols + 1,
            )  # fmt: skip
    fig.update_xaxes(title_text="epoch", row=rows)
    body = note("The best trial and up to three stopped trials (those that trained longest).")
    return page.section("statistics", title, body + page.figure(fig, 60 + 280 * rows))
