"""The one precision switch, `model.amp`, and the one autocast helper every forward pass uses.

    with autocast(device, cfg.model.amp):   # bf16 autocast on CUDA when enabled; fp32 otherwise (CPU always)
        scores = model(...)

The model's towers (`TaskAdapterPP`), training, evaluation and prediction all enter it with the same
setting, so `model.amp=false` runs everything in fp32 on CUDA too. Imports only torch.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["autocast"]


def autocast(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """bf16 autocast on a CUDA `device` when `enabled` (config `model.amp`); a no-op (fp32) otherwise."""
    if enabled and torch.device(device).type == "cuda":
        # no cast cache while a CUDA graph is being captured (torch.cuda.graph's rule for autocast)
        return torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=not torch.cuda.is_current_stream_capturing())
    return contextlib.nullcontext()
