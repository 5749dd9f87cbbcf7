"""Stage windows over the T-1 frame transitions and the task masks."""

from __future__ import annotations

import pytest
import torch

from pipeline.model.alignment import stage_windows, task_mask, window_weights


def _one_based(windows: list[range]) -> list[list[int]]:
    return [[t + 1 for t in w] for w in windows]


def test_released_windows_t8_s3() -> None:
    assert _one_based(stage_windows(8, 3)) == [[1, 2, 3], [3, 4, 5], [5, 6, 7]]


@pytest.mark.parametrize("frames", range(2, 17))
def test_windows_cover_every_transition_in_order(frames: int) -> None:
    for stages in range(1, frames):
        windows = stage_windows(frames, stages)
        assert len(windows) == stages
        starts = [w.start for w in windows]
        assert starts[0] == 0 and windows[-1].stop == frames - 1
        assert starts == sorted(starts)
        assert len({len(w) for w in windows}) == 1  # one width w = ceil((T-1)/S)
        assert set().union(*windows) == set(range(frames - 1))
        weights = window_weights(frames, stages)  # (T-1, S)
        torch.testing.assert_close(weights.sum(dim=0), torch.ones(stages))


def test_single_stage_covers_everything() -> None:
    assert stage_windows(5, 1) == [range(4)]


@pytest.mark.parametrize("frames, stages", [(3, 3), (2, 2), (4, 8)])
def test_too_few_frames_is_an_error(frames: int, stages: int) -> None:
    with pytest.raises(ValueError, match="at least S\\+1"):
        stage_windows(frames, stages)


def test_build_refuses_t_below_s_plus_1(kit) -> None:
    with pytest.raises(ValueError, match="at least S\\+1"):
        kit.build(num_frames=3, num_sub_actions=3)


def test_task_masks() -> None:
    s, q = True, False
    faithful = task_mask(2, 2, "faithful")
    inductive = task_mask(2, 2, "inductive")
    assert faithful.tolist() == [[s, s, q, q], [s, s, q, q], [q, q, s, s], [q, q, s, s]]
    assert inductive.tolist() == [[s, s, q, q], [s, s, q, q], [s, s, s, q], [s, s, q, s]]
