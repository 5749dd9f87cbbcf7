"""Where few-shot code runs: the device a setting names, and the rank/world of a torchrun launch."""

from __future__ import annotations

import os

import torch

from pipeline.contract import StageError

__all__ = ["dist_info", "pick_device"]


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
