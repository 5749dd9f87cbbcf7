"""Config of the train and evaluate stages."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator

from pipeline.settings.section import Section

__all__ = ["DeviceName", "EvaluateConfig", "TrainConfig", "check_device"]

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(name: str) -> str:
    """A device string torch accepts and fsar supports: auto, cpu, cuda, cuda:N or mps."""
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    return name


DeviceName = Annotated[str, AfterValidator(check_device)]


class TrainConfig(Section):
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # the paper: SGD without momentum
    lr: float = Field(default=1e-3, gt=0.0)  # learning rate
    momentum: float = Field(default=0.0, ge=0.0, lt=1.0)  # SGD momentum
    weight_decay: float = Field(default=0.0, ge=0.0)  # weight decay
    epochs: int = Field(default=10, ge=1)  # epochs of episodes_per_epoch training episodes
    episodes_per_epoch: int = Field(default=1000, ge=1)  # training episodes per epoch
    episodes_per_step: int = Field(default=1, ge=1)  # episodes whose gradients are averaged per optimiser step (per rank)
    # of a step's episodes, this many run as one batched forward and backward (task attention never mixes episodes;
    # the gradients equal running them one by one); None = all of them; lower it if a step runs out of memory
    episodes_per_pass: int | None = Field(default=None, ge=1)
    val_episodes: int = Field(default=1000, ge=1)  # validation episodes (val split)
    warmup_epochs: int = Field(default=9, ge=0)  # validate only from this 0-based epoch on (paper: epoch > 8)
    val_every: int | None = Field(default=None, ge=1)  # also validate every this many episodes (None: per epoch)
    seed: int = 0  # training episodes and init
    device: DeviceName = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint_every: int = Field(default=200, ge=1)  # episodes between resumable checkpoints
    log_every: int = Field(default=10, ge=1)  # episodes between progress updates (and reads of the loss from the device)
    resume: bool = False  # continue a killed run from its last checkpoint (not part of the version)
    # threads preparing episodes ahead of the step (0 = in the loop, synchronously); "auto" = 1 on CPU, up to 8 on a GPU
    loader_workers: int | Literal["auto"] = "auto"
    # speed options (CUDA; off unless measured faster: benchmarks/train.py): capture the fixed-shape training step in
    # a CUDA graph (replayed each step), or run the step's forward and backward through torch.compile
    cuda_graphs: bool = False
    compile: bool = False

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        return _workers(value)


class EvaluateConfig(Section):
    episodes: int = Field(default=10000, ge=1)  # test episodes
    shot: int | None = Field(default=None, ge=1)  # K at test; None = protocol.shot
    seed: int = 2024  # test episodes' seed (same seed -> same saved episodes)
    split: Literal["train", "val", "test"] = "test"  # split evaluated
    cache: bool = True  # run the frozen vision prefix once per video
    # where that prefix lives: `artifact` (true): the `prefix` stage's artifact (computed once, shared by evaluation
    # runs; with model.temporal_embedding_at=first_adapted also by checkpoints and description corpora); `memory`
    # (false): computed by evaluate and kept on its device; `auto`: memory on a GPU when the trained temporal
    # embedding enters the prefix (temporal_embedding_at=input: an artifact would serve this checkpoint only, and
    # writing and re-reading gigabytes costs more than recomputing), else artifact (CPU runs, the first_adapted variant)
    prefix: bool | Literal["auto", "artifact", "memory"] = "auto"
    prefix_dtype: Literal["float32", "float16"] = "float32"  # stored dtype of the prefix artifact (float16: half the disk)
    # episodes scored per pass through the adapted blocks (same results as one at a time; not part of the version);
    # "auto" = 1 on CPU (batching is slower there), 64 on CUDA; lower it if evaluation runs out of memory
    episodes_per_batch: int | Literal["auto"] = "auto"
    videos_per_pass: int | None = Field(default=None, ge=1)  # videos per pass through the frozen prefix; None = 16 on CPU, 128 on CUDA
    loader_workers: int | Literal["auto"] = "auto"  # threads loading clips ahead of the prefix passes; "auto" as train.loader_workers
    baselines: bool = True  # also score the frozen-CLIP prototype baseline, visual-only and semantic-only
    untrained: bool = False  # also score the full model at its training initialisation (a second model in memory)
    device: DeviceName = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint: str | None = None  # checkpoint file to evaluate; None = best checkpoint of the latest train artifact
    descriptions_label: str | None = None  # name of the corpus in the results; None = `llm` or `file` by backend

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        return _workers(value)

    @field_validator("episodes_per_batch", mode="before")
    @classmethod
    def _check_episodes_per_batch(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("use 'auto' or a whole number of episodes >= 1")


def _workers(value: object) -> object:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("use 'auto' or a whole number of threads >= 0 (0: load in the loop, no threads)")
