"""The trajectory scheduler's section: how well its predictor foresaw the final accuracy, and why it stopped whom.

Read from the decisions table (one row per judged epoch: pred_mean, pred_std, threshold, p_beat, action, reason),
which only the trajectory scheduler writes; under other schedulers the section says so in one sentence.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from clp_tune.report.markup import BEST_COLOR, Page, note, table
from clp_tune.report.run import Run
from clp_tune.report.statistics import decisions_near, spearman
from clp_tune.vocabulary import DECISIONS_FILE, IDLE_THAW_REASON, SEARCH_OVER_REASON, SLOT_NEEDED_REASON

#: Budget fractions at which the predictor is back-tested on finished trials.
BACKTEST_FRACTIONS = (0.10, 0.25, 0.50)
#: Budget fraction of the prediction compared with the actual final accuracy.
SCATTER_FRACTION = 0.25
#: Below this many finished trials a rank correlation or a mean error says more about chance than about the
#: predictor (a quickstart once showed Spearman ρ = -0.39 from 4), so the back-test and calibration show none.
MIN_TRIALS_FOR_BACKTEST = 5


def render(run: Run, page: Page) -> str:
    """Calibration scatter, the stopped trials' last decisions, and the back-test table."""
    title = "Trajectory scheduler"
    decisions = run.decisions
    if decisions is None or decisions.empty:
        return page.section(
            "scheduler", title, note(f"This run has no {DECISIONS_FILE}: not the trajectory scheduler.")
        )
    budgets = run.budgets()
    finished = run.finished().set_index("trial_id")
    parts = [_prior(run), _prediction_scatter(decisions, page, budgets, finished), _freeze_thaw(decisions, finished),
             _stop_decisions(run, decisions, page)]  # fmt: skip
    rows = []
    for fraction in BACKTEST_FRACTIONS:
        near = decisions_near(decisions, budgets, fraction).join(finished["val_acc"], how="inner")
        row = [f"{fraction:.0%}", len(near), near["epoch"].median()]
        if len(near) < MIN_TRIALS_FOR_BACKTEST:
            row += [_too_few(len(near))] * 2
        else:
            row += [spearman(near["pred_mean"], near["val_acc"]), (near["pred_mean"] - near["val_acc"]).abs().mean()]
        rows.append(row)
    parts.append(
        "<h3>Back-test on finished trials</h3>"
        + note(
            "Prediction (pred_mean) from the decision row nearest each budget fraction vs the final val_acc; "
            f"Spearman ρ and the error are given from {MIN_TRIALS_FOR_BACKTEST} finished trials on."
        )
        + table(["budget fraction", "finished trials", "median epoch used", "Spearman ρ", "mean abs. error"], rows)
    )
    return page.section("scheduler", title, "".join(parts))


def _prior(run: Run) -> str:
    """What the predictor's prior was fitted on: a prior that has seen this dataset and model (the user's own banks)
    stops differently from one that has not, so the same spec run twice may not decide the same."""
    if run.prior_banks is None:
        return ""
    if not run.prior_banks:
        return note("Prior: the shipped suite's banks (the bank library had none of this dataset and model).")
    names = ", ".join(Path(path).stem for path in run.prior_banks)
    return note(f"Prior: the shipped suite's banks and {len(run.prior_banks)} of your bank library's, of this dataset "
                f"and model: {names}.")  # fmt: skip


def _freeze_thaw(decisions: pd.DataFrame, finished: pd.DataFrame) -> str:
    """How many trials were paused, thawed (on new evidence, or for a slot that would idle) and then finished."""
    heading = "<h3>Freeze-thaw</h3>"
    paused = set(decisions.loc[decisions["action"] == "pause", "trial_id"])
    if not paused:
        return heading + note("No trial was paused.")
    thaws = decisions[decisions["action"] == "thaw"]
    idle = thaws["reason"].str.startswith(IDLE_THAW_REASON)
    thawed = set(thaws["trial_id"])
    last = decisions.groupby("trial_id")["action"].last()
    frozen_at_end = {tid for tid in paused if last.get(tid) == "pause"}
    previous = decisions.groupby("trial_id")["action"].shift()
    stopped_paused = (decisions["action"] == "stop") & (previous == "pause")
    over = stopped_paused & decisions["reason"].str.startswith(SEARCH_OVER_REASON)
    evicted = stopped_paused & decisions["reason"].str.startswith(SLOT_NEEDED_REASON)
    hopeless = stopped_paused & ~over & ~evicted  # judged again while paused (a trial finished), found hopeless
    rows = [
        ["paused at least once", len(paused)],
        ["thawed on new evidence (a trial finished)", thaws.loc[~idle, "trial_id"].nunique()],
        ["thawed for a slot that would idle", thaws.loc[idle, "trial_id"].nunique()],
        ["thawed and then finished their budget", len(thawed & set(finished.index))],
        ["paused when the run ended (counted as stopped)", len(frozen_at_end)],
        ["stopped for good while paused (hopeless)", decisions.loc[hopeless, "trial_id"].nunique()],
        ["stopped when the search was over (unlikely after an idle epoch)", decisions.loc[over, "trial_id"].nunique()],
    ]
    if evicted.any():  # only under a concurrency limit that counts paused trials (not clp-tune's own searches)
        rows.append(["stopped to free a slot for a new trial", decisions.loc[evicted, "trial_id"].nunique()])
    return (
        heading
        + note(
            "A trial unlikely to win is paused (its checkpoint kept) rather than stopped, judged again whenever a "
            "trial finishes, and thawed when its chance is back; a slot that would otherwise idle runs it one more "
            "epoch, once. Paused trials still unlikely when the search is over are stopped."
        )
        + table(["trials", "count"], rows)
    )


def _prediction_scatter(decisions: pd.DataFrame, page: Page, budgets: pd.Series, finished: pd.DataFrame) -> str:
    """Predicted (at SCATTER_FRACTION of the budget) against actual final accuracy of the finished trials."""
    near = decisions_near(decisions, budgets, SCATTER_FRACTION).join(finished["val_acc"], how="inner")
    heading = f"<h3>Predicted vs actual final accuracy (prediction at {SCATTER_FRACTION:.0%} of the budget)</h3>"
    if len(near) < MIN_TRIALS_FOR_BACKTEST:
        return heading + note(f"No calibration plot: {_too_few(len(near))} with a scheduler decision.")
    values = pd.concat([near["pred_mean"], near["val_acc"]])
    low, high = float(values.min()), float(values.max())
    fig = go.Figure(
        [
            go.Scatter(x=[low, high], y=[low, high], mode="lines", name="prediction = actual",
                       line={"dash": "dash", "color": "#888"}),  # fmt: skip
            go.Scatter(x=near["val_acc"], y=near["pred_mean"], mode="markers", name="finished trial",
                       error_y=_accuracy_error_bars(near["pred_mean"], near["pred_std"]),
                       text=near.index.tolist(), marker={"size": 9, "color": "#1f77b4"},
                       hovertemplate="trial %{text}<br>actual %{x:.4f}<br>predicted %{y:.4f}<extra></extra>"),
        ]
    )  # fmt: skip
    fig.update_layout(xaxis_title="actual final val_acc", yaxis_title="predicted final val_acc (± pred_std in [0, 1])")
    return heading + page.figure(fig, 440)


def _too_few(count: int) -> str:
    """The same words in the back-test table and the calibration note, so the two read as one rule."""
    return f"too few finished trials ({count}; at least {MIN_TRIALS_FOR_BACKTEST} needed)"


def _accuracy_error_bars(mean: pd.Series, std: pd.Series) -> dict:
    """Plotly ``error_y`` for mean ± std with both ends clipped to [0, 1]: an accuracy cannot leave that range, so a
    drawn interval must not either (asymmetric bars near the bounds)."""
    std = std.fillna(0)
    high, low = (mean + std).clip(upper=1), (mean - std).clip(lower=0)
    return {"type": "data", "symmetric": False, "array": (high - mean).tolist(), "arrayminus": (mean - low).tolist()}


def _stop_decisions(run: Run, decisions: pd.DataFrame, page: Page) -> str:
    """Each stopped trial's prediction against the threshold it failed, as a chart and a table."""
    heading = "<h3>Stopped trials: prediction and threshold when stopped</h3>"
    status = run.trials.set_index("trial_id")["status"]
    stopped_ids = status.index[status == "stopped"]
    decisions = decisions[decisions["trial_id"].isin(stopped_ids)].sort_values(["trial_id", "epoch"])
    stops = decisions[decisions["action"] == "stop"]
    # A stopped trial without a "stop" row (stopped by something else) shows its last decision.
    last = pd.concat([stops, decisions[~decisions["trial_id"].isin(stops["trial_id"])]]).groupby("trial_id").tail(1)
    if last.empty:
        return heading + note("No trial was stopped.")
    columns = ["trial_id", "epoch", "pred_mean", "pred_std", "threshold", "p_beat", "action", "reason"]
    columns = [c for c in columns if c in last]
    rows = table(columns, last[columns].itertuples(index=False))
    fig = go.Figure(
        [
            go.Scatter(x=last["trial_id"], y=last["pred_mean"], mode="markers", name="predicted final val_acc",
                       error_y=_accuracy_error_bars(last["pred_mean"], last["pred_std"]),
                       marker={"size": 9, "color": "#1f77b4"}),
            go.Scatter(x=last["trial_id"], y=last["threshold"], mode="markers", name="threshold",
                       marker={"symbol": "line-ew-open", "size": 22, "line": {"width": 3}, "color": BEST_COLOR}),
        ]
    )  # fmt: skip
    fig.update_layout(xaxis={"title": "stopped trial", "type": "category"}, yaxis_title="val_acc")
    return heading + page.figure(fig, 400) + rows
