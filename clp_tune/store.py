"""The run's Parquet files, built from what Ray Tune already persisted.

Ray writes every reported row to each trial's ``result.json`` as it arrives, so that file is the crash-safe
log; this module turns a run directory into two tables that one line of pandas reads:

* ``trajectories.parquet`` — one row per (trial, epoch): every metric and ``config/<knob>`` column;
* ``trials.parquet`` — one row per trial: its outcome (finished / stopped / diverged / error / unfinished),
  the error's reason, epochs trained, final and best validation accuracy, test accuracy, detector epochs.

An outcome is taken from where it was decided: Ray's for an error, the trajectory scheduler's (its persisted
state, :func:`clp_tune.stopping.persistence.stopped_outcomes`) for a trial it stopped — stopped or diverged, by its own
rule, which this module does not repeat — and the trainable's ``diverged`` flag for a trial that ended itself.

After ``Tuner.restore`` a resumed trial re-reports epochs after its checkpoint; duplicates keep the last row.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from clp_tune.vocabulary import TRAJECTORIES_FILE, TRIALS_FILE

# Ray's per-row bookkeeping that says nothing about training.
_RAY_COLUMNS = (
    "done", "date", "pid", "hostname", "node_ip", "time_since_restore", "iterations_since_restore",
    "checkpoint_dir_name", "time_this_iter_s", "timestamp", "should_checkpoint", "experiment_tag",
)  # fmt: skip


def atomic_replace(path: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary path)``, then rename it over ``path``: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    write(tmp)
    os.replace(tmp, path)


def write_table(frame: pd.DataFrame, path: Path, compression: str = "snappy") -> None:
    """Write ``frame`` as Parquet atomically (:func:`atomic_replace`), so readers never see half a file.

    ``compression="zstd"`` is for files shipped with the package (smaller, slower to write)."""
    frame = frame.copy()
    for column in frame.columns:
        if frame[column].dtype == object or str(frame[column].dtype).startswith("str"):
            frame[column] = frame[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    level = 19 if compression == "zstd" else None
    table = pa.Table.from_pandas(frame, preserve_index=False)
    atomic_replace(path, lambda tmp: pq.write_table(table, tmp, compression=compression, compression_level=level))


def _error_reason(trial) -> str | None:
    """The exception line of an errored trial's traceback (Ray keeps the whole traceback in error.txt)."""
    name = trial.run_metadata.error_filename
    if not name:
        return None
    try:
        with trial.storage.storage_filesystem.open_input_stream(f"{trial.storage.trial_fs_path}/{name}") as f:
            text = f.readall().decode("utf-8", errors="replace")
    except OSError:
        return "error (traceback not readable)"
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "error"


def _outcome(ray_status: str, rows: pd.DataFrame, budget: int, scheduler_outcome: str | None) -> str:
    """The trial's outcome; ``scheduler_outcome`` is the trajectory scheduler's judgement of a trial it stopped."""
    if ray_status == "ERROR":
        return "error"
    if scheduler_outcome is not None:
        return scheduler_outcome
    if rows.empty:
        return "unfinished"
    last = rows.iloc[-1]
    if last.get("diverged", 0) == 1:
        return "diverged"
    if last["epoch"] >= budget:
        return "finished"
    return "stopped" if ray_status == "TERMINATED" else "unfinished"


def collect(run_dir: str | Path, state_dir: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read a Ray Tune run directory into (trajectories, trials) frames.

    ``state_dir`` holds the trajectory scheduler's state (default: ``run_dir``; the driver's local copy of the run
    when the experiment lives at a URI); without one, no trial counts as stopped by that scheduler.
    """
    from ray.tune import ExperimentAnalysis

    from clp_tune.stopping.persistence import stopped_outcomes

    analysis = ExperimentAnalysis(str(run_dir))
    scheduler_outcomes = stopped_outcomes(state_dir or run_dir)
    frames, trials = [], []
    for trial in analysis.trials:
        rows = analysis.trial_dataframes.get(trial.trial_id, pd.DataFrame())
        if not rows.empty and "epoch" in rows:
            rows = rows.drop(columns=[c for c in _RAY_COLUMNS if c in rows]).dropna(subset=["epoch"])
            rows = rows.drop_duplicates(subset="epoch", keep="last").sort_values("epoch")
            rows["trial_id"] = trial.trial_id
            rows["epoch"] = rows["epoch"].astype(int)
            frames.append(rows)
        else:
            rows = pd.DataFrame()
        config = {f"config/{k}": v for k, v in trial.config.items()}
        budget = int(trial.config.get("epochs", 0))
        last = rows.iloc[-1] if not rows.empty else pd.Series(dtype=object)
        status = _outcome(trial.status, rows, budget, scheduler_outcomes.get(trial.trial_id))
        summary = {
            "trial_id": trial.trial_id,
            "status": status,
            "error": _error_reason(trial) if status == "error" else None,
            "epochs": int(last.get("epoch", 0)) if not rows.empty else 0,
            "val_acc": float(last.get("val_acc", float("nan"))),
            "best_val_acc": float(rows["val_acc"].max()) if "val_acc" in rows else float("nan"),
            "test_acc": float(last.get("test_acc", float("nan"))) if status == "finished" else float("nan"),
            "time_total_s": float(last.get("time_total_s", float("nan"))),
        }
        summary.update({c: last[c] for c in rows.columns if c.startswith(("cp_end_", "pretrain_"))})
        trials.append({**summary, **config})
    trajectories = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["trial_id", "epoch"])
    leading = ["trial_id", "epoch"]
    trajectories = trajectories[leading + [c for c in trajectories.columns if c not in leading]]
    return trajectories, pd.DataFrame(trials)


def write_store(experiment: str | Path, out_dir: str | Path | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build ``trajectories.parquet`` and ``trials.parquet`` from Ray's experiment (a path or URI).

    They are written into ``out_dir``, by default the experiment directory itself.
    """
    out_dir = Path(out_dir or experiment)
    trajectories, trials = collect(experiment, out_dir)
    write_table(trajectories, out_dir / TRAJECTORIES_FILE)
    write_table(trials, out_dir / TRIALS_FILE)
    return trajectories, trials
