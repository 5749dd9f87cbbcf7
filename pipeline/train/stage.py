"""The train stage: episodic training of the Task-Adapter++ adapters on the train split.

Protocol (docs/method.md): the preset's optimiser (SGD, lr 1e-3, no momentum), epochs x episodes,
validation on the val split (`train.val_split`) from epoch `train.warmup_epochs` on (0-based; the paper: epoch > 8), the
best validated checkpoint kept. Episode i and its frame sampling depend only on (seed, i), so a
resumed run continues exactly where the killed one stopped. The loop is `trainer.Trainer`; progress,
TensorBoard events and curves are `monitor`.

Artifact files: `metrics.parquet` (main: step, epoch, episode, loss, accuracy, lr; wall-clock time only
in the manifest's summary, so equal versions hold equal bytes),
`validation.parquet`, `best.pt`, `last.pt` (trainable weights + the config its version covers), `config.json`,
`curves.png` and `events.out.tfevents.fsar` (TensorBoard).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging, compute_version
from pipeline.config import RUNTIME_FIELDS, Config, section_dict
from pipeline.contract import StageError, build_once
from pipeline.fewshot.devices import dist_info
from pipeline.fewshot.episodes import check_splits
from pipeline.settings.model import model_fields
from pipeline.train.trainer import Trainer

__all__ = ["FORMAT_VERSION", "VOLATILE", "plan_fields", "run"]

FORMAT_VERSION = 2  # 2: config.json and the checkpoints hold only what the version covers (trainer.STORED_CONFIG)
# Train fields that do not change the result (left out of the version: config.RUNTIME_FIELDS); the speed options
# change at most the rounding, like the device does.
VOLATILE = tuple(key.split(".", 1)[1] for key in RUNTIME_FIELDS if key.startswith("train."))


def plan_fields(cfg: Config, inputs: dict[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes: model (weights by content), protocol, the train section less runtime fields."""
    return _fields(cfg, dist_info()[1])


def _fields(cfg: Config, world: int) -> dict[str, Any]:
    train = {k: v for k, v in section_dict(cfg.train).items() if k not in VOLATILE}
    return {
        "model": model_fields(cfg.model),
        "protocol": section_dict(cfg.protocol),
        "train": train,
        "episodes_per_global_step": world * cfg.train.episodes_per_step,
    }


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    for need in ("frames", "embeddings"):
        if need not in inputs:
            raise StageError(f"train needs a {need} artifact; run `fsar {need}` first")
    check_splits(inputs["frames"], cfg.protocol, {"train": cfg.protocol.shot, cfg.train.val_split: cfg.protocol.shot})  # before any model
    if cfg.train.val_split != "val":
        log.warning(f"train.val_split={cfg.train.val_split}: the checkpoint is picked on the {cfg.train.val_split} split, as the "
                    f"released code does (docs/method.md, defect 2), so its accuracy there is optimistic; use it to measure that bias only")
    rank, world = dist_info()
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() and cfg.train.device != "cpu" else "gloo"
        torch.distributed.init_process_group(backend)
    fields = _fields(cfg, world)
    stage_inputs = {"frames": inputs["frames"], "embeddings": inputs["embeddings"]}
    if rank != 0:  # other ranks train alongside rank 0 but publish nothing
        with tempfile.TemporaryDirectory() as tmp:
            Trainer(cfg, inputs, Path(tmp)).fit()
        torch.distributed.barrier()
        return store.ref("train", cfg.dataset.name, compute_version("train", FORMAT_VERSION, fields, stage_inputs))

    def build(staging: Staging) -> None:
        Trainer(cfg, inputs, staging.dir).fit(staging)

    ref = build_once(
        store, "train", cfg.dataset.name, config=fields, inputs=stage_inputs, build=build, main="metrics.parquet",
        format_version=FORMAT_VERSION, resume=True,
    )
    if world > 1:
        torch.distributed.barrier()
    return ref
