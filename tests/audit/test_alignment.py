"""The audit's order-respecting fit: exact against brute force, and the orders it scores."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from pipeline.audit.alignment import best_option, cosines, monotone_fit, order_fits, orders


def _brute_force(sim: torch.Tensor) -> float:
    """Best over every cut of T frames into S consecutive non-empty runs of the mean over runs of the run's mean."""
    s, t = sim.shape
    best = -math.inf
    for cuts in itertools.combinations(range(1, t), s - 1):
        edges = (0, *cuts, t)
        best = max(best, sum(float(sim[k, edges[k] : edges[k + 1]].mean()) for k in range(s)) / s)
    return best


@pytest.mark.parametrize("s,t", [(1, 4), (2, 5), (3, 8), (4, 7), (3, 3)])
def test_monotone_fit_is_the_best_segmentation(s, t):
    sim = torch.randn(5, s, t, generator=torch.Generator().manual_seed(s * 10 + t), dtype=torch.float64)
    got = monotone_fit(sim)  # (5,)
    assert got.shape == (5,)
    for i in range(5):
        assert float(got[i]) == pytest.approx(_brute_force(sim[i]), abs=1e-12)


def test_too_few_frames_for_the_sentences_is_an_error():
    with pytest.raises(ValueError, match="3 frames cannot hold 4 sentences"):
        monotone_fit(torch.zeros(4, 3))


def test_a_video_that_shows_the_stages_in_order_prefers_the_stated_order():
    # sentence k matches frames 2k..2k+1 (a band), anything else is unrelated
    sim = torch.full((3, 6), 0.1)
    for k in range(3):
        sim[k, 2 * k : 2 * k + 2] = 0.9
    fits = order_fits(sim, orders(3, 4))  # (6,)
    assert fits[0] == pytest.approx(0.9) and fits[1] < 0.5  # stated, then reversed
    assert best_option(fits) == 0
    flipped = order_fits(sim.flip(0), orders(3, 4))  # the same video described back to front
    assert flipped[1] == pytest.approx(0.9) and flipped[0] < 0.5


def test_orders_stated_then_reversed_then_the_rest():
    assert orders(1, 4) == [(0,)]
    assert orders(3, 4)[:2] == [(0, 1, 2), (2, 1, 0)] and sorted(orders(3, 4)) == sorted(itertools.permutations(range(3)))
    assert orders(5, 4) == [(0, 1, 2, 3, 4), (4, 3, 2, 1, 0)]  # above the limit: stated and reversed only
    assert best_option(torch.tensor([0.2, 0.5, 0.5])) == 1  # ties: the first


def test_cosines_shape_and_scale():
    text, frames = torch.randn(4, 8), torch.randn(3, 5, 8)
    sim = cosines(text, frames)
    assert sim.shape == (3, 4, 5) and float(sim.abs().max()) <= 1 + 1e-6
    assert float(cosines(frames[0, :1], frames[:1])[0, 0, 0]) == pytest.approx(1.0)
