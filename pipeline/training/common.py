"""What training and evaluation share: the device, the model and its data (`prepare`), checkpoints.

Episodes and their tensors live in `pipeline.training.episodes` and `pipeline.training.data`; the names
`EpisodeBatch`, `EpisodeLoader` and `videos_by_class` are re-exported here for older imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import ArtifactRef, file_fingerprint
from pipeline.atomic import atomic_open
from pipeline.config import Config
from pipeline.precision import autocast  # re-exported: the one autocast helper (config model.amp)
from pipeline.settings.model import model_fields
from pipeline.stage import StageError
from pipeline.training.data import EpisodeBatch, EpisodeLoader  # re-exported (older imports)
from pipeline.training.episodes import videos_by_class  # re-exported (older imports)

__all__ = [
    "EpisodeBatch",
    "EpisodeLoader",
    "autocast",
    "check_checkpoint",
    "dist_info",
    "load_checkpoint",
    "model_identity",
    "pick_device",
    "prepare",
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


def prepare(cfg: Config, inputs: Mapping[str, ArtifactRef], device: torch.device):
    """(model, loader, frame store) for a config and its frames/embeddings inputs: what train and evaluate start from."""
    from pipeline.embeddings import TextCache
    from pipeline.frames import FrameStore
    from pipeline.model import build_model

    frames = FrameStore.open(inputs["frames"].dataset, inputs["frames"].version, root=inputs["frames"].root)
    text = TextCache(inputs["embeddings"])
    check_text_cache(cfg, text)
    model = build_model(cfg.model, cfg.protocol, device=device)
    loader = EpisodeLoader(frames, text, cfg, model.image_mean, model.image_std, device, text_keep=model.text_keep)
    return model, loader, frames


def check_text_cache(cfg: Config, text: Any) -> None:
    """The embeddings artifact was made for this config's text model, else a one-line error."""
    got = text.config.get("model", {})
    want = model_fields(cfg.model, ["clip", "pretrained", "init_seed", "text_adapted_layers"])
    diffs = [f"{k}: cache {got.get(k)!r} vs config {v!r}" for k, v in want.items() if got.get(k) != v]
    if diffs:
        raise StageError(f"the embeddings artifact was made for another text model ({'; '.join(diffs)}); re-run `fsar embeddings` with this config")


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
