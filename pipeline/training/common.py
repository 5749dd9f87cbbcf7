"""What training and evaluation share: the device, usable videos, episode batches, checkpoints."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.artifacts import file_fingerprint
from pipeline.atomic import atomic_open
from pipeline.config import Config
from pipeline.precision import autocast  # re-exported: the one autocast helper (config model.amp)
from pipeline.settings.model import model_fields
from pipeline.stage import StageError
from pipeline.training.episodes import Episode

__all__ = [
    "EpisodeBatch",
    "EpisodeLoader",
    "autocast",
    "check_checkpoint",
    "dist_info",
    "load_checkpoint",
    "model_identity",
    "pick_device",
    "save_checkpoint",
    "videos_by_class",
]

# Model fields a checkpoint must agree on with the config that loads it.
IDENTITY_FIELDS = (
    "clip",
    "pretrained",
    "init_seed",
    "vision_adapted_layers",
    "text_adapted_layers",
    "adapter_ratio",
    "ca_layernorm",
    "subaction_index_embedding",
    "temporal_embedding_at",
    "image_size",
)


def pick_device(name: str, key: str = "train.device") -> torch.device:
    """`auto` = cuda when visible, else cpu; a GPU asked for where none is visible is an error naming `key`."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise StageError(f"{key} {name!r} was asked for but no GPU is visible; use --set {key}=cpu")
    return torch.device(name)


def dist_info() -> tuple[int, int]:
    """(rank, world size) under torchrun; (0, 1) otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def videos_by_class(index: pd.DataFrame, split: str, min_frames: int) -> tuple[dict[str, list[str]], dict[str, int]]:
    """Usable videos of a split by class, and the count of excluded ones by reason."""
    part = index[index["split"] == split]
    failed = part["status"] != "ok"
    short = ~failed & (part["stored_indices"].map(len) < min_frames)
    ok = part[~failed & ~short]
    out: dict[str, list[str]] = {}
    for cls, vid in zip(ok["class"], ok["video_id"]):
        out.setdefault(cls, []).append(vid)
    excluded = {"failed": int(failed.sum()), f"fewer than {min_frames} stored frames": int(short.sum())}
    return out, {k: v for k, v in excluded.items() if v}


@dataclass
class EpisodeBatch:
    support: torch.Tensor  # (N*K, T, 3, H, W) clips or (N*K, T, P+1, D) prefix states
    support_labels: torch.Tensor  # (N*K,)
    query: torch.Tensor  # (N*Q, T, 3, H, W) or prefix states
    query_labels: torch.Tensor  # (N*Q,)
    text_tokens: torch.Tensor  # (N, S, ctx)
    text_prefix: torch.Tensor  # (N, S, ctx, D_t)


class EpisodeLoader:
    """Turns an Episode into tensors: clips from the frame store, text states from the cache."""

    def __init__(self, frames: Any, text: Any, cfg: Config, image_mean: Sequence[float], image_std: Sequence[float], device: torch.device):
        self.frames, self.text, self.cfg, self.device = frames, text, cfg, device
        self.mean, self.std = tuple(image_mean), tuple(image_std)

    def clip(self, video_id: str, mode: str, rng: np.random.Generator | None) -> torch.Tensor:
        return self.frames.clip(
            video_id, self.cfg.protocol.num_frames, mode, self.cfg.model.image_size, self.mean, self.std, rng=rng
        )  # (T, 3, H, W)

    def clips(self, video_ids: Sequence[str], mode: str, rng: np.random.Generator | None) -> torch.Tensor:
        return torch.stack([self.clip(v, mode, rng) for v in video_ids]).to(self.device)  # (B, T, 3, H, W)

    def text_for(self, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens, states = self.text.for_classes(list(classes))
        return tokens.to(self.device), states.to(self.device)

    def batch(self, ep: Episode, mode: str, rng: np.random.Generator | None) -> EpisodeBatch:
        tokens, states = self.text_for(ep.classes)
        return EpisodeBatch(
            support=self.clips(ep.support, mode, rng),
            support_labels=torch.as_tensor(ep.support_labels, device=self.device),
            query=self.clips(ep.query, mode, rng),
            query_labels=torch.as_tensor(ep.query_labels, device=self.device),
            text_tokens=tokens,
            text_prefix=states,
        )


def model_identity(cfg: Config) -> dict[str, Any]:
    return {"model": model_fields(cfg.model, IDENTITY_FIELDS), "preset": cfg.preset, "num_frames": cfg.protocol.num_frames,
            "num_sub_actions": cfg.protocol.num_sub_actions}


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: Config, **extra: Any) -> None:
    """Trainable weights + the resolved config + extras, written atomically."""
    payload = {"trainable": model.trainable_state_dict(), "identity": model_identity(cfg), "config": cfg.stored(), **extra}
    with atomic_open(path) as fh:  # a file object: the bytes do not depend on the temporary's name
        torch.save(payload, fh)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint's payload; one inside an artifact folder must first match its sha256 in that artifact's manifest."""
    path = Path(path)
    if not path.is_file():
        raise StageError(f"checkpoint {str(path)!r} does not exist; train first or pass an existing file with --checkpoint")
    file_fingerprint(path)  # the check `evaluate --checkpoint` makes: a damaged checkpoint is an ArtifactError naming the fix
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the same user error
        raise StageError(f"checkpoint {str(path)!r} cannot be read ({type(exc).__name__}: {exc}); is it a fsar checkpoint?") from None


def check_checkpoint(ckpt: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """A checkpoint from another preset or backbone is a clear error naming the differences."""
    if "identity" not in ckpt or "trainable" not in ckpt:
        raise StageError(f"{str(path)!r} is not a fsar checkpoint (no trainable weights / identity)")
    mine, theirs = model_identity(cfg), ckpt["identity"]
    diffs = [f"model.{k}: checkpoint {theirs['model'].get(k)!r} vs config {v!r}" for k, v in mine["model"].items() if theirs["model"].get(k) != v]
    for key, name in (("num_frames", "protocol.num_frames"), ("num_sub_actions", "protocol.num_sub_actions")):
        if theirs.get(key) != mine[key]:
            diffs.append(f"{name}: checkpoint {theirs.get(key)!r} vs config {mine[key]!r}")
    if diffs:
        raise StageError(
            f"checkpoint {str(path)!r} was trained with preset {theirs.get('preset')!r} and does not match this config "
            f"(preset {mine['preset']!r}): {'; '.join(diffs)}; evaluate with the training preset/overrides"
        )
