"""Contrastive pre-training of a random-init open_clip model on the caption stream.

The loss is open_clip's `ClipLoss` (symmetric cross-entropy of `logit_scale * image @ text.T`, the
model's own learnable logit scale, clamped to 100 as open_clip's trainer does), generalised to
several correct texts per frame: when two frames of a batch share a description ("the object is
medium in the center"), each is a positive of the other's text instead of a false negative. With
one correct text per frame it is exactly `ClipLoss` (a test).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.logs import relay_root_records
from pipeline.model.backbone import register_clip_configs

__all__ = ["clip_loss", "create_clip", "encode_text", "lr_at", "make_optimizer", "register_clip", "train"]

MAX_LOGIT_SCALE = math.log(100.0)


def register_clip(name: str) -> None:
    """Make sure open_clip knows `name` (the tiny configs are registered in one place: pipeline.model.backbone)."""
    tiny = register_clip_configs()
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {name!r}; use a registered tiny config ({', '.join(tiny)})")


def _random_start(record: logging.LogRecord) -> tuple[int, str] | None:
    if record.getMessage().startswith("No pretrained weights loaded"):  # what pre-training starts from, by design
        return logging.DEBUG, "backbone: pre-training starts from random weights (seeded by backbone.seed)"
    return None


def create_clip(name: str, image_size: int, seed: int, pos_init: str = "random") -> nn.Module:
    """Random-init open_clip model `name` built for `image_size`, deterministic for `seed`.

    pos_init "sincos" starts the vision tower's (learnable) positional embedding from 2D sin-cos
    values, as MAE does: where things are is then as loud as what they are from the first step.
    """
    register_clip(name)
    torch.manual_seed(seed)
    with relay_root_records("open_clip", _random_start):  # open_clip logs on the root logger: its lines become fsar's
        clip = open_clip.create_model(name, pretrained=None, force_image_size=image_size)
    if pos_init == "sincos":
        init_sincos_positions(clip)
    elif pos_init != "random":
        raise ValueError(f"unknown pos_init {pos_init!r}; choose sincos or random")
    return clip


def init_sincos_positions(clip: nn.Module) -> None:
    """Overwrite the ViT's positional embedding (class token row: zeros) with 2D sin-cos values."""
    from open_clip.pos_embed import get_2d_sincos_pos_embed

    pos = clip.visual.positional_embedding  # (1 + gh * gw, D)
    gh, gw = clip.visual.grid_size
    if gh != gw or pos.shape[0] != 1 + gh * gw:
        raise ValueError(f"sin-cos positions need a square patch grid with a class token, got {gh}x{gw} and {tuple(pos.shape)}")
    with torch.no_grad():
        pos.copy_(torch.from_numpy(get_2d_sincos_pos_embed(pos.shape[1], gh, cls_token=True)).to(pos.dtype))


def encode_text(clip: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """`clip.encode_text(tokens)` (unnormalised, (P, E)), run on the shortest context that holds every
    end-of-text token. With the causal mask and argmax pooling the result is identical; it is what
    makes short captions cheap. Other text towers fall back to `encode_text` itself."""
    plain = isinstance(clip, open_clip.CLIP) and getattr(clip, "text_pool_type", None) == "argmax" and clip.attn_mask is not None
    if not plain:
        return clip.encode_text(tokens)
    n = int(tokens.argmax(dim=-1).max()) + 1
    t = tokens[:, :n]  # (P, n)
    x = clip.token_embedding(t) + clip.positional_embedding[:n]  # (P, n, D_t)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:n, :n])
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0], device=x.device), t.argmax(dim=-1)]  # (P, D_t) at the end-of-text token
    proj = clip.text_projection
    return proj(x) if isinstance(proj, nn.Linear) else x @ proj  # (P, E)


def clip_loss(image_features: torch.Tensor, text_features: torch.Tensor, logit_scale: torch.Tensor,
              positives: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(loss, logits (B, B)) for normalised features; positives[i, j]: text j describes frame i (default: the diagonal)."""
    logits = logit_scale * image_features @ text_features.T  # (B, B)
    if positives is None:
        positives = torch.eye(len(logits), dtype=torch.bool, device=logits.device)
    target = positives.float()
    loss_i = -(target / target.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()  # frame -> texts
    loss_t = -(target / target.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()  # text -> frames
    return (loss_i + loss_t) / 2, logits


def make_optimizer(clip: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW (CLIP's betas 0.9/0.98, eps 1e-6); no decay on gains, biases, embeddings and the logit scale."""
    decay, rest = [], []
    for name, p in clip.named_parameters():
        (decay if p.ndim >= 2 and "embedding" not in name else rest).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)


def lr_at(progress: float, step: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up over the first steps, then cosine decay to 0 as progress (0..1) runs out."""
    if step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    return peak * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


@dataclass
class TrainResult:
    metrics: list[dict[str, float]]  # one row per step: step, loss, lr, logit_scale, batch_top1
    steps: int  # steps done
    seconds: float  # wall-clock of the loop (for logs and the manifest, never for results)


def train(clip: nn.Module, tokenizer: Callable[[list[str]], torch.Tensor], next_batch: Callable[[], tuple[torch.Tensor, list[str], torch.Tensor]],
          *, steps: int, lr: float, weight_decay: float, warmup_steps: int, progress: bool = True,
          device: torch.device | str = "cpu") -> TrainResult:
    """Train in place for exactly `steps` steps (warm-up, then cosine decay over step / steps): the result
    never depends on how fast the machine is."""
    from tqdm.auto import tqdm

    opt = make_optimizer(clip, lr, weight_decay)
    clip.train()
    rows: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(total=steps, desc="backbone", unit="step", disable=not progress, mininterval=2.0)
    step = 0
    while step < steps:
        rate = lr_at(step / steps, step, lr, warmup_steps)
        for g in opt.param_groups:
            g["lr"] = rate
        images, texts, pos = next_batch()
        uniq = sorted(set(texts))
        where = torch.tensor([uniq.index(t) for t in texts], device=device)
        pos = pos.to(device)
        img = F.normalize(clip.encode_image(images.to(device)), dim=-1)  # (B, E)
        txt = F.normalize(encode_text(clip, tokenizer(uniq).to(device)), dim=-1)[where]  # (B, E)
        loss, logits = clip_loss(img, txt, clip.logit_scale.exp(), pos)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            top1 = float(pos[torch.arange(len(pos), device=device), logits.argmax(1)].float().mean())
            scale = float(clip.logit_scale.exp())
        step += 1
        rows.append({"step": step, "loss": float(loss.detach()), "lr": rate,
                     "logit_scale": scale, "batch_top1": top1})
        bar.update(1)
        if step % 10 == 0 or step == 1:
            window = rows[-10:]
            bar.set_postfix(loss=f"{np.mean([r['loss'] for r in window]):.3f}", top1=f"{np.mean([r['batch_top1'] for r in window]):.2f}", lr=f"{rate:.1e}")
    bar.close()
    clip.eval()
    return TrainResult(rows, step, time.perf_counter() - start)
