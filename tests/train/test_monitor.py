"""Training you can watch: progress lines, TensorBoard events (read back with tensorboard), curves.png."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from pipeline.artifacts import ArtifactStore
from pipeline.train import monitor
from pipeline.train import stage as train


@pytest.fixture(scope="module")
def watched(tiny, tmp_path_factory):
    """Two identical 6-episode runs in two roots, validated every 3 episodes, a progress line every 2."""
    cfg, _, refs = tiny
    cfg = cfg.override("train.episodes_per_epoch=6", "train.val_every=3", "train.log_every=2")
    refs_out = []
    for name in ("a", "b"):
        store = ArtifactStore(tmp_path_factory.mktemp(f"watched-{name}"))
        refs_out.append((store, train.run(cfg, refs, store)))
    return cfg, refs_out


def test_tensorboard_events_hold_the_loss_and_validation_scalars(watched):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, [(store, ref), _] = watched
    folder = store.local_path(ref)
    assert (folder / monitor.EVENTS_FILE).is_file() and (folder / monitor.CURVES_FILE).is_file()
    acc = EventAccumulator(str(folder / monitor.EVENTS_FILE))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"train/loss", "train/accuracy", "train/lr", "validation/accuracy"} <= set(tags)
    metrics = store.load("train", ref.dataset, ref.version)
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == metrics["episode"].tolist() == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([e.value for e in loss], metrics["loss"], rtol=1e-6)
    assert [e.wall_time for e in loss] == [float(s) for s in metrics["episode"]]  # derived from the step, not the clock
    val = store.load("train", ref.dataset, ref.version, table="validation.parquet")
    assert [e.step for e in acc.Scalars("validation/accuracy")] == val["episode"].tolist() == [3, 6]
    assert store.manifest(ref)["files"][monitor.EVENTS_FILE]  # checksummed like every data file


def test_identical_runs_give_identical_event_files_and_curves(watched):
    _, [(s1, r1), (s2, r2)] = watched
    assert r1.version == r2.version
    for name in (monitor.EVENTS_FILE, monitor.CURVES_FILE):
        assert (s1.local_path(r1) / name).read_bytes() == (s2.local_path(r2) / name).read_bytes(), name


def test_progress_lines_go_to_the_terminal_outside_prefect(tmp_path, capsys, fsar_lines):
    mon = monitor.TrainMonitor(tmp_path, "synthetic", total_episodes=6, log_every=2)
    assert not mon.prefect
    mon.start(0)
    rows = [{"step": i, "episode": i, "loss": 1.0 / i, "accuracy": 0.5, "lr": 1e-3} for i in range(1, 7)]
    val = [{"step": 3, "epoch": 0, "episode": 3, "accuracy": 0.6, "best": True}]
    for i in range(6):
        mon.update(i, i + 1, rows[: i + 1], val if i >= 2 else [])
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[fsar] train")]
    assert len(lines) == 3  # episodes 2, 4, 6
    assert "episode 4/6" in lines[1] and "val acc 0.600" in lines[1] and "episodes/s" in lines[1] and "ETA" in lines[1]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    live = EventAccumulator(str(tmp_path / monitor.EVENTS_FILE))  # the live file follows the run, appended per line
    live.Reload()
    assert [e.step for e in live.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in live.Scalars("validation/accuracy")] == [3]


def test_curves_render_without_warnings_with_and_without_validation(tmp_path):
    metrics = pd.DataFrame({"step": range(1, 201), "episode": range(1, 201), "loss": np.linspace(2, 0.5, 200), "accuracy": np.linspace(0.2, 0.9, 200)})
    val = pd.DataFrame({"step": [100, 200], "epoch": [0, 1], "episode": [100, 200], "accuracy": [0.6, 0.55], "best": [True, False]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        monitor.write_curves(tmp_path / "a.png", metrics, val, {"episode": 100, "accuracy": 0.6}, "train: synthetic")
        monitor.write_curves(tmp_path / "b.png", metrics.head(2), val.iloc[:0], {"episode": 2, "accuracy": None}, "train: synthetic")
    assert (tmp_path / "a.png").stat().st_size > 0 and (tmp_path / "b.png").stat().st_size > 0


def test_artifact_keys_are_lowercase_letters_digits_dashes():
    assert monitor.artifact_key("train", "SSv2_Small", "progress") == "train-ssv2-small-progress"
