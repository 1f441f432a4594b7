"""The outcome of every trial that has one: a finished trial's final val_acc, or a stopped trial's predicted final.

The better the trajectory scheduler stops, the fewer trials finish, and a report built on finished trials alone
says less the better the search went. A stopped trial's last decision row holds what the scheduler predicted for
its final accuracy when it stopped it (pred_mean, with pred_std): the sections that summarize outcomes use those
predictions next to the finished finals, mark them as predicted, and offer the finished trials alone as well.
"""

from __future__ import annotations

import pandas as pd

from clp_tune.report.run import Run

#: Where an outcome comes from, in the ``source`` column and wherever the page marks it.
FINISHED, PREDICTED = "finished", "predicted"
#: The two bases every outcome summary is given on: (label for the page, sources it includes).
BASES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("finished + predicted", (FINISHED, PREDICTED)),
    ("finished only", (FINISHED,)),
)


def outcomes(run: Run) -> pd.DataFrame:
    """The trials table's rows that have an outcome, with ``final`` (val_acc, or the stopped trial's last pred_mean),
    ``final_std`` (0 for a measured final, else pred_std) and ``source`` (FINISHED or PREDICTED).

    Diverged, errored and unfinished trials have no outcome worth comparing and are left out, as are stopped trials
    the decisions table holds no prediction for (a run under another scheduler).
    """
    finished = run.finished().assign(final=lambda f: f["val_acc"].astype(float), final_std=0.0, source=FINISHED)
    if run.decisions is None or "pred_mean" not in run.decisions:
        return finished
    last = run.decisions.dropna(subset=["pred_mean"]).sort_values(["trial_id", "epoch"]).groupby("trial_id").tail(1)
    last = last.set_index("trial_id")
    stopped = run.trials[(run.trials["status"] == "stopped") & run.trials["trial_id"].isin(last.index)]
    ids = stopped["trial_id"]
    std = last["pred_std"] if "pred_std" in last else pd.Series(0.0, index=last.index)
    predicted = stopped.assign(
        final=last["pred_mean"].reindex(ids).to_numpy(dtype=float),
        final_std=std.reindex(ids).fillna(0).to_numpy(dtype=float),
        source=PREDICTED,
    )
    return pd.concat([finished, predicted], ignore_index=True)


def basis(frame: pd.DataFrame, sources: tuple[str, ...]) -> pd.DataFrame:
    """The rows of an :func:`outcomes` frame whose outcome comes from one of ``sources``."""
    return frame[frame["source"].isin(sources)]
