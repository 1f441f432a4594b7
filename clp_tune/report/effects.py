"""The two effects this project studies, each as its own section: the Mixup-off window and the pretraining mode.

Both compare the mean final val_acc per setting with confidence intervals over seeds and a verdict against the
baseline setting (:func:`clp_tune.report.statistics.group_ci`): the effects are small next to seed noise, so the
page says "not significant" wherever an interval says so. Stopped trials count with the final the scheduler
predicted for them (``clp_tune.report.outcomes``), and every comparison is also given on the finished trials alone;
where settings ran the same seeds the differences are paired by seed, and in a searched run the effect is also
estimated controlling for the other parameters (``clp_tune.report.adjusted``).
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from clp_tune.report import adjusted
from clp_tune.report.markup import TRACE_COLORS, Page, note, table
from clp_tune.report.outcomes import BASES, PREDICTED, basis, outcomes
from clp_tune.report.run import Run
from clp_tune.report.statistics import group_ci, setting_label

#: The config column whose shared values make two settings' trials pairs.
PAIR_COLUMN = "config/seed"


def render_mixup(run: Run, page: Page) -> str:
    """The window only matters for trials that use Mixup, so trials with mixup_alpha = 0 are left out."""
    scope = None
    if "config/mixup_alpha" in run.trials:
        alpha = pd.to_numeric(run.trials.set_index("trial_id")["config/mixup_alpha"], errors="coerce").fillna(0)
        scope = ("Trials with Mixup on (mixup_alpha > 0)", alpha > 0)
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
    """Mean final val_acc per setting of ``config/<key>`` with CIs and a verdict against the baseline setting, on
    finished + predicted finals and on finished trials only.

    ``extra`` names further per-trial columns (e.g. pretrain_recon_error) shown as mean ± CI without a verdict;
    ``scope`` is (description, boolean mask by trial_id) when only some trials are comparable.
    """
    column = f"config/{key}"
    frame = outcomes(run)
    who = "Trials"
    if scope is not None:
        who, mask = scope
        frame = frame[frame["trial_id"].map(mask).fillna(False).astype(bool)]
    if column not in frame or frame[column].map(setting_label).nunique() < 2:
        return page.section(anchor, title, note(f"{who} do not vary {key}: nothing to compare."))
    pair_by = PAIR_COLUMN if PAIR_COLUMN in frame and not adjusted.is_searched(run, key) else None
    rows, panels = [], []
    for label, sources in BASES:
        subset = basis(frame, sources)
        if subset[column].map(setting_label).nunique() < 2:
            continue
        effects = group_ci(subset, column, "final", baseline=baseline, pair_by=pair_by)
        # An accuracy lies in [0, 1] and a difference of two in [-1, 1]: a t-interval over two seeds can reach far
        # past both, which says "unknown", not "below zero"; the verdict was taken on the unclipped interval.
        effects[["ci_low", "ci_high"]] = effects[["ci_low", "ci_high"]].clip(0.0, 1.0)
        effects[["diff_low", "diff_high"]] = effects[["diff_low", "diff_high"]].clip(-1.0, 1.0)
        predicted = subset[subset["source"] == PREDICTED][column].map(setting_label).value_counts()
        for r in effects.itertuples():
            n = r.n if len(sources) == 1 else f"{r.n - predicted.get(r.setting, 0)} + {predicted.get(r.setting, 0)}"
            rows.append((r.setting, n, label, r.mean, r.ci_low, r.ci_high, r.diff, r.diff_low, r.diff_high,
                         r.verdict, r.test))  # fmt: skip
        panels.append((label, effects))
    header = [key, "n (finished + predicted)", "from", "mean final val_acc", "95 % CI low", "95 % CI high",
              f"diff to {baseline}", "diff CI low", "diff CI high", "verdict", "interval"]  # fmt: skip
    parts = [
        note(
            f"{who} grouped by {key} (pooled over the other parameters). A stopped trial counts with the final "
            "val_acc the scheduler predicted when it stopped it (from = finished + predicted); the same comparison "
            f"on finished trials alone follows. 95 % t-intervals over seeds; the difference to {key} = {baseline} "
            "is paired by seed where both settings ran the same seeds and nothing else was sampled (differences "
            "seed by seed, scipy's paired t), else Welch's interval, and is 'not significant' wherever its interval "
            "contains zero."
        ),
        table(header, rows),
    ]
    extras = []
    for name in extra:
        values = run.per_trial(name)
        if values.notna().any():
            measured = frame[[column]].assign(**{name: values.reindex(frame["trial_id"]).to_numpy()})
            extras.append((name, group_ci(measured, column, name)))
            parts.append(
                note(f"{name} is measured, not predicted: every trial with an outcome counts.")
                + table(
                    [key, "n", f"mean {name}", "95 % CI low", "95 % CI high"],
                    [(r.setting, r.n, r.mean, r.ci_low, r.ci_high) for r in extras[-1][1].itertuples()],
                )
            )
    parts.insert(1, page.figure(_effect_figure(panels, extras, key, baseline), 380))
    parts.append(adjusted.render(run, frame, key, baseline))
    return page.section(anchor, title, "".join(parts))


def _effect_figure(
    panels: list[tuple[str, pd.DataFrame]], extras: list[tuple[str, pd.DataFrame]], key: str, baseline: str
) -> go.Figure:
    """Each setting's mean final val_acc with its CI, one trace per basis (click the legend to keep one), the
    baseline dotted; then one panel per measured extra column (name, group_ci frame)."""
    titles = [f"final val_acc by {key}"] + [f"{name} by {key}" for name, _ in extras]
    fig = make_subplots(rows=1, cols=1 + len(extras), subplot_titles=titles)
    for index, (label, frame) in enumerate(panels):
        fig.add_trace(_means(frame, label, TRACE_COLORS[index + 1], ("circle", "circle-open")[index], True))
        if index == 0 and baseline in set(frame["setting"]):
            level = float(frame.loc[frame["setting"] == baseline, "mean"].iloc[0])
            fig.add_hline(y=level, line={"dash": "dot", "color": "#888"}, row=1, col=1)
    fig.update_yaxes(title_text="mean final val_acc (95 % CI)", row=1, col=1)
    for col, (name, frame) in enumerate(extras, start=2):
        fig.add_trace(_means(frame, name, TRACE_COLORS[col + 1], "circle", False), row=1, col=col)
        fig.update_yaxes(title_text=f"mean {name} (95 % CI)", row=1, col=col)
    fig.update_xaxes(type="category", title_text=key)
    return fig


def _means(frame: pd.DataFrame, name: str, color: str, symbol: str, legend: bool) -> go.Scatter:
    """A group_ci frame's means per setting with their 95 % intervals as error bars."""
    half = (frame["ci_high"] - frame["mean"]).fillna(0)
    return go.Scatter(
        x=frame["setting"], y=frame["mean"], mode="markers", name=name, showlegend=legend,
        error_y={"type": "data", "array": half.tolist(), "visible": True},
        marker={"size": 11, "color": color, "symbol": symbol},
    )  # fmt: skip
