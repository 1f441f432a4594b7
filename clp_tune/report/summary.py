"""The report's first section: the best configuration, what became of the trials and what early stopping saved."""

from __future__ import annotations

import pandas as pd

from clp_tune.report.markup import Page, esc, fmt, note, table
from clp_tune.report.run import Run


def render(run: Run, page: Page) -> str:
    """Best trial with its searched parameters, trial outcomes, epochs spent against a search without stopping, and
    trial time."""
    trials = run.trials
    counts = trials["status"].value_counts()
    unfinished = f", {counts['unfinished']} unfinished" if counts.get("unfinished", 0) else ""
    items = [
        f"<li>Trials: {len(trials)} run — {counts.get('finished', 0)} finished, {counts.get('stopped', 0)} stopped, "
        f"{counts.get('diverged', 0)} diverged, {counts.get('error', 0)} errored{unfinished}.</li>"
    ]
    spent = float(pd.to_numeric(trials["epochs"], errors="coerce").fillna(0).sum())
    full = float(run.budgets().sum())
    if full > 0:
        items.append(
            f"<li>Epochs spent: {fmt(spent)} of the {fmt(full)} a search without stopping would have spent "
            f"(trials × budget): <strong>{fmt(100 * (1 - spent / full), 3)} % compute saved</strong>.</li>"
        )
    if "time_total_s" in trials and trials["time_total_s"].notna().any():
        times = pd.to_numeric(trials["time_total_s"], errors="coerce")
        items.append(
            f"<li>Trial time: {_duration(times.sum())} summed over trials; longest trial {_duration(times.max())}.</li>"
        )
    best = run.best_trial()
    if best is None:
        best_html = note("No trial finished, so there is no best configuration.")
    else:
        params = [(name, best.get(f"config/{name}")) for name in run.key_params()]
        best_html = (
            f"<p>Best configuration (highest final val_acc among finished trials): trial "
            f"<code>{esc(best['trial_id'])}</code>, validation accuracy <strong>{fmt(best['val_acc'])}</strong>, "
            f"test accuracy <strong>{fmt(best.get('test_acc'))}</strong>.</p>" + table(["parameter", "value"], params)
        )
    return page.section("summary", "Summary", best_html + "<ul>" + "".join(items) + "</ul>")


def _duration(seconds: float) -> str:
    """Seconds as hours and minutes, or minutes and seconds under an hour."""
    if pd.isna(seconds):
        return "—"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min" if hours else f"{int(minutes)} min {secs:.0f} s"
