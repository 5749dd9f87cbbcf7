"""Task sets, order-aware cross-modal alignment and scoring (docs/method.md, "Order-aware ... scoring").

Every score matrix is [query, class] (defect #1 of the released code), for any N, K, Q; `released_product`
reproduces the released code's own product, for measuring what that defect is worth (`model.scores=released`).
An episode's V = N*K + Q_total videos are laid out supports first, then queries; one boolean
(V, V) mask says which videos each video may attend over, both in the task adapter and in the
cross-frame attention (CA):

    faithful   supports over the supports, queries over the queries (as released: transductive)
    inductive  supports over the supports, each query over the supports and itself alone

The `batched_*` functions compute the same scores for B episodes of one layout (same N, K, Q) at once,
with a leading episode axis B that no attention crosses (batched evaluation).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "TaskContext",
    "batched_class_prototypes",
    "batched_semantic_scores",
    "batched_transition_features",
    "batched_visual_scores",
    "class_prototypes",
    "released_product",
    "semantic_scores",
    "stage_windows",
    "task_mask",
    "transition_features",
    "visual_scores",
    "window_weights",
]

TaskContext = Literal["faithful", "inductive"]


def task_mask(num_support: int, num_query: int, context: TaskContext, device: torch.device | None = None) -> Tensor:
    """(V, V) bool, V = num_support + num_query: True where row video may attend over column video."""
    total = num_support + num_query
    is_support = torch.arange(total, device=device) < num_support  # (V,)
    same_kind = is_support[:, None] == is_support[None, :]  # (V, V) supports<->supports, queries<->queries
    if context == "faithful":
        return same_kind
    if context == "inductive":
        itself = torch.eye(total, dtype=torch.bool, device=device)  # (V, V)
        return (is_support[:, None] & is_support[None, :]) | (~is_support[:, None] & (is_support[None, :] | itself))
    raise ValueError(f"unknown task_context {context!r}; choose faithful or inductive")


def stage_windows(num_frames: int, num_stages: int) -> list[range]:
    """S windows over the T-1 transitions (0-based): width w = ceil((T-1)/S), window k starts at
    floor(k * (T-1-w) / (S-1) + 1/2); for S = 1 one window covers every transition. T=8, S=3 ->
    [0..2], [2..4], [4..6] (1-based {1,2,3}, {3,4,5}, {5,6,7}), as released."""
    if num_stages < 1:
        raise ValueError(f"need at least one sub-action, got S={num_stages}")
    if num_frames < num_stages + 1:
        raise ValueError(
            f"T={num_frames} frames give {num_frames - 1} transitions, fewer than the S={num_stages} sub-actions: "
            f"T must be at least S+1={num_stages + 1}"
        )
    transitions = num_frames - 1
    width = math.ceil(transitions / num_stages)
    if num_stages == 1:
        return [range(transitions)]
    span = transitions - width
    # floor(k * span / (S-1) + 1/2) in integer arithmetic
    starts = [(2 * k * span + num_stages - 1) // (2 * (num_stages - 1)) for k in range(num_stages)]
    return [range(s, s + width) for s in starts]


def window_weights(num_frames: int, num_stages: int, device: torch.device | None = None) -> Tensor:
    """(T-1, S) averaging weights: 1/|window k| on the transitions of window k, 0 elsewhere."""
    weights = torch.zeros(num_frames - 1, num_stages, device=device)
    for k, window in enumerate(stage_windows(num_frames, num_stages)):
        weights[window.start : window.stop, k] = 1.0 / len(window)
    return weights


def _onehot(labels: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """(...) labels -> (..., num_classes) 0/1 of `dtype`: F.one_hot's values, without its value checks (a host
    synchronisation on a GPU, which a CUDA graph cannot hold)."""
    return (labels[..., None] == torch.arange(num_classes, device=labels.device)).to(dtype)


def class_prototypes(support: Tensor, labels: Tensor, num_classes: int, check: bool = True) -> Tensor:
    """(N*K, T, E) support features, (N*K,) labels in 0..N-1 -> (N, T, E) per-class mean.

    `check=False` skips the test that every class has a support (it reads values: a host synchronisation on a GPU).
    """
    onehot = _onehot(labels, num_classes, support.dtype)  # (N*K, N)
    counts = onehot.sum(dim=0)  # (N,)
    if check and bool((counts == 0).any()):
        missing = torch.nonzero(counts == 0).flatten().tolist()
        raise ValueError(f"classes {missing} have no support video (labels must cover 0..{num_classes - 1})")
    return torch.einsum("vn,vte->nte", onehot / counts, support)  # (N, T, E)


def visual_scores(query: Tensor, prototypes: Tensor) -> Tensor:
    """cos(mean_t z_q, mean_t proto_c): (Q, T, E), (N, T, E) -> (Q, N)."""
    q = F.normalize(query.mean(dim=1), dim=-1)  # (Q, E)
    p = F.normalize(prototypes.mean(dim=1), dim=-1)  # (N, E)
    return q @ p.T  # (Q, N)


def transition_features(features: Tensor, num_support: int, mask: Tensor, norm: nn.Module | None = None) -> Tensor:
    """u[t] = CA(z[t], z[t+1]) + z[t+1] for every query: (V, T, E) -> (Q, T-1, E).

    CA is parameter-free attention (scale 1/sqrt(E)) of query frame t over frame t+1 of the videos
    its row of `mask` (V, V) allows, then `norm` (the SSv2-Full LayerNorm) when given.
    """
    queries = features[num_support:]  # (Q, T, E)
    q = queries[:, :-1].transpose(0, 1)[:, None]  # (T-1, 1, Q, E) one head
    kv = features[:, 1:].transpose(0, 1)[:, None]  # (T-1, 1, V, E)
    ca = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask[num_support:])  # (T-1, 1, Q, E)
    ca = ca[:, 0].transpose(0, 1)  # (Q, T-1, E)
    if norm is not None:
        ca = norm(ca)
    return ca + queries[:, 1:]  # (Q, T-1, E)


def semantic_scores(transitions: Tensor, text: Tensor, weights: Tensor) -> Tensor:
    """mean over k and t in window k of cos(u[t], text[c, k]): (Q, T-1, E), (N, S, E), (T-1, S) -> (Q, N)."""
    u = F.normalize(transitions, dim=-1)  # (Q, T-1, E)
    t = F.normalize(text, dim=-1)  # (N, S, E)
    cos = torch.einsum("qte,nse->qtns", u, t)  # (Q, T-1, N, S)
    return torch.einsum("qtns,ts->qn", cos, weights) / weights.shape[1]  # (Q, N)


def released_product(vis: Tensor, sem: Tensor) -> Tensor:
    """The released code's `vis * sem` with its semantic matrix laid out [class, query]: out[i, j] = vis[i, j] * sem[j, i].

    (..., Q, N) [query, class] vis and sem, Q == N -> (..., Q, N). Row i pairs query i's visual scores over the classes
    with class i's semantic scores over the queries: it answers "which class is query i" only when query i belongs to
    class i, which is how the released sampler lays out an episode (one query per class, in class order).
    """
    queries, classes = vis.shape[-2:]
    if queries != classes:
        raise ValueError(
            f"model.scores=released needs one query per class ({classes} classes), got {queries} queries; use protocol.query=1 "
            f"or model.scores=query_class"
        )
    return vis * sem.transpose(-2, -1)


# ---- B episodes of one layout at once: the functions above with a leading episode axis ---------------------------


def batched_class_prototypes(support: Tensor, labels: Tensor, num_classes: int, check: bool = True) -> Tensor:
    """(B, N*K, T, E) support features, (B, N*K) labels in 0..N-1 -> (B, N, T, E) per-episode class means."""
    onehot = _onehot(labels, num_classes, support.dtype)  # (B, N*K, N)
    counts = onehot.sum(dim=1)  # (B, N)
    if check and bool((counts == 0).any()):
        episode, cls = (int(i) for i in torch.nonzero(counts == 0)[0])
        raise ValueError(f"episode {episode}: class {cls} has no support video (labels must cover 0..{num_classes - 1})")
    return torch.einsum("bvn,bvte->bnte", onehot / counts[:, None, :], support)  # (B, N, T, E)


def batched_visual_scores(query: Tensor, prototypes: Tensor) -> Tensor:
    """cos(mean_t z_q, mean_t proto_c) per episode: (B, Q, T, E), (B, N, T, E) -> (B, Q, N)."""
    q = F.normalize(query.mean(dim=2), dim=-1)  # (B, Q, E)
    p = F.normalize(prototypes.mean(dim=2), dim=-1)  # (B, N, E)
    return q @ p.transpose(1, 2)  # (B, Q, N)


def batched_transition_features(features: Tensor, num_support: int, mask: Tensor, norm: nn.Module | None = None) -> Tensor:
    """`transition_features` per episode: (B, V, T, E) -> (B, Q, T-1, E); `mask` (V, V) is every episode's.

    Keys/values are frame t+1 of the videos of the query's own episode only.
    """
    batch, videos, frames, width = features.shape
    queries = features[:, num_support:]  # (B, Q, T, E)
    q = queries[:, :, :-1].transpose(1, 2).reshape(batch * (frames - 1), 1, videos - num_support, width)  # (B*(T-1), 1, Q, E)
    kv = features[:, :, 1:].transpose(1, 2).reshape(batch * (frames - 1), 1, videos, width)  # (B*(T-1), 1, V, E)
    ca = F.scaled_dot_product_attention(q, kv, kv, attn_mask=mask[num_support:])  # (B*(T-1), 1, Q, E)
    ca = ca[:, 0].unflatten(0, (batch, frames - 1)).transpose(1, 2)  # (B, Q, T-1, E)
    if norm is not None:
        ca = norm(ca)
    return ca + queries[:, :, 1:]  # (B, Q, T-1, E)


def batched_semantic_scores(transitions: Tensor, text: Tensor, weights: Tensor) -> Tensor:
    """`semantic_scores` per episode: (B, Q, T-1, E), (B, N, S, E), (T-1, S) -> (B, Q, N)."""
    u = F.normalize(transitions, dim=-1)  # (B, Q, T-1, E)
    t = F.normalize(text, dim=-1)  # (B, N, S, E)
    cos = torch.einsum("bqte,bnse->bqtns", u, t)  # (B, Q, T-1, N, S)
    return torch.einsum("bqtns,ts->bqn", cos, weights) / weights.shape[1]  # (B, Q, N)
