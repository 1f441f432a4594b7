"""What stopping saved and what it risked: the best final found against the epochs spent, next to what a search
without stopping would have paid for the same trials, and the stopped trials that might still have won.

The run records no trial's end time, so trials are taken in trial-id order (the order Ray created them in); the
epochs are those the trajectories table holds for each trial.
"""

from __future__ import annotations

import plotly.graph_objects as go
from scipy import stats

from clp_tune.report.markup import BEST_COLOR, Page, fmt, note, table
from clp_tune.report.outcomes import PREDICTED, outcomes
from clp_tune.report.run import Run

#: The confidence of the upper bound that says a stopped trial might have beaten the best final.
RISK_CONFIDENCE = 0.95


def render(run: Run, page: Page) -> str:
    """The anytime plot and the list of stopped trials whose predicted upper bound exceeds the best final."""
    title = "What stopping saved and risked"
    best = run.best_trial()
    if best is None:
        return page.section("savings", title, note("No trial finished: there is no best final to reach or to risk."))
    parts = [page.figure(_anytime(run), 400), _risks(run, float(best["val_acc"]))]
    return page.section("savings", title, "".join(parts))


def _anytime(run: Run) -> go.Figure:
    """Best finished val_acc so far against cumulative epochs, as the search spent them and as it would have
    without stopping (every trial charged its planned epochs)."""
    trials = run.trials.sort_values("trial_id").set_index("trial_id")
    spent = run.trajectories.groupby("trial_id")["epoch"].max().reindex(trials.index).fillna(0)
    planned = run.budgets().reindex(trials.index).fillna(0)
    finals = trials["val_acc"].where(trials["status"] == "finished")
    best = finals.cummax().ffill().round(5)
    fig = go.Figure()
    for name, epochs, line in (
        ("this search", spent, {"color": BEST_COLOR, "width": 2.5}),
        ("without stopping (planned epochs)", planned, {"color": "#7f7f7f", "dash": "dash", "width": 2}),
    ):
        fig.add_trace(
            go.Scatter(x=epochs.cumsum().tolist(), y=best.tolist(), mode="lines", line_shape="hv", name=name,
                       line=line, text=trials.index.tolist(),
                       hovertemplate="after trial %{text}<br>%{x} epochs<br>best final %{y:.4f}<extra></extra>")
        )  # fmt: skip
    fig.add_vline(x=float(spent.sum()), line={"color": BEST_COLOR, "dash": "dot"})
    fig.add_vline(x=float(planned.sum()), line={"color": "#7f7f7f", "dash": "dot"})
    fig.update_layout(
        title=f"Best final val_acc against epochs spent: {fmt(spent.sum())} spent, {fmt(planned.sum())} without "
        "stopping (trials in trial-id order)",
        xaxis_title="cumulative epochs", yaxis_title="best final val_acc so far",
    )  # fmt: skip
    return fig


def _risks(run: Run, best: float) -> str:
    """Stopped trials whose predicted final's upper bound (RISK_CONFIDENCE) exceeds the best final: the chances the
    stopper took, listed; each might have become the best trial had it trained on."""
    predicted = outcomes(run)
    predicted = predicted[predicted["source"] == PREDICTED]
    if predicted.empty:
        return note("No stopped trial has a prediction (decisions.parquet): the risk taken cannot be judged.")
    z = stats.norm.ppf(0.5 + RISK_CONFIDENCE / 2)
    upper = predicted["final"] + z * predicted["final_std"]
    risky = predicted.assign(upper=upper, margin=upper - best)[upper > best].sort_values("upper", ascending=False)
    level = f"{RISK_CONFIDENCE:.0%}"
    text = (
        f"{len(risky)} of {len(predicted)} stopped trials had a predicted {level} upper bound (pred_mean + "
        f"{z:.2f} × pred_std, when stopped) above the best final val_acc {fmt(best)}: the risk the stopper took."
    )
    if risky.empty:
        return f"<h3>Risk taken</h3><p>{text}</p>"
    columns = ["trial_id", "epochs", "final", "final_std", "upper", "margin"]
    header = ["stopped trial", "epochs trained", "predicted final", "pred_std", f"{level} upper bound", "above best by"]
    return f"<h3>Risk taken</h3><p>{text}</p>" + table(header, risky[columns].itertuples(index=False), "sortable")
