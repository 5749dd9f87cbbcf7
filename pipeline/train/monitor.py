"""Watching a training run: progress lines, a Prefect progress artifact, TensorBoard events and `curves.png`.

Progress: every `train.log_every` episodes one line (episode, loss, train accuracy, validation
accuracy, episodes/s, ETA) goes to the `fsar` logger (`pipeline.logs`: the terminal, or the Prefect run
logger inside a flow run). Prefect is never imported here unless the process already imported it (a
plain `fsar train` stays Prefect-free). Under Prefect a progress artifact
(`train-<dataset>-progress`) follows the run. Speed comes from `time.perf_counter` and is only logged.

TensorBoard: `events.out.tfevents.fsar` at the top of the train artifact, written by `write_events`
from the metrics and validation tables with tensorboard's record writer and event protos (not a
`SummaryWriter`, whose file name holds the host and clock). Each event's wall_time is its episode
number (seconds after the epoch), so the same run gives the same bytes anywhere; TensorBoard's
"relative" axis then reads as episodes. During a run new events are appended at every progress line
in the staging folder (the file is rewritten whole at the end), so `tensorboard --logdir ROOT/.staging/train` follows a live run and
`tensorboard --logdir ROOT/train` every finished one.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.atomic import atomic_path
from pipeline.logs import artifact_key, in_prefect_run

__all__ = ["CURVES_FILE", "EVENTS_FILE", "TrainMonitor", "smooth", "write_curves", "write_events"]

EVENTS_FILE = "events.out.tfevents.fsar"
CURVES_FILE = "curves.png"
log = logging.getLogger("fsar")

# metrics.parquet column -> TensorBoard tag
TRAIN_TAGS = {"loss": "train/loss", "accuracy": "train/accuracy", "lr": "train/lr"}
VAL_TAG = "validation/accuracy"


# ------------------------------------------------------------------ TensorBoard
def _event_bytes(wall_time: float, step: int | None = None, tag: str | None = None, value: float | None = None, version: bool = False) -> bytes:
    from tensorboard.compat.proto import event_pb2, summary_pb2

    if version:
        return event_pb2.Event(wall_time=wall_time, file_version="brain.Event:2").SerializeToString()
    summary = summary_pb2.Summary(value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
    return event_pb2.Event(wall_time=wall_time, step=int(step), summary=summary).SerializeToString()


def write_events(path: Path, metrics: pd.DataFrame, validation: pd.DataFrame) -> Path:
    """TensorBoard scalars of a run: train loss/accuracy/lr per step and validation accuracy, x = episode.

    Deterministic: fixed file name, events in table order, wall_time = episode (not the clock).
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        _append_events(tmp, metrics.to_dict("records"), validation.to_dict("records"), fresh=True)
    return path


def _append_events(path: Path, metrics: Sequence[dict[str, Any]], validation: Sequence[dict[str, Any]], fresh: bool = False) -> None:
    """Append the events of metrics rows, then of validation rows (`fresh`: a new file starting with its version event)."""
    from tensorboard.summary.writer.record_writer import RecordWriter

    with open(path, "wb" if fresh else "ab") as fh:
        writer = RecordWriter(fh)
        if fresh:
            writer.write(_event_bytes(0.0, version=True))
        for row in metrics:
            for column, tag in TRAIN_TAGS.items():
                if row.get(column) is not None:
                    writer.write(_event_bytes(float(row["episode"]), row["episode"], tag, row[column]))
        for row in validation:
            writer.write(_event_bytes(float(row["episode"]), row["episode"], VAL_TAG, row["accuracy"]))


# ------------------------------------------------------------------ curves.png
def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over at most `window` values (the first points average what exists)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return arr
    c = np.cumsum(np.insert(arr, 0, 0.0))
    idx = np.arange(1, arr.size + 1)
    lo = np.maximum(idx - window, 0)
    return (c[idx] - c[lo]) / (idx - lo)


def write_curves(
    path: Path, metrics: pd.DataFrame, validation: pd.DataFrame, kept: dict[str, Any] | None, title: str, chance: float | None = None
) -> Path:
    """curves.png: loss and accuracy per episode (raw, smoothed), validation points, the kept checkpoint marked, chance (0-1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = metrics["episode"].to_numpy() if len(metrics) else np.zeros(0)
    window = max(1, min(50, len(metrics) // 10 or 1))
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    ax_loss.plot(x, metrics["loss"] if len(metrics) else [], color="#9db8d6" if window > 1 else "#1f4e79", lw=0.8 if window > 1 else 1.8, label="per step")
    if window > 1:
        ax_loss.plot(x, smooth(metrics["loss"], window) if len(metrics) else [], color="#1f4e79", lw=1.8, label=f"mean of {window} steps")
    ax_loss.set(xlabel="training episode", ylabel="loss", title="training loss")
    ax_acc.plot(x, 100 * smooth(metrics["accuracy"], window) if len(metrics) else [], color="#1f4e79", lw=1.8, label=f"train (mean of {window} steps)" if window > 1 else "train (per step)")
    if len(validation):
        ax_acc.plot(validation["episode"], 100 * validation["accuracy"], "o-", color="#c0504d", ms=5, label="validation")
    if kept and kept.get("episode") is not None:
        ax_loss.axvline(kept["episode"], color="#2e7d32", ls="--", lw=1.2, label="kept checkpoint")
        ax_acc.axvline(kept["episode"], color="#2e7d32", ls="--", lw=1.2)
        if kept.get("accuracy") is not None:
            ax_acc.plot([kept["episode"]], [100 * kept["accuracy"]], marker="*", ms=14, color="#2e7d32", ls="none",
                        label=f"kept checkpoint ({100 * kept['accuracy']:.1f}%)")
        else:
            ax_acc.plot([], [], color="#2e7d32", ls="--", label="kept checkpoint (last, not validated)")
    if chance is not None:
        ax_acc.axhline(100 * chance, color="#888888", ls=":", lw=1.2, label=f"chance ({100 * chance:.0f}%)")
    ax_acc.set(xlabel="training episode", ylabel="accuracy (%)", title="accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="best", markerscale=0.7)
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


# ------------------------------------------------------------------ progress
def _eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    return str(_dt.timedelta(seconds=int(round(seconds))))


class TrainMonitor:
    """Progress of one training run (rank 0 only): log lines, a Prefect progress artifact, live TensorBoard."""

    def __init__(self, out: Path, dataset: str, total_episodes: int, log_every: int, title: str = "", chance: float | None = None):
        self.out, self.dataset, self.total, self.log_every, self.chance = Path(out), dataset, total_episodes, log_every, chance
        self.title = title or f"train: {dataset}"
        self.prefect = in_prefect_run()
        self._t0 = time.perf_counter()
        self._start_episode: int | None = None
        self._progress_id: Any = None
        self._written = (0, 0)  # metrics and validation rows already in the live event file

    # ----------------------------------------------------------- output
    def emit(self, line: str) -> None:
        """One progress line on the `fsar` logger (the entry point's handler prints it, or sends it to the Prefect run)."""
        log.info(line)

    def _progress_artifact(self, percent: float) -> None:
        if not self.prefect:
            return
        try:
            from prefect.artifacts import create_progress_artifact, update_progress_artifact

            description = f"training {self.dataset}: {percent:.0f}% of {self.total} episodes"
            if self._progress_id is None:
                self._progress_id = create_progress_artifact(percent, key=artifact_key("train", self.dataset, "progress"), description=description)
            else:
                update_progress_artifact(self._progress_id, percent, description=description)
        except Exception as exc:  # noqa: BLE001 - a UI nicety must never stop training
            log.warning("train: progress artifact not updated (%s)", exc)

    # ----------------------------------------------------------- hooks
    def start(self, episodes_done: int) -> None:
        """Called once before the first step (after a resume: with the episodes already done)."""
        self._start_episode, self._t0 = episodes_done, time.perf_counter()
        self._progress_artifact(100.0 * episodes_done / max(self.total, 1))

    def due(self, before: int, after: int) -> bool:
        """A progress line is due when the run crosses a multiple of log_every episodes, or ends."""
        return after // self.log_every > before // self.log_every or after >= self.total

    def update(self, before: int, after: int, metrics: list[dict[str, Any]], validation: list[dict[str, Any]]) -> None:
        """After each step: a progress line (and live TensorBoard file) every log_every episodes."""
        if not self.due(before, after):
            return
        recent = [m for m in metrics[-self.log_every :] if m["episode"] > after - self.log_every] or metrics[-1:]
        loss = float(np.mean([m["loss"] for m in recent]))
        acc = float(np.mean([m["accuracy"] for m in recent]))
        rate = (after - (self._start_episode or 0)) / max(time.perf_counter() - self._t0, 1e-9)
        eta = (self.total - after) / rate if rate > 0 else float("inf")
        val = ""
        if validation:
            best = max(v["accuracy"] for v in validation)
            val = f" | val acc {validation[-1]['accuracy']:.3f} (best {best:.3f})"
        pct = 100.0 * after / max(self.total, 1)
        self.emit(
            f"train {self.dataset}: episode {after}/{self.total} ({pct:.0f}%) | loss {loss:.4f} | train acc {acc:.3f}"
            f"{val} | {rate:.2f} episodes/s | ETA {_eta(eta)}"
        )
        self._progress_artifact(pct)
        self.write_events(metrics, validation)

    def write_events(self, metrics: list[dict[str, Any]], validation: list[dict[str, Any]]) -> Path:
        """Append the rows not yet in the live event file (the first call after start writes it afresh)."""
        path = self.out / EVENTS_FILE
        m, v = self._written
        fresh = m == 0 and v == 0
        _append_events(path, metrics[m:], validation[v:], fresh=fresh)
        self._written = (len(metrics), len(validation))
        return path

    def finish(self, metrics: pd.DataFrame, validation: pd.DataFrame, kept: dict[str, Any] | None) -> list[str]:
        """Final TensorBoard file and curves.png in the artifact folder; returns their names."""
        write_events(self.out / EVENTS_FILE, metrics, validation)
        write_curves(self.out / CURVES_FILE, metrics, validation, kept, self.title, self.chance)
        self._progress_artifact(100.0)
        return [EVENTS_FILE, CURVES_FILE]
