"""The audit's order-respecting measure: how well S ordered sentences fit the T frames of a video (docs/audit.md).

    sim = cosines(text, frames)        # (P, E) sentence features, (V, T, E) frame features -> (V, P, T)
    fit = monotone_fit(sim[:, rows])   # (..., S, T) -> (...,): the best segmentation's mean cosine
    fits = order_fits(sim[:, rows], orders(S, 4))   # (..., O): the same for every order of the S sentences

A segmentation cuts the frames 1..T into S consecutive, non-empty runs, run k for sentence k (as the model's own
stage windows are runs of consecutive frame transitions, in order). Its fit is the mean over the S sentences of the
mean cosine of sentence k with the frames of its run:

    fit(v, d) = max over 0 = b_0 < b_1 < ... < b_S = T of  1/S * sum_k  mean_{b_k <= t < b_(k+1)} cos(s_k, f_t)

found exactly by dynamic programming in O(S T^2) per (video, description). Every sentence gets at least one frame,
and each counts equally whatever the length of its run.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["best_option", "cosines", "monotone_fit", "order_fits", "orders"]


def cosines(text: Tensor, frames: Tensor) -> Tensor:
    """(P, E) sentence features, (V, T, E) frame features -> (V, P, T) cosine similarities."""
    return torch.einsum("pe,vte->vpt", F.normalize(text.float(), dim=-1), F.normalize(frames.float(), dim=-1))


def monotone_fit(sim: Tensor) -> Tensor:
    """(..., S, T) sentence-frame cosines, sentences in the order to test -> (...,) the best segmentation's fit."""
    *_, s, t = sim.shape
    if t < s:
        raise ValueError(f"{t} frames cannot hold {s} sentences in order (each needs a frame of its own)")
    csum = torch.cat([sim.new_zeros((*sim.shape[:-1], 1)), sim.cumsum(-1)], dim=-1)  # (..., S, T+1)
    edges = torch.arange(t + 1, device=sim.device)
    length = edges[None, :] - edges[:, None]  # (T+1, T+1): frames in the run [u, v)
    run = (csum[..., None, :] - csum[..., :, None]) / length.clamp(min=1)  # (..., S, T+1, T+1): mean cosine of sim[k, u:v]
    run = run.masked_fill(length <= 0, -math.inf)
    best = run[..., 0, 0, :]  # (..., T+1): sentence 0 on frames [0, v)
    for k in range(1, s):
        best = (best[..., :, None] + run[..., k, :, :]).amax(dim=-2)  # (..., T+1): sentences 0..k on frames [0, v)
    return best[..., t] / s


def orders(s: int, all_up_to: int) -> list[tuple[int, ...]]:
    """The orders of S sentences that are scored: the stated one first, then the reversed one, then (when S <= `all_up_to`)
    every other permutation; each order once (S = 1: the stated only)."""
    stated, reverse = tuple(range(s)), tuple(range(s - 1, -1, -1))
    out = [stated] if reverse == stated else [stated, reverse]
    if s <= all_up_to:
        out += [p for p in itertools.permutations(range(s)) if p not in (stated, reverse)]
    return out


def order_fits(sim: Tensor, order_list: list[tuple[int, ...]]) -> Tensor:
    """(..., S, T) cosines in the stated order -> (..., O) the fit of each order (sentence order[k] in the k-th run)."""
    index = torch.as_tensor(order_list, device=sim.device)  # (O, S)
    return monotone_fit(sim[..., index, :])  # (..., O, S, T) -> (..., O)


def best_option(fits: Tensor) -> int:
    """Index of the largest of (O,) mean fits; ties go to the first (list the preferred option first)."""
    values = fits.tolist()
    return max(range(len(values)), key=lambda i: (values[i], -i))
