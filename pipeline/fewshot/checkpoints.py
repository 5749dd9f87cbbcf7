"""Checkpoints of the trainable weights: which one a run scores, writing, reading and checking them.

A checkpoint is `{"trainable": state dict, "identity": what the weights belong to, "config": the resolved
config, ...extras}` (`save_checkpoint`). `checkpoint_path` decides which file evaluation, the prefix and
export use (`evaluate.checkpoint`, else best.pt of the train artifact, verified against its manifest);
`load_checkpoint` reads one (a file inside an artifact must match its manifest first) and
`check_checkpoint` refuses one made for another backbone or protocol, naming the differences.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore, file_fingerprint
from pipeline.atomic import atomic_open
from pipeline.config import Config
from pipeline.contract import StageError
from pipeline.settings.model import model_fields

__all__ = [
    "IDENTITY_FIELDS", "check_checkpoint", "checkpoint_fingerprint", "checkpoint_path", "load_checkpoint", "model_identity",
    "save_checkpoint",
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


def model_identity(cfg: Config) -> dict[str, Any]:
    """What the weights belong to, as versions hash it (no preset name: a label that no version holds)."""
    return {"model": model_fields(cfg.model, IDENTITY_FIELDS), "num_frames": cfg.protocol.num_frames,
            "num_sub_actions": cfg.protocol.num_sub_actions}


def save_checkpoint(path: Path, model: torch.nn.Module, cfg: Config, *, stored: Mapping[str, Any] | None = None, **extra: Any) -> None:
    """Trainable weights + the stored config (`stored`, default `cfg.stored()`) + extras, written atomically."""
    config = dict(stored) if stored is not None else cfg.stored()
    payload = {"trainable": model.trainable_state_dict(), "identity": model_identity(cfg), "config": config, **extra}
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
            f"checkpoint {str(path)!r} does not match this config (preset {cfg.preset!r}): {'; '.join(diffs)}; "
            f"evaluate with the training preset/overrides"
        )


def checkpoint_path(cfg: Config, inputs: Mapping[str, ArtifactRef]) -> Path:
    """The checkpoint to score, verified: `evaluate.checkpoint`, else best.pt of the train input."""
    if cfg.evaluate.checkpoint:
        path = Path(cfg.evaluate.checkpoint).expanduser()
        if not path.is_file():
            raise StageError(f"checkpoint {str(path)!r} does not exist; train first or pass an existing file with --checkpoint")
        file_fingerprint(path)  # a file inside an artifact must match its manifest
        return path
    if "train" not in inputs:
        raise StageError("evaluate needs a checkpoint: run `fsar train` first or pass --checkpoint FILE")
    return ArtifactStore(inputs["train"].root).verified_path(inputs["train"], "best.pt")


def checkpoint_fingerprint(cfg: Config) -> str:
    """The content fingerprint of the explicit `evaluate.checkpoint` file (what versions hash); a missing file is an error."""
    path = Path(cfg.evaluate.checkpoint).expanduser()
    if not path.is_file():
        raise StageError(f"checkpoint {str(path)!r} does not exist; train first or pass an existing file with --checkpoint")
    return file_fingerprint(path)
