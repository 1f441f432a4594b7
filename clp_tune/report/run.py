"""A run directory's files, read once into :class:`Run`, and the facts about the run that several sections share.

The file names are the run directory's contract (``clp_tune.vocabulary``); the spec is validated with the project's
own parser (:func:`clp_tune.spec.parse_spec`), so the report reads a spec exactly as the search did. A spec that no
longer validates (one written by an older clp_tune) leaves ``spec`` None and says why in ``spec_error``: the report
still renders, with its text.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from clp_tune.spec import Spec, SpecError, parse_spec
from clp_tune.stopping.persistence import read_decisions
from clp_tune.stopping.user_banks import kept_banks
from clp_tune.vocabulary import DECISIONS_FILE, SPEC_FILE, TRAJECTORIES_FILE, TRAJECTORY_OPTIONS, TRIALS_FILE


@dataclass(frozen=True)
class DetectorMark:
    """A critical-period detector the report marks: its name, its role (for the legend), why it is marked (sentences
    for the page), and the epoch it fired per trial (``trial_id`` index: the trials it acted on; NaN: never fired)."""

    detector: str
    role: str
    why: str
    epochs: pd.Series


@dataclass(frozen=True)
class Run:
    """The run directory's files, loaded once.

    ``spec`` is None when the directory has no spec file or its spec does not validate (``spec_error`` says why,
    ``spec_text`` keeps the text); ``decisions`` is None for schedulers other than the trajectory one;
    ``prior_banks`` lists the banks of the user's library its prior fitted on (None: not recorded).
    """

    directory: Path
    spec: Spec | None
    spec_text: str | None
    spec_error: str | None
    trajectories: pd.DataFrame
    trials: pd.DataFrame
    decisions: pd.DataFrame | None
    prior_banks: list[str] | None = None

    @property
    def name(self) -> str:
        """The spec's name for the page title; the directory's name when there is no valid spec."""
        return self.spec.name if self.spec is not None else self.directory.name

    @property
    def description(self) -> str:
        """The spec's description for the page header ("" without a valid spec)."""
        return self.spec.description if self.spec is not None else ""

    def finished(self) -> pd.DataFrame:
        """Finished trials with a final validation accuracy: the only fair basis for comparing configurations."""
        return self.trials[(self.trials["status"] == "finished") & self.trials["val_acc"].notna()]

    def best_trial(self) -> pd.Series | None:
        """The finished trial with the highest final val_acc; None when no trial finished."""
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
        """One value per trial: from the trials table when it has the column, else the last non-null epoch value."""
        if column in self.trials:
            return self.trials.set_index("trial_id")[column]
        if column in self.trajectories:
            rows = self.trajectories.dropna(subset=[column]).sort_values("epoch")
            return rows.groupby("trial_id")[column].last().reindex(self.trials["trial_id"])
        return pd.Series(np.nan, index=self.trials["trial_id"], name=column)

    def key_params(self) -> list[str]:
        """Config keys worth showing next to a trial: the searched ones, else those that vary across trials."""
        searched = self.spec.searched() if self.spec is not None else {}
        shown = [name for name in searched if f"config/{name}" in self.trials]
        if shown:
            return shown
        config = [c for c in self.trials.columns if c.startswith("config/")]
        return [c.removeprefix("config/") for c in config if self.trials[c].astype(str).nunique() > 1]

    def detector_marks(self) -> list[DetectorMark]:
        """The critical-period detectors that acted on this run's trials, each with the trials it acted on.

        A trajectory scheduler held every trial back until its detector fired (the spec's ``scheduler.detector``,
        else the scheduler's own default); under another scheduler a trial whose ``mixup_off`` is
        ``auto:<detector>`` trained without Mixup until that detector fired. Any other detector's epoch shaped
        nothing in the run, so marking it would suggest an effect that was not there: none else is marked.
        """
        if self.spec is not None and self.spec.scheduler.type == "trajectory":
            detector, source = self.spec.scheduler.detector, "set by the spec's scheduler.detector"
            if detector is None:
                detector = TRAJECTORY_OPTIONS["detector"].default
                source = "its default: the spec sets no scheduler.detector"
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


def load_run(run_dir: str | Path) -> Run:
    """Read a run directory; the trials and trajectories tables are required, the rest is optional."""
    directory = Path(run_dir)
    for required in (TRIALS_FILE, TRAJECTORIES_FILE):
        if not (directory / required).is_file():
            raise FileNotFoundError(f"{directory / required} is missing: not a clp_tune run directory")
    spec_path = directory / SPEC_FILE
    spec_text = spec_path.read_text(encoding="utf-8") if spec_path.is_file() else None
    spec, spec_error = _parse_spec(spec_text)
    decisions_path = directory / DECISIONS_FILE
    decisions = _read_table(decisions_path) if decisions_path.exists() else None
    trials = _read_table(directory / TRIALS_FILE)
    trajectories = _read_table(directory / TRAJECTORIES_FILE)
    return Run(directory, spec, spec_text, spec_error, trajectories, trials, decisions, kept_banks(directory))


def _parse_spec(text: str | None) -> tuple[Spec | None, str | None]:
    """The validated spec, or None and why not (None, None: the run directory has no spec)."""
    if text is None:
        return None, None
    try:
        return parse_spec(yaml.safe_load(text), SPEC_FILE), None
    except yaml.YAMLError as error:
        return None, f"{SPEC_FILE}: not valid YAML ({str(error).splitlines()[0]})"
    except SpecError as error:
        return None, str(error)


def _read_table(path: Path) -> pd.DataFrame:
    """A Parquet table with a fresh index (a written pandas index would otherwise come back) and string ids."""
    frame = (read_decisions(path) if path.name == DECISIONS_FILE else pd.read_parquet(path)).reset_index(drop=True)
    frame["trial_id"] = frame["trial_id"].astype(str)
    return frame
