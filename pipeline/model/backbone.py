"""The frozen open_clip backbone: the tiny registered configs and loading by name + weights.

    backbone = load_backbone("fsar-tiny", pretrained=None, image_size=64)   # random weights
    backbone = load_backbone("ViT-B-16", pretrained="/ckpt/vit_b16.pt", image_size=224)

`pretrained` is an open_clip tag of that model (downloaded by open_clip), a local checkpoint file
(a state dict, as `torch.save(clip.state_dict(), path)` writes) or None for random weights.
Preprocessing constants (mean, std) travel with the weights: the tag's when it has them, else
open_clip's defaults (OpenAI CLIP's).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import FsarError
from pipeline.logs import relay_root_records
from pipeline.model.startup import import_open_clip, no_weight_init

open_clip = import_open_clip()  # without torch._dynamo and timm, which fsar never uses (see startup.py)
from open_clip.transformer import ResidualAttentionBlock, TextTransformer, VisionTransformer  # noqa: E402

__all__ = ["Backbone", "BackboneError", "CLIP_CONFIG_DIR", "load_backbone", "register_clip_configs", "text_module"]

CLIP_CONFIG_DIR = Path(__file__).resolve().parent / "clip_configs"  # fsar-tiny, fsar-micro (open_clip JSON configs)


class BackboneError(FsarError, ValueError):
    """The open_clip model name, its weights or its architecture cannot be used; the message says why."""


@dataclass(frozen=True)
class Backbone:
    clip: nn.Module  # open_clip CLIP (or CustomTextCLIP with open_clip's own text transformer)
    tokenizer: Callable[..., torch.Tensor]  # open_clip tokenizer of that model: list[str] -> (P, ctx)
    image_mean: tuple[float, float, float]  # per-channel mean the weights were trained with
    image_std: tuple[float, float, float]  # per-channel std the weights were trained with
    quick_gelu: bool  # activation of the frozen MLPs
    weights: str  # "random", "tag:<tag>" or "file:<path>"


def register_clip_configs() -> list[str]:
    """Add the JSON configs under clip_configs/ to open_clip's registry (idempotent); their names."""
    names = sorted(p.stem for p in CLIP_CONFIG_DIR.glob("*.json"))
    if not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(CLIP_CONFIG_DIR)
    return names


register_clip_configs()  # on import: open_clip.create_model("fsar-tiny") works once this module is loaded


def load_backbone(
    name: str,
    pretrained: str | None,
    image_size: int,
    quick_gelu: bool | None = None,
    device: str | torch.device = "cpu",
) -> Backbone:
    """Build open_clip model `name` at `image_size` with the given weights; every parameter frozen."""
    with relay_root_records("open_clip", _open_clip_lines(name, pretrained)):  # open_clip logs on the root logger
        return _load_backbone(name, pretrained, image_size, quick_gelu, device)


def _load_backbone(name: str, pretrained: str | None, image_size: int, quick_gelu: bool | None, device: str | torch.device) -> Backbone:
    arch = _architecture(name)
    _check_image_size(name, arch, image_size)
    kind, tag_cfg = _resolve_weights(name, pretrained)
    if kind == "tag":
        _check_tag_available(name, str(pretrained), tag_cfg)
    gelu = _activation(name, arch, kind, tag_cfg, quick_gelu)
    clip = _create(name, pretrained, image_size, gelu, torch.device(device))
    check_architecture(clip, name)
    clip.requires_grad_(False)
    clip.eval()
    pre = clip.visual.preprocess_cfg
    return Backbone(
        clip=clip,
        tokenizer=open_clip.get_tokenizer(name),
        image_mean=tuple(float(v) for v in pre["mean"]),  # type: ignore[arg-type]
        image_std=tuple(float(v) for v in pre["std"]),  # type: ignore[arg-type]
        quick_gelu=gelu,
        weights="random" if kind is None else f"{kind}:{pretrained}",
    )


def text_module(clip: nn.Module) -> nn.Module:
    """The module holding token_embedding, positional_embedding, transformer, ln_final, text_projection."""
    return clip.text if isinstance(getattr(clip, "text", None), TextTransformer) else clip


def check_architecture(clip: nn.Module, name: str) -> None:
    """Task-Adapter++ reuses open_clip's ViT blocks and its own text transformer; refuse anything else."""
    visual = getattr(clip, "visual", None)
    if not isinstance(visual, VisionTransformer):
        raise BackboneError(f"clip {name!r}: the vision tower is {type(visual).__name__}, not open_clip's VisionTransformer")
    if visual.attn_pool is not None or visual.pool_type != "tok" or visual.final_ln_after_pool:
        raise BackboneError(f"clip {name!r}: only class-token pooling (pool_type 'tok', no attentional pool) is supported")
    if not isinstance(visual.patch_dropout, nn.Identity):
        raise BackboneError(f"clip {name!r}: patch dropout is not supported")
    text = text_module(clip)
    if not hasattr(text, "token_embedding") or getattr(text, "cls_emb", None) is not None:
        raise BackboneError(f"clip {name!r}: the text tower must be open_clip's causal TextTransformer")
    if getattr(text, "attn_mask", None) is None:
        raise BackboneError(f"clip {name!r}: the text tower has no causal mask")
    for tower, blocks in (("vision", visual.transformer.resblocks), ("text", text.transformer.resblocks)):
        for block in blocks:
            _check_block(block, name, tower)


def _check_block(block: nn.Module, name: str, tower: str) -> None:
    plain = (
        isinstance(block, ResidualAttentionBlock)
        and isinstance(block.ls_1, nn.Identity)
        and isinstance(block.ls_2, nn.Identity)
        and block.attn._qkv_same_embed_dim
        and block.attn.bias_k is None
        and not block.attn.add_zero_attn
    )
    if not plain:
        raise BackboneError(f"clip {name!r}: {tower} blocks must be plain residual attention blocks (no layer scale, custom attention)")


def _activation(name: str, arch: dict[str, Any], kind: str | None, tag_cfg: dict[str, Any], quick_gelu: bool | None) -> bool:
    """QuickGELU or GELU in the frozen MLPs: the config's choice, else the tag's, else the open_clip config's."""
    if quick_gelu is not None:
        return quick_gelu
    if kind == "tag":
        return bool(tag_cfg.get("quick_gelu", False))
    gelu = bool(arch.get("quick_gelu", False))
    if kind == "file" and "quick_gelu" not in arch:
        warnings.warn(
            f"clip {name!r} loaded from a checkpoint file runs GELU (its open_clip config names no activation); "
            "weights trained with QuickGELU (OpenAI's) need model.quick_gelu=true",
            stacklevel=3,
        )
    return gelu


def _architecture(name: str) -> dict[str, Any]:
    register_clip_configs()
    arch = open_clip.get_model_config(name)
    if arch is None or not all(k in arch for k in ("embed_dim", "vision_cfg", "text_cfg")):
        registered = ", ".join(register_clip_configs())
        raise BackboneError(
            f"unknown clip {name!r}; use an open_clip model name (e.g. ViT-B-16, ViT-B-32, ViT-L-14) or one registered here: {registered}"
        )
    if arch["vision_cfg"].get("timm_model_name") or arch["text_cfg"].get("hf_model_name"):
        raise BackboneError(
            f"clip {name!r} has a timm or Hugging Face tower; Task-Adapter++ here adapts open_clip's own ViT and text "
            "transformer blocks: use e.g. ViT-B-16, ViT-B-32 or ViT-L-14"
        )
    return arch


def _check_image_size(name: str, arch: dict[str, Any], image_size: int) -> None:
    patch = arch["vision_cfg"].get("patch_size")
    if not isinstance(patch, int):
        raise BackboneError(f"clip {name!r} is not a ViT with square patches (patch_size={patch!r})")
    if image_size % patch:
        raise BackboneError(f"image_size {image_size} is not a multiple of the patch size {patch} of clip {name!r}")


def _resolve_weights(name: str, pretrained: str | None) -> tuple[str | None, dict[str, Any]]:
    """(None | "tag" | "file", the tag's open_clip config)."""
    if pretrained is None:
        return None, {}
    tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
    if tag_cfg:
        return "tag", dict(tag_cfg)
    if Path(pretrained).expanduser().is_file():
        return "file", {}
    tags = open_clip.list_pretrained_tags_by_model(name)
    raise BackboneError(
        f"pretrained {pretrained!r} is neither an open_clip tag of {name!r} (tags: {', '.join(tags) or 'none'}) "
        "nor an existing checkpoint file; use null for random weights"
    )


def _check_tag_available(name: str, tag: str, tag_cfg: dict[str, Any]) -> None:
    """Fail in seconds, in one line, when a tag's weights are neither cached nor downloadable (offline):
    open_clip would otherwise retry the download for a minute before failing."""
    import os
    import socket
    from urllib.parse import urlparse

    hub, url = tag_cfg.get("hf_hub", ""), tag_cfg.get("url", "")
    if hub:
        from huggingface_hub import try_to_load_from_cache

        repo, filename = os.path.split(hub)
        filename = filename or "open_clip_pytorch_model.bin"
        names = {filename, str(Path(filename).with_suffix(".safetensors")), "open_clip_model.safetensors"}
        if any(isinstance(try_to_load_from_cache(repo, f), str) for f in names):
            return
        host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
        offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    elif url:
        if (Path("~/.cache/clip").expanduser() / os.path.basename(urlparse(url).path)).is_file():
            return
        host, offline = urlparse(url).hostname or url, False
    else:
        return
    why = "HF_HUB_OFFLINE is set" if offline else f"{host} cannot be reached"
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=3).close()
            return
        except OSError:
            pass
    raise BackboneError(
        f"the {tag!r} weights of clip {name!r} are not in the local cache and {why}; download them on a connected "
        f"machine, or give a local checkpoint file with model.pretrained=/path/to/file (null: random weights)"
    )


def _open_clip_lines(name: str, pretrained: str | None) -> Callable[[logging.LogRecord], tuple[int, str] | None]:
    """open_clip's words reworded where fsar knows what the user can do (the rest keep open_clip's words)."""

    def reword(record: logging.LogRecord) -> tuple[int, str] | None:
        if not record.getMessage().startswith("No pretrained weights loaded"):
            return None
        if pretrained is None:  # what model.pretrained=null asks for
            return logging.DEBUG, f"model: clip {name!r} starts from random weights (model.pretrained is null; model.init_seed seeds them)"
        return logging.WARNING, f"model: open_clip loaded no weights for clip {name!r} from {pretrained!r}; check model.pretrained"

    return reword


def _create(name: str, pretrained: str | None, image_size: int, quick_gelu: bool, device: torch.device) -> nn.Module:
    path = Path(pretrained).expanduser() if pretrained is not None else None
    is_file = path is not None and path.is_file()
    kwargs: dict[str, Any] = dict(
        pretrained=str(path) if is_file else pretrained, force_image_size=image_size, quick_gelu=quick_gelu, device=device
    )
    if device.type == "meta":
        if pretrained is not None:
            raise BackboneError("a model on the meta device cannot load weights; use pretrained=None")
        with torch.device("meta"):
            return open_clip.create_model(name, **kwargs)
    try:
        if pretrained is None:
            return open_clip.create_model(name, **kwargs)
        with no_weight_init():  # every weight comes from the checkpoint (open_clip loads it with strict=True)
            return open_clip.create_model(name, **kwargs)
    except RuntimeError as exc:
        hint = "" if is_file else " Offline, download them elsewhere and set model.pretrained to the local checkpoint file."
        raise BackboneError(f"could not load the {pretrained!r} weights of clip {name!r}: {str(exc).rstrip('.')}.{hint}") from exc
