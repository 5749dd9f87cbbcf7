"""Task-Adapter++ on a frozen open_clip CLIP (spec: docs/method.md).

Public API:

    build_model(model_cfg, protocol, device=None) -> TaskAdapterPP
    TaskAdapterPP
        .tokenize(prompts) -> (P, ctx)                    .prompts(class_name, sub_actions) -> list[str]
        .text_prefix(tokens (P, ctx)) -> (P, ctx, D_t)    .encode_text(tokens (N, S, ctx), prefix=None) -> (N, S, E)
        .vision_prefix(clips (B, T, 3, H, W)) -> (B, T, P+1, D)
        .encode_videos(support, query, support_is_prefix=False, query_is_prefix=False) -> (N*K, T, E), (Q, T, E)
        .forward(support, support_labels, query, text_tokens, text_prefix=None,
                 support_is_prefix=False, query_is_prefix=False) -> EpisodeScores (logits/vis/sem: (Q, N))
        .forward_batch(same arguments with a leading episode axis B) -> EpisodeScores (B, Q, N); .unbind() -> B of them
        .encode_videos_batch(support (B, N*K, ...), query (B, Q, ...), ..., video_states=False) -> (B, N*K, T, E), (B, Q, T, E)
        .vision_video_states(prefix (B, T, P+1, D)) -> (B, T, P+1, D)  per-video part of the first adapted block (cacheable)
        .loss(scores, query_labels) -> cross-entropy of the logits
        .frozen_frame_features(clips) -> (B, T, E)         open_clip encode_image per frame
        .frozen_text_features(tokens (P, ctx)) -> (P, E)   open_clip encode_text per prompt
        .trainable_state_dict() / .load_trainable_state_dict(sd) / .parameter_counts()
        .image_mean, .image_std, .image_size
    EpisodeScores(logits, vis, sem)
    model_info(cfg, device=None) -> dict                   what `fsar model-info` prints
    load_backbone, register_clip_configs, BackboneError    the open_clip side (fsar-tiny, fsar-micro configs)
    stage_windows(T, S), task_mask(num_support, num_query, context)

Importing this package registers the tiny open_clip configs (fsar-tiny, fsar-micro) with open_clip.
"""

from pipeline.model.alignment import stage_windows, task_mask
from pipeline.model.backbone import BackboneError, load_backbone, register_clip_configs
from pipeline.model.info import model_info
from pipeline.model.model import EpisodeScores, TaskAdapterPP, build_model

__all__ = [
    "BackboneError",
    "EpisodeScores",
    "TaskAdapterPP",
    "build_model",
    "load_backbone",
    "model_info",
    "register_clip_configs",
    "stage_windows",
    "task_mask",
]
