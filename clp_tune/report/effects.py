"""The two effects this project studies, each as its own section: the Mixup-off window and the pretraining mode.

Both compare the mean final val_acc per setting with confidence intervals over seeds and a verdict against the
baseline setting (:func:`clp_tune.report.statistics.group_ci`): the effects are small next to seed noise, so the
page says "not significant" wherever an interval says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from clp_tune.report.markup import TRACE_COLORS, Page, note, table
from clp_tune.report.run import Run
from clp_tune.report.statistics import group_ci, setting_label


def render_mixup(run: Run, page: Page) -> str:
    """The window only matters for trials that use Mixup, so trials with mixup_alpha = 0 are left out."""
    scope = None
    if "config/mixup_alpha" in run.trials:
        alpha = pd.to_numeric(run.trials["config/mixup_alpha"], errors="coerce").fillna(0)
        scope = ("Finished trials with Mixup on (mixup_alpha > 0)", alpha > 0)
    return _effect_section(run, page, "mixup", "Mixup-off window", "mixup_off", baseline="0", scope=scope)


def render_pretrain(run: Run, page: Page) -> str:
    """Pretraining modes against none, with the autoencoder's reconstruction error where the trials report it."""
    return _effect_section(
        run, page, "pretrain", "Pretraining", "pretrain", baseline="none", extra=("pretrain_recon_error",)
    )


def _effect_section(
    run: Run,
    page: Page,
    anchor: str,
    title: str,
    key: str,
    baseline: str,
    extra: Sequence[str] = (),
    scope: tuple[str, pd.Series] | None = None,
) -> str:
    """Mean final val_acc per setting of ``config/<key>`` with CIs and a verdict against the baseline setting.

    ``extra`` names further per-trial columns (e.g. pretrain_recon_error) shown as mean ± CI without a verdict;
    ``scope`` is (description, boolean mask over the finished trials) when only some trials are comparable.
    """
    column = f"config/{key}"
    finished = run.finished()
    who = "Finished trials"
    if scope is not None:
        who, mask = scope
        finished = finished[mask.reindex(finished.index, fill_value=False)]
    if column not in finished or finished[column].map(setting_label).nunique() < 2:
        return page.section(anchor, title, note(f"{who} do not vary {key}: nothing to compare."))
    effects = group_ci(finished, column, "val_acc", baseline=baseline)
    rows = [
        (r.setting, r.n, r.mean, r.ci_low, r.ci_high, r.diff, r.diff_low, r.diff_high, r.verdict)
        for r in effects.itertuples()
    ]
    header = [key, "n", "mean val_acc", "95 % CI low", "95 % CI high", f"diff to {baseline}", "diff CI low",
              "diff CI high", "verdict"]  # fmt: skip
    parts = [
        note(
            f"{who} grouped by {key} (pooled over the other parameters); 95 % t-intervals over seeds; the "
            f"difference to {key} = {baseline} uses Welch's interval and is 'not significant' wherever that "
            "interval contains zero."
        ),
        table(header, rows),
    ]
    panels = [("val_acc", effects)]
    for name in extra:
        values = run.per_trial(name)
        if values.notna().any():
            frame = finished[[column]].assign(**{name: values.reindex(finished["trial_id"]).to_numpy()})
            extra_effects = group_ci(frame, column, name)
            panels.append((name, extra_effects))
            parts.append(
                table(
                    [key, "n", f"mean {name}", "95 % CI low", "95 % CI high"],
                    [(r.setting, r.n, r.mean, r.ci_low, r.ci_high) for r in extra_effects.itertuples()],
                )
            )
    parts.insert(1, page.figure(_effect_figure(panels, key, baseline), 380))
    return page.section(anchor, title, "".join(parts))


def _effect_figure(panels: list[tuple[str, pd.DataFrame]], key: str, baseline: str) -> go.Figure:
    """One panel per (column, group_ci frame): each setting's mean with its CI, the baseline's mean dotted."""
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{name} by {key}" for name, _ in panels])
    for col, (name, frame) in enumerate(panels, start=1):
        half = (frame["ci_high"] - frame["mean"]).fillna(0)
        fig.add_trace(
            go.Scatter(x=frame["setting"], y=frame["mean"], mode="markers", name=name, showlegend=False,
                       error_y={"type": "data", "array": half.tolist(), "visible": True},
                       marker={"size": 11, "color": TRACE_COLORS[col - 1]}),
            row=1, col=col,
        )  # fmt: skip
        fig.update_xaxes(type="category", title_text=key, row=1, col=col)
        if baseline in set(frame["setting"]):
            level = float(frame.loc[frame["setting"] == baseline, "mean"].iloc[0])
            fig.add_hline(y=level, line={"dash": "dot", "color": "#888"}, row=1, col=col)
        fig.update_yaxes(title_text=f"mean {name} (95 % CI)", row=1, col=col)
    return fig
