"""The trials table: one sortable row per trial with its outcome, accuracies, detector epochs, key parameters and
error, so any single trial can be looked up."""

from __future__ import annotations

import pandas as pd

from clp_tune.report.markup import Page, note, table
from clp_tune.report.run import Run


def render(run: Run, page: Page) -> str:
    """Every trial by id; an error message is cut to 300 characters so one traceback cannot swamp the table."""
    params = run.key_params()
    marks = run.detector_marks()
    header = ["trial", "status", "epochs", "val_acc", "best_val_acc", "test_acc"]
    header += [f"cp_end_{mark.detector}" for mark in marks]
    header += params + ["error"]
    rows = []
    trials = run.trials.sort_values("trial_id")
    for _, trial in trials.iterrows():
        row = [trial["trial_id"], trial["status"], trial.get("epochs"), trial.get("val_acc")]
        row += [trial.get("best_val_acc"), trial.get("test_acc")]
        row += [mark.epochs.get(trial["trial_id"]) for mark in marks]
        row += [trial.get(f"config/{name}") for name in params]
        error = trial.get("error")
        row.append("" if error is None or pd.isna(error) else str(error)[:300])
        rows.append(row)
    body = note("Click a column header to sort.") + table(header, rows, "sortable")
    return page.section("trials", "Trials", body)
