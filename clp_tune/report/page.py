"""One self-contained, offline HTML page that explains a finished search.

The page is read where the search ran: often a cluster with no internet, so plotly.js is inlined once
(``plotly.offline.get_plotlyjs()``) and every figure is emitted with ``include_plotlyjs=False``; a CDN link would
draw nothing. Everything comes from the run directory's files (see the contract): ``spec.yaml``,
``trajectories.parquet``, ``trials.parquet`` and, for the trajectory scheduler, ``decisions.parquet``. A section
whose data is absent says so in one sentence instead of disappearing, so two reports always have the same outline.

Every figure sits in a ``<div class="clp-figure">`` and ``<body data-figure-count=N>`` says how many there are,
so a test can check in a browser that each one drew.
"""

from __future__ import annotations

import html
import inspect
import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.offline
import yaml
from plotly.subplots import make_subplots
from scipy import stats

#: Columns statistics.py may write, in the order the report shows them.
STATISTIC_COLUMNS = (
    "layer_rotation",
    "grad_cosine_distance",
    "fisher_trace",
    "grad_norm",
    "grad_noise",
    "grad_noise_ratio",
    "weight_distance",
    "path_length",
    "activation_distance",
    "tse",
    "trajectory_complexity",
)
#: Budget fractions at which the predictor is back-tested on finished trials.
BACKTEST_FRACTIONS = (0.10, 0.25, 0.50)
#: Budget fraction of the prediction compared with the actual final accuracy.
SCATTER_FRACTION = 0.25
#: Below this many finished trials a rank correlation or a mean error says more about chance than about the
#: predictor (a quickstart once showed Spearman ρ = -0.39 from 4), so the back-test and calibration show none.
MIN_TRIALS_FOR_BACKTEST = 5
#: Below this many finished trials parameter importances are noise, so the report does not show them.
MIN_TRIALS_FOR_IMPORTANCE = 5

_PLOT_CONFIG = {"displaylogo": False, "responsive": True}
_STATUS_COLORS = {
    "finished": "rgba(31, 119, 180, 0.35)",
    "stopped": "rgba(127, 127, 127, 0.45)",
    "diverged": "rgba(148, 103, 189, 0.7)",
    "error": "rgba(214, 39, 40, 0.5)",
    "unfinished": "rgba(255, 127, 14, 0.5)",
}
_BEST_COLOR = "#d62728"
_TRACE_COLORS = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b")


# ----------------------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class Run:
    """The run directory's files, loaded once; ``decisions`` is None for schedulers other than the trajectory one."""

    directory: Path
    spec: dict
    spec_text: str | None
    trajectories: pd.DataFrame
    trials: pd.DataFrame
    decisions: pd.DataFrame | None

    @property
    def name(self) -> str:
        return str(self.spec.get("name") or self.directory.name)

    def finished(self) -> pd.DataFrame:
        """Finished trials with a final validation accuracy: the only fair basis for comparing configurations."""
        return self.trials[(self.trials["status"] == "finished") & self.trials["val_acc"].notna()]

    def best_trial(self) -> pd.Series | None:
        finished = self.finished()
        return None if finished.empty else finished.loc[finished["val_acc"].idxmax()]

    def budgets(self) -> pd.Series:
        """Epoch budget per trial (``config/epochs``); falls back to the longest trajectory seen."""
        if "config/epochs" in self.trials:
            budgets = pd.to_numeric(self.trials.set_index("trial_id")["config/epochs"], errors="coerce")
        else:
            budgets = pd.Series(np.nan, index=self.trials["trial_id"])
        longest = self.trajectories["epoch"].max() if not self.trajectories.empty else 0
        return budgets.fillna(longest if pd.notna(longest) else 0)

    def per_trial(self, column: str) -> pd.Series:
        """One value per trial: from trials.parquet when it has the column, else the last non-null epoch value."""
        if column in self.trials:
            return self.trials.set_index("trial_id")[column]
        if column in self.trajectories:
            rows = self.trajectories.dropna(subset=[column]).sort_values("epoch")
            return rows.groupby("trial_id")[column].last().reindex(self.trials["trial_id"])
        return pd.Series(np.nan, index=self.trials["trial_id"], name=column)

    def detector_marks(self) -> list[DetectorMark]:
        """The critical-period detectors that acted on this run's trials, each with the trials it acted on.

        A trajectory scheduler held every trial back until its detector fired (the spec's ``scheduler.detector``,
        else the scheduler's own default); under another scheduler a trial whose ``mixup_off`` is
        ``auto:<detector>`` trained without Mixup until that detector fired. Any other detector's epoch shaped
        nothing in the run, so marking it would suggest an effect that was not there: none else is marked.
        """
        options = self.spec.get("scheduler")
        options = {"type": options} if isinstance(options, str) else options if isinstance(options, dict) else {}
        if options.get("type") == "trajectory":
            detector, source = options.get("detector"), "set by the spec's scheduler.detector"
            if not detector:
                detector, source = _trajectory_default("detector"), "its default: the spec sets no scheduler.detector"
            why = (
                f"It is the trajectory scheduler's detector ({source}): the scheduler judged no trial before it "
                "fired or max_fraction of the budget passed."
            )
            epochs = self.per_trial(f"cp_end_{detector}")
            return [DetectorMark(detector, "trajectory scheduler's detector", why, epochs)]
        windows = self.per_trial("config/mixup_off").dropna().astype(str)
        detectors = windows[windows.str.startswith("auto:")].str.removeprefix("auto:")
        return [
            DetectorMark(
                detector, f"mixup_off auto:{detector}: Mixup resumes",
                f"Trials with mixup_off auto:{detector} trained without Mixup until it fired, so only they are marked.",
                self.per_trial(f"cp_end_{detector}").reindex(ids.index),
            )
            for detector, ids in detectors.groupby(detectors)
        ]  # fmt: skip


@dataclass(frozen=True)
class DetectorMark:
    """A critical-period detector the report marks: its name, its role (for the legend), why it is marked (sentences
    for the page), and the epoch it fired per trial (``trial_id`` index: the trials it acted on; NaN: never fired)."""

    detector: str
    role: str
    why: str
    epochs: pd.Series


def _trajectory_default(option: str) -> object:
    """A TrajectoryScheduler option's default, read off its signature (a spec leaves out what it keeps)."""
    from clp_tune.stopping.scheduler import TrajectoryScheduler  # imports Ray: only for a trajectory run that needs it

    return inspect.signature(TrajectoryScheduler).parameters[option].default


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; trials.parquet and trajectories.parquet are required, the rest is optional."""
    directory = Path(run_dir)
    for required in ("trials.parquet", "trajectories.parquet"):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory / required} is missing: not a clp_tune run directory")
    spec_path = directory / "spec.yaml"
    spec_text = spec_path.read_text(encoding="utf-8") if spec_path.is_file() else None
    try:
        spec = (yaml.safe_load(spec_text) if spec_text else None) or {}
    except yaml.YAMLError:
        spec = {}  # the report still shows the text; only the searched-parameter sections need it parsed
    decisions_path = directory / "decisions.parquet"
    decisions = _read_table(decisions_path) if decisions_path.is_file() else None
    trials = _read_table(directory / "trials.parquet")
    trajectories = _read_table(directory / "trajectories.parquet")
    return Run(directory, spec if isinstance(spec, dict) else {}, spec_text, trajectories, trials, decisions)


def _read_table(path: Path) -> pd.DataFrame:
    """A Parquet table with a fresh index (a written pandas index would otherwise come back) and string ids."""
    frame = pd.read_parquet(path).reset_index(drop=True)
    frame["trial_id"] = frame["trial_id"].astype(str)
    return frame


def setting_label(value: object) -> str:
    """A config value as a label that compares equal however Parquet typed it (2, 2.0 and "2" are all "2")."""
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return value
        return setting_label(number) if math.isfinite(number) else value
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | float | np.integer | np.floating):
        number = float(value)
        if math.isnan(number):
            return "n/a"
        return str(int(number)) if number.is_integer() else repr(number)
    return str(value)


def searched_params(spec: dict) -> dict[str, optuna.distributions.BaseDistribution]:
    """Optuna distributions for the spec's searched params; scalars are fixed and unknown forms are ignored.

    ``params:`` maps a name to a scalar or to a one-key mapping ``{uniform|loguniform|int: [low, high]}`` or
    ``{choice|grid: [...]}`` (``{low:, high:}`` is accepted for ranges too); a grid counts as categorical.
    """
    params = spec.get("params") or {}
    found: dict[str, optuna.distributions.BaseDistribution] = {}
    for name, value in params.items() if isinstance(params, dict) else ():
        if not isinstance(value, dict) or len(value) != 1:
            continue
        ((kind, arg),) = value.items()
        if kind in ("choice", "grid") and isinstance(arg, list) and arg:
            found[str(name)] = optuna.distributions.CategoricalDistribution(arg)
            continue
        bounds = (arg.get("low"), arg.get("high")) if isinstance(arg, dict) else tuple(arg or ())
        if len(bounds) != 2 or None in bounds:
            continue
        if kind == "uniform":
            found[str(name)] = optuna.distributions.FloatDistribution(float(bounds[0]), float(bounds[1]))
        elif kind == "loguniform":
            found[str(name)] = optuna.distributions.FloatDistribution(float(bounds[0]), float(bounds[1]), log=True)
        elif kind == "int":
            found[str(name)] = optuna.distributions.IntDistribution(int(bounds[0]), int(bounds[1]))
    return found


def key_params(run: Run) -> list[str]:
    """Config keys worth showing next to a trial: the searched ones, else those that vary across trials."""
    searched = [name for name in searched_params(run.spec) if f"config/{name}" in run.trials]
    if searched:
        return searched
    config = [c for c in run.trials.columns if c.startswith("config/")]
    return [c.removeprefix("config/") for c in config if run.trials[c].astype(str).nunique() > 1]


# ------------------------------------------------------------------------------------------------------ statistics


def group_ci(
    frame: pd.DataFrame, by: str, value: str, baseline: str | None = None, confidence: float = 0.95
) -> pd.DataFrame:
    """Mean of ``value`` per setting of ``by`` with a t-interval over seeds, and each setting's Welch interval of
    the difference to ``baseline``.

    The effects studied here (a Mixup-off window, a pretraining mode) are fractions of a point, smaller than
    seed noise, so a difference is called "significant" only when its interval excludes zero. Settings are compared
    as :func:`setting_label` labels. Returns one row per setting, baseline first: setting, n, mean, ci_low, ci_high,
    diff, diff_low, diff_high and verdict ("baseline", "significant", "not significant", "too few seeds", or "" when
    no baseline is given).
    """
    data = frame[[by, value]].dropna(subset=[value])
    samples: dict[str, np.ndarray] = {}
    for label, values in data.groupby(data[by].map(setting_label), sort=False)[value]:
        samples[str(label)] = values.to_numpy(dtype=float)
    base = samples.get(baseline) if baseline is not None else None
    rows = []
    for label in sorted(samples, key=lambda s: (s != baseline, _numeric_sort_key(s))):
        sample = samples[label]
        mean, low, high = _mean_interval(sample, confidence)
        row = {"setting": label, "n": len(sample), "mean": mean, "ci_low": low, "ci_high": high}
        row.update(diff=np.nan, diff_low=np.nan, diff_high=np.nan, verdict="")
        if baseline is not None and label == baseline:
            row["verdict"] = "baseline"
        elif base is not None:
            diff, diff_low, diff_high = _welch_interval(sample, base, confidence)
            row.update(diff=diff, diff_low=diff_low, diff_high=diff_high)
            if math.isnan(diff_low):
                row["verdict"] = "too few seeds"
            else:
                row["verdict"] = "not significant" if diff_low <= 0 <= diff_high else "significant"
        elif baseline is not None:
            row["verdict"] = "no baseline"
        rows.append(row)
    columns = ["setting", "n", "mean", "ci_low", "ci_high", "diff", "diff_low", "diff_high", "verdict"]
    return pd.DataFrame(rows, columns=columns)


def _numeric_sort_key(label: str) -> tuple[int, float, str]:
    try:
        return (0, float(label), label)
    except ValueError:
        return (1, 0.0, label)


def _mean_interval(sample: np.ndarray, confidence: float) -> tuple[float, float, float]:
    mean = float(np.mean(sample)) if len(sample) else np.nan
    if len(sample) < 2:
        return mean, np.nan, np.nan
    half = stats.t.ppf((1 + confidence) / 2, len(sample) - 1) * np.std(sample, ddof=1) / math.sqrt(len(sample))
    return mean, mean - half, mean + half


def _welch_interval(a: np.ndarray, b: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """Interval of mean(a) - mean(b) without assuming equal variances (Welch-Satterthwaite degrees of freedom)."""
    diff = float(np.mean(a) - np.mean(b))
    if len(a) < 2 or len(b) < 2:
        return diff, np.nan, np.nan
    va, vb = np.var(a, ddof=1) / len(a), np.var(b, ddof=1) / len(b)
    if va + vb == 0:
        return diff, diff, diff
    dof = (va + vb) ** 2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    half = stats.t.ppf((1 + confidence) / 2, dof) * math.sqrt(va + vb)
    return diff, diff - half, diff + half


def decisions_near(decisions: pd.DataFrame, budgets: pd.Series, fraction: float) -> pd.DataFrame:
    """Per trial, the scheduler's decision row whose epoch is nearest ``fraction`` of the trial's budget (the
    earlier one on ties), indexed by trial_id: what the predictor said at that point of training."""
    rows = decisions.join(budgets.rename("budget"), on="trial_id").dropna(subset=["pred_mean", "budget"])
    rows = rows.assign(gap=(rows["epoch"] - fraction * rows["budget"]).abs())
    return rows.sort_values(["trial_id", "gap", "epoch"]).groupby("trial_id").head(1).set_index("trial_id")


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's ρ; NaN when either side is constant (a rank correlation is undefined there)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.nan
    return float(stats.spearmanr(x, y).statistic)


# ------------------------------------------------------------------------------------------------------- rendering


@dataclass
class _Page:
    """Collects figure divs so the page can say how many it holds (``data-figure-count``)."""

    figure_count: int = 0
    nav: list[tuple[str, str]] = field(default_factory=list)

    def figure(self, fig: go.Figure, height: int = 420, margin: dict | None = None) -> str:
        self.figure_count += 1
        fig.update_layout(template="plotly_white", height=height, margin=margin or {"l": 60, "r": 20, "t": 50, "b": 50})
        div = fig.to_html(
            full_html=False, include_plotlyjs=False, div_id=f"clp-figure-{self.figure_count}", config=_PLOT_CONFIG
        )
        return f'<div class="clp-figure">{div}</div>'

    def section(self, anchor: str, title: str, body: str) -> str:
        self.nav.append((anchor, title))
        return f'<section id="{anchor}">\n<h2>{_esc(title)}</h2>\n{body}\n</section>'


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value: object, digits: int = 4) -> str:
    """Numbers for tables: 4 significant digits, integers as such, missing values as an em dash."""
    if value is None or (isinstance(value, float | np.floating) and math.isnan(value)):
        return "—"
    if isinstance(value, bool | np.bool_):
        return str(bool(value))
    if isinstance(value, int | np.integer) or (isinstance(value, float | np.floating) and float(value).is_integer()):
        return str(int(value))
    if isinstance(value, float | np.floating):
        return f"{value:.{digits}g}"
    return _esc(value)


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _table(header: Sequence[str], rows: Sequence[Sequence[object]], css_class: str = "") -> str:
    """A plain table; cells are formatted with :func:`_fmt` and keep the raw number in ``data-value`` for sorting."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = []
        for cell in row:
            raw = "" if _fmt(cell) == "—" else cell
            cells.append(f'<td data-value="{_esc(raw)}">{_fmt(cell)}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f'<table class="{css_class}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# -------------------------------------------------------------------------------------------------------- sections


def _summary(run: Run, page: _Page) -> str:
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
            f"<li>Epochs spent: {_fmt(spent)} of the {_fmt(full)} a search without stopping would have spent "
            f"(trials × budget): <strong>{_fmt(100 * (1 - spent / full), 3)} % compute saved</strong>.</li>"
        )
    if "time_total_s" in trials and trials["time_total_s"].notna().any():
        times = pd.to_numeric(trials["time_total_s"], errors="coerce")
        items.append(
            f"<li>Trial time: {_duration(times.sum())} summed over trials; longest trial {_duration(times.max())}.</li>"
        )
    best = run.best_trial()
    if best is None:
        best_html = _note("No trial finished, so there is no best configuration.")
    else:
        params = [(name, best.get(f"config/{name}")) for name in key_params(run)]
        best_html = (
            f"<p>Best configuration (highest final val_acc among finished trials): trial "
            f"<code>{_esc(best['trial_id'])}</code>, validation accuracy <strong>{_fmt(best['val_acc'])}</strong>, "
            f"test accuracy <strong>{_fmt(best.get('test_acc'))}</strong>.</p>" + _table(["parameter", "value"], params)
        )
    return page.section("summary", "Summary", best_html + "<ul>" + "".join(items) + "</ul>")


def _duration(seconds: float) -> str:
    if pd.isna(seconds):
        return "—"
    minutes, secs = divmod(float(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{int(hours)} h {int(minutes):02d} min" if hours else f"{int(minutes)} min {secs:.0f} s"


def _polylines(curves: pd.DataFrame, ids: Sequence[str]) -> tuple[list, list, list]:
    """Several trials' curves as one trace (None between trials): one trace per status keeps the page small."""
    xs: list = []
    ys: list = []
    texts: list = []
    for trial_id, curve in curves[curves["trial_id"].isin(ids)].groupby("trial_id", sort=True):
        xs += curve["epoch"].tolist() + [None]
        ys += curve["val_acc"].round(5).tolist() + [None]
        texts += [trial_id] * len(curve) + [None]
    return xs, ys, texts


def _learning_curves(run: Run, page: _Page) -> str:
    curves = run.trajectories
    if curves.empty or "val_acc" not in curves:
        return page.section("curves", "Learning curves", _note("No trial reported an epoch."))
    curves = curves.dropna(subset=["val_acc"]).sort_values(["trial_id", "epoch"])
    status = run.trials.set_index("trial_id")["status"]
    best = run.best_trial()
    best_id = None if best is None else best["trial_id"]
    hover = "trial %{text}<br>epoch %{x}<br>val_acc %{y:.4f}<extra></extra>"
    reported = set(curves["trial_id"])
    fig = go.Figure()
    for name, color in _STATUS_COLORS.items():
        ids = [t for t in status.index[status == name] if t != best_id and t in reported]
        if ids:
            xs, ys, texts = _polylines(curves, ids)
            mode = "lines+markers" if name == "diverged" else "lines"
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=ys,
                    text=texts,
                    mode=mode,
                    name=name,
                    line={"color": color, "width": 1.5},
                    hovertemplate=hover,
                    connectgaps=False,
                )  # fmt: skip
            )
    if best_id is not None:
        xs, ys, texts = _polylines(curves, [best_id])
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                text=texts,
                mode="lines",
                name=f"best ({best_id})",
                line={"color": _BEST_COLOR, "width": 3},
                hovertemplate=hover,
            )  # fmt: skip
        )
    ends = curves.groupby("trial_id").tail(1)
    ends = ends[ends["trial_id"].map(status) == "stopped"]
    if not ends.empty:
        fig.add_trace(
            go.Scatter(
                x=ends["epoch"],
                y=ends["val_acc"],
                text=ends["trial_id"],
                mode="markers",
                name="stopped here",
                marker={"symbol": "x", "size": 9, "color": "#444"},
                hovertemplate=hover,
            )  # fmt: skip
        )
    marks = run.detector_marks()
    notes = []
    for index, mark in enumerate(marks):
        fired = mark.epochs.dropna()
        points = curves.merge(fired.rename("cp_end").rename_axis("trial_id").reset_index(), on="trial_id")
        points = points[points["epoch"] == points["cp_end"].round()]
        if points.empty:
            notes.append(_note(f"{mark.detector} ({mark.role}) is not marked: this run records no epoch of it "
                               f"(cp_end_{mark.detector}) for the trials it acted on."))  # fmt: skip
            continue
        fig.add_trace(
            go.Scatter(
                x=points["epoch"],
                y=points["val_acc"],
                text=points["trial_id"],
                mode="markers",
                name=f"{mark.detector} fired ({mark.role})",
                marker={"symbol": "circle", "size": 7, "color": _TRACE_COLORS[(index + 2) % len(_TRACE_COLORS)]},
                hovertemplate=hover,
            )  # fmt: skip
        )
        notes.append(_note(f"Marked: the epoch {mark.detector} fired. {mark.why}"))
    if not marks:
        notes.append(_note("No critical-period detector is marked: no detector acted on these trials (the scheduler "
                           "is not the trajectory one and no trial's mixup_off is auto:<detector>)."))  # fmt: skip
    fig.update_layout(title="Validation accuracy per epoch", xaxis_title="epoch", yaxis_title="val_acc")
    return page.section("curves", "Learning curves", page.figure(fig, 480) + "".join(notes))


def _scheduler(run: Run, page: _Page) -> str:
    title = "Trajectory scheduler"
    decisions = run.decisions
    if decisions is None or decisions.empty:
        return page.section(
            "scheduler", title, _note("This run has no decisions.parquet: not the trajectory scheduler.")
        )
    budgets = run.budgets()
    finished = run.finished().set_index("trial_id")
    parts = [_prediction_scatter(run, page, budgets, finished), _stop_decisions(run, page)]
    rows = []
    for fraction in BACKTEST_FRACTIONS:
        near = decisions_near(decisions, budgets, fraction).join(finished["val_acc"], how="inner")
        row = [f"{fraction:.0%}", len(near), near["epoch"].median()]
        if len(near) < MIN_TRIALS_FOR_BACKTEST:
            row += [_too_few(len(near))] * 2
        else:
            row += [_spearman(near["pred_mean"], near["val_acc"]), (near["pred_mean"] - near["val_acc"]).abs().mean()]
        rows.append(row)
    parts.append(
        "<h3>Back-test on finished trials</h3>"
        + _note(
            "Prediction (pred_mean) from the decision row nearest each budget fraction vs the final val_acc; "
            f"Spearman ρ and the error are given from {MIN_TRIALS_FOR_BACKTEST} finished trials on."
        )
        + _table(["budget fraction", "finished trials", "median epoch used", "Spearman ρ", "mean abs. error"], rows)
    )
    return page.section("scheduler", title, "".join(parts))


def _prediction_scatter(run: Run, page: _Page, budgets: pd.Series, finished: pd.DataFrame) -> str:
    near = decisions_near(run.decisions, budgets, SCATTER_FRACTION).join(finished["val_acc"], how="inner")
    heading = f"<h3>Predicted vs actual final accuracy (prediction at {SCATTER_FRACTION:.0%} of the budget)</h3>"
    if len(near) < MIN_TRIALS_FOR_BACKTEST:
        return heading + _note(f"No calibration plot: {_too_few(len(near))} with a scheduler decision.")
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
    return f"too few finished trials ({count}; at least {MIN_TRIALS_FOR_BACKTEST} needed)"


def _accuracy_error_bars(mean: pd.Series, std: pd.Series) -> dict:
    """Plotly ``error_y`` for mean ± std with both ends clipped to [0, 1]: an accuracy cannot leave that range, so a
    drawn interval must not either (asymmetric bars near the bounds)."""
    std = std.fillna(0)
    high, low = (mean + std).clip(upper=1), (mean - std).clip(lower=0)
    return {"type": "data", "symmetric": False, "array": (high - mean).tolist(), "arrayminus": (mean - low).tolist()}


def _stop_decisions(run: Run, page: _Page) -> str:
    heading = "<h3>Stopped trials: prediction and threshold when stopped</h3>"
    status = run.trials.set_index("trial_id")["status"]
    stopped_ids = status.index[status == "stopped"]
    decisions = run.decisions[run.decisions["trial_id"].isin(stopped_ids)].sort_values(["trial_id", "epoch"])
    stops = decisions[decisions["action"] == "stop"]
    # A stopped trial without a "stop" row (stopped by something else) shows its last decision.
    last = pd.concat([stops, decisions[~decisions["trial_id"].isin(stops["trial_id"])]]).groupby("trial_id").tail(1)
    if last.empty:
        return heading + _note("No trial was stopped.")
    columns = ["trial_id", "epoch", "pred_mean", "pred_std", "threshold", "p_beat", "action", "reason"]
    columns = [c for c in columns if c in last]
    table = _table(columns, last[columns].itertuples(index=False))
    fig = go.Figure(
        [
            go.Scatter(x=last["trial_id"], y=last["pred_mean"], mode="markers", name="predicted final val_acc",
                       error_y=_accuracy_error_bars(last["pred_mean"], last["pred_std"]),
                       marker={"size": 9, "color": "#1f77b4"}),
            go.Scatter(x=last["trial_id"], y=last["threshold"], mode="markers", name="threshold",
                       marker={"symbol": "line-ew-open", "size": 22, "line": {"width": 3}, "color": _BEST_COLOR}),
        ]
    )  # fmt: skip
    fig.update_layout(xaxis={"title": "stopped trial", "type": "category"}, yaxis_title="val_acc")
    return heading + page.figure(fig, 400) + table


def _study(distributions: dict, finished: pd.DataFrame) -> optuna.Study:
    """An in-memory Optuna study of the finished trials, so Optuna's importance evaluators can run on them."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    for _, trial in finished.iterrows():
        params = {}
        for name, dist in distributions.items():
            value = _to_distribution(trial.get(f"config/{name}"), dist)
            if value is None:
                break
            params[name] = value
        else:
            study.add_trial(
                optuna.trial.create_trial(params=params, distributions=distributions, value=float(trial["val_acc"]))
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


def _parameter_effects(run: Run, page: _Page) -> str:
    title = "Parameter effects"
    distributions = {n: d for n, d in searched_params(run.spec).items() if f"config/{n}" in run.trials}
    if not distributions:
        return page.section("params", title, _note("The spec searches no parameter, so there are no effects to show."))
    finished = run.finished()
    parts = ["<h3>Importances (Optuna)</h3>", _importances(page, distributions, finished)]
    if len(finished) < 2:
        parts.append(_note("Fewer than two finished trials: no parallel coordinates or slices."))
        return page.section("params", title, "".join(parts))
    dims = []
    for name, dist in distributions.items():
        values = finished[f"config/{name}"]
        if isinstance(dist, optuna.distributions.CategoricalDistribution):
            labels = sorted({setting_label(v) for v in values}, key=_numeric_sort_key)
            codes = values.map(setting_label).map({label: i for i, label in enumerate(labels)})
            dims.append({"label": name, "values": codes.tolist(), "tickvals": list(range(len(labels))),
                         "ticktext": labels})  # fmt: skip
        elif getattr(dist, "log", False):
            dims.append({"label": f"log10 {name}", "values": np.log10(values.astype(float)).tolist()})
        else:
            dims.append({"label": name, "values": values.astype(float).tolist()})
    dims.append({"label": "val_acc", "values": finished["val_acc"].tolist()})
    parcoords = go.Figure(
        go.Parcoords(
            line={"color": finished["val_acc"].tolist(), "colorscale": "Viridis", "showscale": True}, dimensions=dims
        )  # fmt: skip
    )
    parts += [
        "<h3>Parallel coordinates (finished trials)</h3>",
        page.figure(parcoords, 440, {"l": 80, "r": 60, "t": 70, "b": 30}),
        "<h3>Slices</h3>",
    ]
    parts.append(page.figure(*_slices(finished, distributions)))
    return page.section("params", title, "".join(parts))


def _importances(page: _Page, distributions: dict, finished: pd.DataFrame) -> str:
    study = _study(distributions, finished)
    if len(study.trials) < MIN_TRIALS_FOR_IMPORTANCE:
        return _note(
            f"Importances need at least {MIN_TRIALS_FOR_IMPORTANCE} finished trials with in-range parameters; "
            f"this run has {len(study.trials)}."
        )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            importances = optuna.importance.get_param_importances(study)
        except Exception as error:  # Optuna raises several types for degenerate studies; the page must still render.
            return _note(f"Optuna could not compute importances: {error}")
    # PED-ANOVA warns and returns equal importances when the trials are too few to tell parameters apart.
    degenerate = [w for w in caught if "too small" in str(w.message)]
    if degenerate:
        return _note(f"Optuna could not compute meaningful importances: {degenerate[0].message}")
    names = list(importances)[::-1]
    fig = go.Figure(go.Bar(x=[importances[n] for n in names], y=names, orientation="h", marker_color="#1f77b4"))
    fig.update_layout(title="Parameter importance for final val_acc (finished trials)", xaxis_title="importance")
    return page.figure(fig, max(240, 60 + 40 * len(names)))


def _slices(finished: pd.DataFrame, distributions: dict) -> tuple[go.Figure, int]:
    names = list(distributions)
    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=names, shared_yaxes=True)
    for index, name in enumerate(names):
        row, col = index // cols + 1, index % cols + 1
        dist = distributions[name]
        values = finished[f"config/{name}"]
        categorical = isinstance(dist, optuna.distributions.CategoricalDistribution)
        x = values.map(setting_label) if categorical else values.astype(float)
        fig.add_trace(
            go.Scatter(x=x.tolist(), y=finished["val_acc"].tolist(), mode="markers", showlegend=False,
                       text=finished["trial_id"].tolist(), marker={"color": "#1f77b4", "size": 8, "opacity": 0.7},
                       hovertemplate=f"trial %{{text}}<br>{_esc(name)} %{{x}}<br>val_acc %{{y:.4f}}<extra></extra>"),
            row=row, col=col,
        )  # fmt: skip
        if categorical:
            order = sorted(set(x), key=_numeric_sort_key)
            fig.update_xaxes(type="category", categoryorder="array", categoryarray=order, row=row, col=col)
        elif getattr(dist, "log", False):
            fig.update_xaxes(type="log", row=row, col=col)
    fig.update_yaxes(title_text="final val_acc", col=1)
    return fig, 320 * rows


def _effect_section(
    run: Run,
    page: _Page,
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
        return page.section(anchor, title, _note(f"{who} do not vary {key}: nothing to compare."))
    effects = group_ci(finished, column, "val_acc", baseline=baseline)
    rows = [
        (r.setting, r.n, r.mean, r.ci_low, r.ci_high, r.diff, r.diff_low, r.diff_high, r.verdict)
        for r in effects.itertuples()
    ]
    header = [key, "n", "mean val_acc", "95 % CI low", "95 % CI high", f"diff to {baseline}", "diff CI low",
              "diff CI high", "verdict"]  # fmt: skip
    parts = [
        _note(
            f"{who} grouped by {key} (pooled over the other parameters); 95 % t-intervals over seeds; the "
            f"difference to {key} = {baseline} uses Welch's interval and is 'not significant' wherever that "
            "interval contains zero."
        ),
        _table(header, rows),
    ]
    panels = [("val_acc", effects)]
    for name in extra:
        values = run.per_trial(name)
        if values.notna().any():
            frame = finished[[column]].assign(**{name: values.reindex(finished["trial_id"]).to_numpy()})
            extra_effects = group_ci(frame, column, name)
            panels.append((name, extra_effects))
            parts.append(
                _table(
                    [key, "n", f"mean {name}", "95 % CI low", "95 % CI high"],
                    [(r.setting, r.n, r.mean, r.ci_low, r.ci_high) for r in extra_effects.itertuples()],
                )
            )
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=[f"{name} by {key}" for name, _ in panels])
    for col, (name, frame) in enumerate(panels, start=1):
        half = (frame["ci_high"] - frame["mean"]).fillna(0)
        fig.add_trace(
            go.Scatter(x=frame["setting"], y=frame["mean"], mode="markers", name=name, showlegend=False,
                       error_y={"type": "data", "array": half.tolist(), "visible": True},
                       marker={"size": 11, "color": _TRACE_COLORS[col - 1]}),
            row=1, col=col,
        )  # fmt: skip
        fig.update_xaxes(type="category", title_text=key, row=1, col=col)
        if baseline in set(frame["setting"]):
            level = float(frame.loc[frame["setting"] == baseline, "mean"].iloc[0])
            fig.add_hline(y=level, line={"dash": "dot", "color": "#888"}, row=1, col=col)
        fig.update_yaxes(title_text=f"mean {name} (95 % CI)", row=1, col=col)
    parts.insert(1, page.figure(fig, 380))
    return page.section(anchor, title, "".join(parts))


def _mixup_section(run: Run, page: _Page) -> str:
    """The window only matters for trials that use Mixup, so trials with mixup_alpha = 0 are left out."""
    scope = None
    if "config/mixup_alpha" in run.trials:
        alpha = pd.to_numeric(run.trials["config/mixup_alpha"], errors="coerce").fillna(0)
        scope = ("Finished trials with Mixup on (mixup_alpha > 0)", alpha > 0)
    return _effect_section(run, page, "mixup", "Mixup-off window", "mixup_off", baseline="0", scope=scope)


def _statistics(run: Run, page: _Page) -> str:
    title = "Trajectory statistics"
    columns = [c for c in STATISTIC_COLUMNS if c in run.trajectories and run.trajectories[c].notna().any()]
    if not columns:
        return page.section("statistics", title, _note("This run recorded no trajectory statistics."))
    chosen: list[tuple[str, str]] = []
    best = run.best_trial()
    if best is not None:
        chosen.append((best["trial_id"], "best"))
    stopped = run.trials[run.trials["status"] == "stopped"].sort_values("epochs", ascending=False)
    chosen += [(trial_id, "stopped") for trial_id in stopped["trial_id"].head(3)]
    if not chosen:
        return page.section("statistics", title, _note("No finished or stopped trial to show statistics for."))
    cols = min(3, len(columns))
    rows = math.ceil(len(columns) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=columns, horizontal_spacing=0.07)
    for index, (trial_id, role) in enumerate(chosen):
        curve = run.trajectories[run.trajectories["trial_id"] == trial_id].sort_values("epoch")
        color = _TRACE_COLORS[index % len(_TRACE_COLORS)]
        for position, column in enumerate(columns):
            fig.add_trace(
                go.Scatter(x=curve["epoch"].tolist(), y=curve[column].tolist(), mode="lines",
                           name=f"{trial_id} ({role})", legendgroup=trial_id, showlegend=position == 0,
                           line={"color": color, "width": 2.5 if role == "best" else 1.5}),
                row=position // cols + 1, col=position % cols + 1,
            )  # fmt: skip
    fig.update_xaxes(title_text="epoch", row=rows)
    body = _note("The best trial and up to three stopped trials (those that trained longest).")
    return page.section("statistics", title, body + page.figure(fig, 60 + 280 * rows))


def _trials_table(run: Run, page: _Page) -> str:
    params = key_params(run)
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
    body = _note("Click a column header to sort.") + _table(header, rows, "sortable")
    return page.section("trials", "Trials", body)


def _spec(run: Run, page: _Page) -> str:
    if run.spec_text is None:
        return page.section("spec", "Spec", _note("The run directory has no spec.yaml."))
    return page.section("spec", "Spec", f"<pre>{_esc(run.spec_text)}</pre>")


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 0 auto; max-width: 1300px;
       padding: 0 24px 48px; color: #222; line-height: 1.45; }
header { border-bottom: 2px solid #ddd; margin-bottom: 8px; }
nav a { margin-right: 14px; font-size: 0.92em; }
section { margin-top: 28px; }
h2 { border-bottom: 1px solid #e5e5e5; padding-bottom: 4px; }
.note { color: #555; font-style: italic; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f4f6f8; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th:hover { background: #e6ebf0; }
tbody tr:nth-child(even) { background: #fafafa; }
pre { background: #f6f8fa; padding: 12px; overflow-x: auto; border: 1px solid #e1e4e8; }
.clp-figure { margin: 8px 0 16px; }
"""

_SORT_JS = """
document.querySelectorAll("table.sortable th").forEach(function (th) {
  th.addEventListener("click", function () {
    var body = th.closest("table").tBodies[0], col = th.cellIndex, asc = th.dataset.order !== "asc";
    th.dataset.order = asc ? "asc" : "desc";
    var key = function (tr) { return tr.cells[col].dataset.value; };
    Array.from(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      if (x === "" || y === "") { return (x === "") - (y === ""); }
      var nx = Number(x), ny = Number(y);
      var c = (isNaN(nx) || isNaN(ny)) ? x.localeCompare(y) : nx - ny;
      return asc ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"""

_SECTIONS: tuple[Callable[[Run, _Page], str], ...] = (
    _summary,
    _learning_curves,
    _scheduler,
    _parameter_effects,
    _mixup_section,
    lambda run, page: _effect_section(
        run, page, "pretrain", "Pretraining", "pretrain", baseline="none", extra=("pretrain_recon_error",)
    ),
    _statistics,
    _trials_table,
    _spec,
)


def render_report(run: Run) -> str:
    """The whole page as a string: plotly.js once in <head>, then one <section> per part of the report."""
    page = _Page()
    sections = "\n".join(section(run, page) for section in _SECTIONS)
    nav = " ".join(f'<a href="#{anchor}">{_esc(title)}</a>' for anchor, title in page.nav)
    title = f"clp_tune report — {run.name}"
    description = run.spec.get("description")
    about = f"<p>{_esc(description)}</p>" if description else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{_esc(title)}</title>\n<style>{_CSS}</style>\n"
        f'<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>\n</head>\n'
        f'<body data-figure-count="{page.figure_count}">\n'
        f"<header><h1>{_esc(title)}</h1>{about}<p>Run directory: <code>{_esc(run.directory)}</code></p>"
        f"<nav>{nav}</nav></header>\n{sections}\n<script>{_SORT_JS}</script>\n</body>\n</html>\n"
    )


def write_report(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write ``<out_dir>/index.html`` for the run in ``run_dir`` and return its path."""
    page = render_report(load_run(run_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
