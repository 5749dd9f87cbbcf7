"""Task-Adapter++ on a frozen open_clip CLIP: one module for training and evaluation.

    model = build_model(cfg.model, cfg.protocol)
    tokens = model.tokenize(model.prompts("jump", ["crouch", "take off", "land"]))   # (S, ctx)
    scores = model(support, support_labels, query, text_tokens)                      # logits (Q_total, N)
    loss = model.loss(scores, query_labels)

Evaluation cache: `vision_prefix(clips)` runs the frozen first L-M vision blocks once per video;
pass its output with `support_is_prefix` / `query_is_prefix` and the results equal the uncached
path. `text_prefix(tokens)` is what the embeddings stage stores per prompt.

Batched evaluation: `forward_batch` scores B episodes of one layout (same N, K, Q) in one pass through
the adapted blocks, with an extra leading episode axis (task attention and CA never mix two episodes);
its scores equal B calls of `forward` within fp32 rounding.

Only the declared parts train (`TRAINABLE_PARTS`); everything in `self.clip` is frozen, and
`_apply_freezing` is the one place that sets `requires_grad`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.model.alignment import (
    batched_class_prototypes,
    batched_semantic_scores,
    batched_transition_features,
    batched_visual_scores,
    class_prototypes,
    released_product,
    semantic_scores,
    stage_windows,
    task_mask,
    transition_features,
    visual_scores,
    window_weights,
)
from pipeline.model.backbone import Backbone, load_backbone, text_module
from pipeline.model.layers import as_float
from pipeline.model.text import AdaptedText, format_prompt, pooled_length
from pipeline.model.vision import AdaptedVision
from pipeline.precision import autocast
from pipeline.settings.datasets import ProtocolConfig
from pipeline.settings.model import ModelConfig

__all__ = ["EpisodeScores", "TRAINABLE_PARTS", "TaskAdapterPP", "build_model"]

# part name -> attribute paths of the modules/parameters that train; everything else is frozen
TRAINABLE_PARTS: dict[str, tuple[str, ...]] = {
    "vision_adapters": ("vision.blocks",),
    "temporal_embedding": ("vision.temporal_embedding",),
    "text_adapters": ("text",),
    "other": ("ca_norm",),
}
# frozen CLIP, counted after the trainable parts; a parameter counts in the first part that holds it
FROZEN_PARTS: dict[str, tuple[str, ...]] = {"clip_vision": ("clip.visual",), "clip_text": ("clip",)}  # clip_text: the rest of CLIP


@dataclass(frozen=True)
class EpisodeScores:
    # ([B,] Q_total, N) tau * vis * sem, fp32; B = episodes of `forward_batch`; with model.scores=released the released
    # code's product tau * vis * sem^T (`alignment.released_product`); vis and sem stay [query, class] either way
    logits: Tensor
    vis: Tensor  # ([B,] Q_total, N) visual score cos(mean_t z_q, mean_t proto_c)
    sem: Tensor  # ([B,] Q_total, N) semantic (order-aware) score

    @property
    def prediction(self) -> Tensor:  # ([B,] Q_total) argmax over classes of vis * sem
        return self.logits.argmax(dim=-1)

    def unbind(self) -> list["EpisodeScores"]:
        """The B episodes of batched scores (B, Q_total, N) as B single-episode scores (Q_total, N)."""
        return [EpisodeScores(logits=lg, vis=v, sem=s) for lg, v, s in zip(self.logits, self.vis, self.sem, strict=True)]


def build_model(model_cfg: ModelConfig, protocol: ProtocolConfig, device: str | torch.device | None = None) -> "TaskAdapterPP":
    """Load the open_clip backbone named by `model_cfg` and wrap it with the adapters.

    device None = CPU. "meta" builds without memory or weights (parameter counting; pretrained must be None).
    """
    target = torch.device(device) if device is not None else torch.device("cpu")
    stage_windows(protocol.num_frames, protocol.num_sub_actions)  # T >= S+1, else a clear error now
    load_on = target if target.type == "meta" else torch.device("cpu")
    with torch.random.fork_rng(devices=[]):  # random weights (pretrained None) come from model.init_seed alone
        torch.manual_seed(model_cfg.init_seed)
        backbone = load_backbone(model_cfg.clip, model_cfg.pretrained, model_cfg.image_size, model_cfg.quick_gelu, load_on)
    context = torch.device("meta") if target.type == "meta" else contextlib.nullcontext()
    with context:
        model = TaskAdapterPP(backbone, model_cfg, protocol)
    return model if target.type == "meta" else model.to(target)


class TaskAdapterPP(nn.Module):
    """Frozen CLIP + temporal embedding + vision adapters + text order adapters (+ CA LayerNorm)."""

    def __init__(self, backbone: Backbone, cfg: ModelConfig, protocol: ProtocolConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.protocol = protocol
        self.clip = backbone.clip  # frozen open_clip model
        self._tokenizer = backbone.tokenizer
        self.image_mean = backbone.image_mean  # (3,) preprocessing constants of these weights
        self.image_std = backbone.image_std  # (3,)
        self.image_size = cfg.image_size  # square crop side
        self.weights = backbone.weights  # "random" | "tag:..." | "file:..."
        self.quick_gelu = backbone.quick_gelu  # activation of the frozen CLIP MLPs
        visual, text = self.clip.visual, text_module(self.clip)
        self.vision = AdaptedVision(
            num_layers=len(visual.transformer.resblocks),
            width=visual.transformer.width,
            num_frames=protocol.num_frames,
            adapted_layers=cfg.vision_adapted_layers,
            ratio=cfg.adapter_ratio,
            task_zero_init=cfg.task_adapter_init == "zero",
            embed_at=cfg.temporal_embedding_at,
        )
        self.text = AdaptedText(
            num_layers=len(text.transformer.resblocks),
            width=text.transformer.width,
            num_sub_actions=protocol.num_sub_actions,
            adapted_layers=cfg.text_adapted_layers,
            ratio=cfg.adapter_ratio,
            index_embedding=cfg.subaction_index_embedding,
        )
        self.embed_dim = visual.output_dim  # E
        self.ca_norm = nn.LayerNorm(self.embed_dim) if cfg.ca_layernorm else None  # SSv2-Full only
        self.register_buffer("windows", window_weights(protocol.num_frames, protocol.num_sub_actions), persistent=False)
        self._apply_freezing()

    # ---- trainable parameters: declared once, freezing derived here ---------------------------------------------

    def _apply_freezing(self) -> None:
        trainable = set(self.trainable_parameter_names())
        for name, param in self.named_parameters():
            param.requires_grad_(name in trainable)

    def _part_parameters(self, paths: Sequence[str]) -> Iterator[tuple[str, nn.Parameter]]:
        for path in paths:
            target = _resolve(self, path)
            if isinstance(target, nn.Module):
                yield from target.named_parameters(prefix=path)
            elif isinstance(target, nn.Parameter):
                yield path, target

    def trainable_parameter_names(self) -> list[str]:
        """Names (as in `named_parameters`) of every declared trainable parameter."""
        return [name for paths in TRAINABLE_PARTS.values() for name, _ in self._part_parameters(paths)]

    def trainable_state_dict(self) -> dict[str, Tensor]:
        """Only the trainable parameters (what a checkpoint needs), detached."""
        params = dict(self.named_parameters())
        return {name: params[name].detach() for name in self.trainable_parameter_names()}

    def load_trainable_state_dict(self, state: Mapping[str, Tensor]) -> None:
        """Load a `trainable_state_dict`; its keys must be exactly this model's trainable parameters."""
        expected = set(self.trainable_parameter_names())
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"trainable state does not match this model: missing {missing}, unexpected {unexpected}")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for name, value in state.items():
                if params[name].shape != value.shape:
                    raise ValueError(f"{name}: checkpoint shape {tuple(value.shape)} != model shape {tuple(params[name].shape)}")
                params[name].copy_(value)

    def parameter_counts(self) -> dict:
        """{"trainable": int, "frozen": int, "parts": {part: {"trainable": int, "frozen": int}}}."""
        parts: dict[str, dict[str, int]] = {}
        seen: set[str] = set()
        for part, paths in {**TRAINABLE_PARTS, **FROZEN_PARTS}.items():
            counts = {"trainable": 0, "frozen": 0}
            for name, param in self._part_parameters(paths):
                if name not in seen:
                    seen.add(name)
                    counts["trainable" if param.requires_grad else "frozen"] += param.numel()
            parts[part] = counts
        total_trainable = sum(c["trainable"] for c in parts.values())
        total_frozen = sum(c["frozen"] for c in parts.values())
        return {"trainable": total_trainable, "frozen": total_frozen, "parts": parts}

    # ---- text -------------------------------------------------------------------------------------------------------

    def prompts(self, class_name: str, sub_actions: Sequence[str]) -> list[str]:
        """The S prompts of one class, in sub-action order, from `prompt_template`."""
        return [format_prompt(self.cfg.prompt_template, class_name, s) for s in sub_actions]

    def tokenize(self, prompts: Sequence[str]) -> Tensor:
        """CLIP tokenizer: P strings -> (P, ctx) LongTensor on the model's device."""
        return self._tokenizer(list(prompts)).to(self._device())

    def text_prefix(self, tokens: Tensor) -> Tensor:
        """(P, ctx) -> (P, ctx, D_t): token + positional embedding + frozen text blocks (the cacheable part)."""
        with self._precision():
            return self.text.prefix(text_module(self.clip), tokens)

    def encode_text(self, tokens: Tensor, prefix: Tensor | None = None, keep: int | None = None) -> Tensor:
        """(N, S, ctx) tokens [+ (N, S, ctx, D_t) cached prefix] -> (N, S, E) prompt features (fp32).

        `keep`: `text_keep(tokens)` computed beforehand from CPU tokens (None: computed here from `tokens`).
        """
        with self._precision():
            return as_float(self.text.encode(text_module(self.clip), tokens, prefix, keep))

    def text_keep(self, tokens: Tensor) -> int:
        """The token positions (of ctx) the pooled outputs of (..., ctx) `tokens` depend on; pass CPU tokens (no sync)."""
        return pooled_length(text_module(self.clip), tokens)

    # ---- vision -----------------------------------------------------------------------------------------------------

    def vision_prefix(self, clips: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T, P+1, D): the frozen first L-M blocks (the evaluation cache)."""
        with self._precision():
            return self.vision.prefix(self.clip.visual, clips)

    def vision_suffix(self, states: Tensor, mask: Tensor) -> Tensor:
        """(V, T, P+1, D) prefix states of one task set, (V, V) bool task mask -> (V, T, E) frame features (fp32).

        The last adapted block runs at the class token only (`AdaptedVision.episode_suffix`): the loss never reads
        the other tokens' outputs, so the features and every gradient equal `AdaptedVision.suffix`'s (a test).
        """
        with self._precision():
            return as_float(self.vision.episode_suffix(self.clip.visual, states, mask))

    def encode_videos(
        self, support: Tensor, query: Tensor, support_is_prefix: bool = False, query_is_prefix: bool = False
    ) -> tuple[Tensor, Tensor]:
        """Frame features of one episode's supports (N*K, T, E) and queries (Q_total, T, E) under `task_context`."""
        s = support if support_is_prefix else self.vision_prefix(support)  # (N*K, T, P+1, D)
        q = query if query_is_prefix else self.vision_prefix(query)  # (Q_total, T, P+1, D)
        mask = task_mask(s.shape[0], q.shape[0], self.cfg.task_context, device=s.device)  # (V, V)
        z = self.vision_suffix(torch.cat([as_float(s), as_float(q)]), mask)  # (V, T, E)
        return z[: s.shape[0]], z[s.shape[0] :]

    def vision_video_states(self, prefix: Tensor) -> Tensor:
        """(B, T, P+1, D) prefix states -> the same after the per-video steps of the first adapted block (fp32).

        At evaluation these depend on each video alone (every parameter fixed), so the batched path caches them
        per video; pass them to `forward_batch` / `encode_videos_batch` with `video_states=True`.
        """
        with self._precision():
            return as_float(self.vision.video_states(self.clip.visual, as_float(prefix)))

    def encode_videos_batch(
        self, support: Tensor, query: Tensor, support_is_prefix: bool = False, query_is_prefix: bool = False,
        video_states: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """`encode_videos` for B episodes of one layout: (B, N*K, ...), (B, Q_total, ...) -> (B, N*K, T, E), (B, Q_total, T, E).

        Inputs are clips, prefix states (`*_is_prefix`) or, with `video_states`, `vision_video_states` output for both.
        The last adapted block runs at the class token only (the rest of its output is never read).
        """
        if video_states and not (support_is_prefix and query_is_prefix):
            raise ValueError("video_states=True needs support and query as vision_video_states output (both *_is_prefix)")
        s = support if support_is_prefix else _per_video(self.vision_prefix, support)  # (B, N*K, T, P+1, D)
        q = query if query_is_prefix else _per_video(self.vision_prefix, query)  # (B, Q_total, T, P+1, D)
        if s.shape[0] != q.shape[0]:
            raise ValueError(f"support holds {s.shape[0]} episodes but query holds {q.shape[0]}")
        num_support = s.shape[1]
        mask = task_mask(num_support, q.shape[1], self.cfg.task_context, device=s.device)  # (V, V), every episode's
        states = torch.cat([as_float(s), as_float(q)], dim=1)  # (B, V, T, P+1, D)
        with self._precision():
            z = as_float(self.vision.episode_suffix(self.clip.visual, states, mask, video_done=video_states))  # (B, V, T, E)
        return z[:, :num_support], z[:, num_support:]

    def frozen_frame_features(self, clips: Tensor) -> Tensor:
        """(B, T, 3, H, W) -> (B, T, E): open_clip's own encode_image per frame (frozen-CLIP baseline)."""
        with self._precision():
            feats = self.clip.encode_image(clips.flatten(0, 1))  # (B*T, E)
        return as_float(feats).unflatten(0, clips.shape[:2])

    def frozen_text_features(self, tokens: Tensor) -> Tensor:
        """(P, ctx) -> (P, E): open_clip's own encode_text per prompt (the frozen text tower, no adapters)."""
        with self._precision():
            return as_float(self.clip.encode_text(tokens))

    # ---- episode ----------------------------------------------------------------------------------------------------

    def forward(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        text_tokens: Tensor | None,
        text_prefix: Tensor | None = None,
        support_is_prefix: bool = False,
        query_is_prefix: bool = False,
        text_features: Tensor | None = None,
        text_keep: int | None = None,
        validate: bool = True,
    ) -> EpisodeScores:
        """Score every query against the N classes of one episode.

        support: (N*K, T, 3, H, W) clips, or (N*K, T, P+1, D) prefix states with support_is_prefix;
        support_labels: (N*K,) in 0..N-1, any order; query: (Q_total, T, 3, H, W) or prefix states;
        text_tokens: (N, S, ctx), row c = class c; text_prefix: optional (N, S, ctx, D_t) cache;
        text_features: optional (N, S, E) output of `encode_text` (a class's features depend on that class alone,
        so evaluation computes them once per class); text_keep: `text_keep(text_tokens)` computed from CPU tokens;
        validate=False skips the checks that read label values (a host synchronisation on a GPU: for callers whose
        labels come from the episode sampler).
        """
        if text_tokens is None and text_features is None:
            raise ValueError("forward needs text_tokens (N, S, ctx) or text_features (N, S, E)")
        num_classes = (text_features if text_features is not None else text_tokens).shape[0]
        _check_labels(support_labels, support.shape[0], num_classes, values=validate)
        z_s, z_q = self.encode_videos(support, query, support_is_prefix, query_is_prefix)  # (N*K, T, E), (Q, T, E)
        text = self.encode_text(text_tokens, text_prefix, text_keep) if text_features is None else text_features  # (N, S, E)
        vis = visual_scores(z_q, class_prototypes(z_s, support_labels, num_classes, check=validate))  # (Q, N)
        mask = task_mask(z_s.shape[0], z_q.shape[0], self.cfg.task_context, device=z_s.device)  # (V, V)
        transitions = transition_features(torch.cat([z_s, z_q]), z_s.shape[0], mask, self.ca_norm)  # (Q, T-1, E)
        sem = semantic_scores(transitions, text, self.windows)  # (Q, N)
        return EpisodeScores(logits=self.logits(vis, sem), vis=vis, sem=sem)

    def forward_batch(
        self,
        support: Tensor,
        support_labels: Tensor,
        query: Tensor,
        text_tokens: Tensor | None,
        text_prefix: Tensor | None = None,
        support_is_prefix: bool = False,
        query_is_prefix: bool = False,
        text_features: Tensor | None = None,
        video_states: bool = False,
        text_keep: int | None = None,
        validate: bool = True,
    ) -> EpisodeScores:
        """`forward` for B episodes of one layout (same N, K, Q) in one pass; scores (B, Q_total, N).

        Every argument of `forward` gains a leading episode axis B: support (B, N*K, T, 3, H, W) or prefix
        states (B, N*K, T, P+1, D); support_labels (B, N*K); query (B, Q_total, ...); text_tokens (B, N, S, ctx);
        text_prefix (B, N, S, ctx, D_t); text_features (B, N, S, E); `video_states`: support and query are
        `vision_video_states` output (the batched evaluation cache); `text_keep`, `validate`: as in `forward`.
        Episode b's scores equal `forward(support[b], support_labels[b], ...)` within fp32 rounding (no attention
        crosses episodes), and so do the gradients of a loss over the B episodes (training: `train.episodes_per_pass`).
        """
        if text_tokens is None and text_features is None:
            raise ValueError("forward_batch needs text_tokens (B, N, S, ctx) or text_features (B, N, S, E)")
        batch, num_classes = (text_features if text_features is not None else text_tokens).shape[:2]
        if support.shape[0] != batch or support_labels.shape[0] != batch:
            raise ValueError(f"text holds {batch} episodes but support {support.shape[0]} and support_labels {support_labels.shape[0]}")
        _check_labels(support_labels.flatten(), support_labels.numel(), num_classes, values=validate)  # every episode's labels at once
        if support_labels.shape != support.shape[:2]:
            raise ValueError(f"support_labels must have shape {tuple(support.shape[:2])}, got {tuple(support_labels.shape)}")
        z_s, z_q = self.encode_videos_batch(support, query, support_is_prefix, query_is_prefix, video_states)  # (B, N*K|Q, T, E)
        if text_features is None:
            prefix = None if text_prefix is None else text_prefix.flatten(0, 1)  # (B*N, S, ctx, D_t)
            text_features = self.encode_text(text_tokens.flatten(0, 1), prefix, text_keep).unflatten(0, (batch, num_classes))
        vis = batched_visual_scores(z_q, batched_class_prototypes(z_s, support_labels, num_classes, check=validate))  # (B, Q, N)
        mask = task_mask(z_s.shape[1], z_q.shape[1], self.cfg.task_context, device=z_s.device)  # (V, V)
        transitions = batched_transition_features(torch.cat([z_s, z_q], dim=1), z_s.shape[1], mask, self.ca_norm)  # (B, Q, T-1, E)
        sem = batched_semantic_scores(transitions, text_features, self.windows)  # (B, Q, N)
        return EpisodeScores(logits=self.logits(vis, sem), vis=vis, sem=sem)

    def logits(self, vis: Tensor, sem: Tensor) -> Tensor:
        """([B,] Q, N) [query, class] factors -> logits: tau * vis * sem, or with `model.scores=released` the released
        code's product tau * vis * sem^T (defined for Q == N: one query per class, queries in class order)."""
        product = released_product(vis, sem) if self.cfg.scores == "released" else vis * sem
        return self.cfg.logit_scale * product

    def loss(self, scores: EpisodeScores, query_labels: Tensor) -> Tensor:
        """Cross-entropy of the logits (tau * vis * sem) over the N classes."""
        return F.cross_entropy(scores.logits, query_labels)

    def episode_losses(self, scores: EpisodeScores, query_labels: Tensor) -> Tensor:
        """`loss` of each of B episodes of batched scores (B, Q, N), (B, Q) -> (B,)."""
        per_query = F.cross_entropy(scores.logits.flatten(0, 1), query_labels.flatten(), reduction="none")  # (B*Q,)
        return per_query.view(query_labels.shape).mean(dim=1)

    # ---- helpers ----------------------------------------------------------------------------------------------------

    def _device(self) -> torch.device:
        return self.vision.temporal_embedding.device

    def _precision(self) -> contextlib.AbstractContextManager:
        """bf16 autocast on CUDA when `model.amp`; fp32 elsewhere (the helper training and evaluation use too)."""
        return autocast(self._device(), self.cfg.amp)

    @property
    def stage_windows(self) -> list[range]:
        """0-based transition indices of each of the S stage windows."""
        return stage_windows(self.protocol.num_frames, self.protocol.num_sub_actions)


def _per_video(fn, clips: Tensor) -> Tensor:
    """Apply a per-video function to (B, V, ...) by flattening the episode and video axes."""
    return fn(clips.flatten(0, 1)).unflatten(0, clips.shape[:2])


def _check_labels(labels: Tensor, num_support: int, num_classes: int, values: bool = True) -> None:
    """Shape and dtype; with `values` also the range (reads the labels: a host synchronisation on a GPU)."""
    if labels.shape != (num_support,):
        raise ValueError(f"support_labels must have shape ({num_support},), got {tuple(labels.shape)}")
    if labels.dtype != torch.long:
        raise ValueError(f"support_labels must be a LongTensor, got {labels.dtype}")
    if values and num_support and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"support_labels must lie in 0..{num_classes - 1} (one row of text_tokens per class)")


def _resolve(root: nn.Module, path: str) -> object:
    """The attribute at a dotted path (module, parameter or None)."""
    target: object = root
    for name in path.split("."):
        target = getattr(target, name, None)
    return target
