"""The vision-prefix stage: the frozen first L-M vision blocks, run once per video and stored.

At evaluation every parameter is fixed and frame sampling is deterministic, so the states after the
frozen blocks 1..L-M of each video of the evaluated split are the same in every episode, every
evaluation run and every description corpus that shares the frames and the backbone
(docs/method.md, "Speed"). This stage computes them once and stores them as an artifact; the evaluate
stage reads them instead of running the frozen blocks again.

What the states depend on (the version):
- the frames artifact, the backbone (`model.clip`, weights by content, `model.init_seed`), the image
  size, M (`model.vision_adapted_layers`), T, `model.amp`, the split, the stored dtype;
- with the faithful `model.temporal_embedding_at=input`, also the trained temporal embedding, because it
  is added *before* the frozen blocks: the train artifact (or `evaluate.checkpoint` by content) is then
  an input, and the artifact is reusable across evaluation runs of that checkpoint only (other episodes,
  shots, seeds, task contexts). With `temporal_embedding_at=first_adapted` (a change to the method) no
  trained weight enters the prefix, so one artifact serves every checkpoint and every corpus.

Artifact files:
- `videos.parquet` (main table): row, video_id, class, split
- `states.npy`: [V, T, P+1, D] states in `evaluate.prefix_dtype` (float16 halves the disk; see the README
  for the measured effect on scores)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import logging
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.config import Config
from pipeline.contract import StageError, build_once
from pipeline.fewshot.checkpoints import check_checkpoint, checkpoint_fingerprint, checkpoint_path, load_checkpoint
from pipeline.fewshot.devices import pick_device
from pipeline.fewshot.episodes import videos_by_class
from pipeline.fewshot.loader import EpisodeLoader, workers_for
from pipeline.fewshot.scoring import videos_per_pass_for
from pipeline.frames import FrameStore
from pipeline.model import build_model
from pipeline.precision import autocast
from pipeline.settings.model import model_fields

__all__ = [
    "FORMAT_VERSION", "PREFIX_MODEL_FIELDS", "PrefixStates", "enabled", "mode", "plan_fields", "run", "upstream_for", "videos_table",
    "write_states",
]

log = logging.getLogger("fsar")

FORMAT_VERSION = 1
BATCH = 16  # videos per pass through the frozen blocks on CPU (`evaluate.videos_per_pass`: 128 on CUDA)
# The model fields the frozen prefix depends on (the adapters of the last M blocks do not enter it).
PREFIX_MODEL_FIELDS = ("clip", "pretrained", "init_seed", "image_size", "vision_adapted_layers", "temporal_embedding_at", "amp")


def mode(cfg: Config) -> str:
    """Where evaluation keeps the frozen prefix: "artifact" or "memory" (`evaluate.prefix`, with "auto" decided here).

    auto: memory when evaluation runs on a GPU and the trained temporal embedding enters the prefix
    (`model.temporal_embedding_at=input`: the artifact would serve that one checkpoint, and on a GPU computing the
    prefix takes about a second where writing, checksumming and re-reading its gigabytes take many); else artifact.
    """
    setting = cfg.evaluate.prefix
    if setting is True or setting == "artifact":
        return "artifact"
    if setting is False or setting == "memory":
        return "memory"
    device = cfg.evaluate.device
    on_gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "memory" if on_gpu and needs_checkpoint(cfg) else "artifact"


def enabled(cfg: Config) -> bool:
    """The stage runs when evaluation caches per video and keeps the prefix in an artifact (`mode`)."""
    return bool(cfg.evaluate.cache) and mode(cfg) == "artifact"


def needs_checkpoint(cfg: Config) -> bool:
    """True when a trained weight (the temporal embedding, added at the input) enters the frozen prefix."""
    return cfg.model.temporal_embedding_at == "input"


def upstream_for(cfg: Config) -> tuple[str, ...]:
    """frames, plus train when the trained temporal embedding enters the prefix and no checkpoint file is given."""
    return ("frames", "train") if needs_checkpoint(cfg) and not cfg.evaluate.checkpoint else ("frames",)


def plan_fields(cfg: Config, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes (the frames and train inputs are hashed by version)."""
    fields: dict[str, Any] = {
        "model": model_fields(cfg.model, PREFIX_MODEL_FIELDS),
        "num_frames": cfg.protocol.num_frames,
        "split": cfg.evaluate.split,
        "dtype": cfg.evaluate.prefix_dtype,
    }
    if needs_checkpoint(cfg) and cfg.evaluate.checkpoint:
        fields["checkpoint"] = checkpoint_fingerprint(cfg)
    return fields


def run(cfg: Config, inputs: dict[str, ArtifactRef], store: ArtifactStore) -> ArtifactRef:
    """Store the frozen vision prefix of every usable video of `evaluate.split` (eval frame sampling)."""
    for need in upstream_for(cfg):
        if need not in inputs:
            raise StageError(f"the prefix stage needs a {need} artifact; run `fsar {need}` first")
    fields = plan_fields(cfg, inputs)

    def build(staging: Staging) -> None:
        _build(staging, cfg, inputs)

    return build_once(
        store, "prefix", cfg.dataset.name, config=fields, inputs={k: inputs[k] for k in upstream_for(cfg)}, build=build,
        main="videos.parquet", format_version=FORMAT_VERSION,
    )


def _build(staging: Staging, cfg: Config, inputs: Mapping[str, ArtifactRef]) -> None:
    device = pick_device(cfg.evaluate.device, "evaluate.device")
    frames = FrameStore.open(inputs["frames"].dataset, inputs["frames"].version, root=inputs["frames"].root)
    model = build_model(cfg.model, cfg.protocol, device=device).eval()
    if needs_checkpoint(cfg):
        _load_trained(model, cfg, inputs)
    loader = EpisodeLoader(frames, None, cfg, model.image_mean, model.image_std, device)
    by_class, _ = videos_by_class(frames.index, cfg.evaluate.split, cfg.protocol.num_frames)
    table = videos_table(by_class, cfg.evaluate.split)
    if table.empty:
        raise StageError(f"split {cfg.evaluate.split!r} of the frames artifact {inputs['frames']} has no usable video; "
                         f"check the frames stage's log (failed or short videos)")
    write_states(staging, model, loader, table, cfg.evaluate.prefix_dtype, cfg.model.amp, videos_per_pass_for(cfg.evaluate.videos_per_pass, device),
                 workers_for(cfg.evaluate.loader_workers, device))
    staging.extra["summary"] = {"videos": len(table), "split": cfg.evaluate.split, "dtype": cfg.evaluate.prefix_dtype}
    log.info(f"prefix: {len(table)} videos of split {cfg.evaluate.split} through the frozen blocks "
             f"1..{model.vision.num_frozen} ({cfg.evaluate.prefix_dtype})")


def videos_table(by_class: Mapping[str, Sequence[str]], split: str) -> pd.DataFrame:
    """The artifact's main table for videos by class: row, video_id, class, split, sorted by video id."""
    table = pd.DataFrame(
        [(vid, cls) for cls in sorted(by_class) for vid in by_class[cls]], columns=["video_id", "class"]
    ).sort_values("video_id", kind="stable").reset_index(drop=True)
    table.insert(0, "row", np.arange(len(table), dtype=np.int64))
    table["split"] = split
    return table


def write_states(staging: Staging, model: torch.nn.Module, loader: Any, table: pd.DataFrame, dtype: str, amp: bool,
                 batch: int = BATCH, workers: int = 0) -> None:
    """Write a prefix artifact's files into `staging`: states.npy, the frozen prefix of every video of `table` in
    row order (eval sampling, `batch` videos per pass, stored in `dtype`), and `table` as videos.parquet.

    `loader` is an EpisodeLoader (or anything with `clip_batches(ids, batch, workers)` yielding (ids, clips on its
    `device`)); `workers` threads load the next passes' clips while one runs.
    """
    ids = table["video_id"].tolist()
    if not ids:
        raise StageError("the prefix artifact needs at least one video; the videos table is empty")
    out = None
    i = 0
    with torch.inference_mode(), loader.clip_batches(ids, batch, workers) as chunks:
        for _, clips in chunks:
            with autocast(loader.device, amp):
                states = model.vision_prefix(clips).to(torch.float32 if dtype == "float32" else torch.float16).cpu().numpy()  # (b, T, P+1, D)
            if out is None:  # written in place: the split's states never need to fit in memory at once
                out = np.lib.format.open_memmap(staging.path("states.npy"), mode="w+", dtype=dtype, shape=(len(ids), *states.shape[1:]))
            out[i : i + len(states)] = states
            i += len(states)
    out.flush()
    del out
    staging.write_parquet("videos.parquet", table)


def _load_trained(model: torch.nn.Module, cfg: Config, inputs: Mapping[str, ArtifactRef]) -> None:
    path = checkpoint_path(cfg, inputs)
    ckpt = load_checkpoint(path)
    check_checkpoint(ckpt, cfg, path)
    model.load_trainable_state_dict(ckpt["trainable"])


class PrefixStates:
    """Read side of a prefix artifact: the stored states of videos, as float32 tensors on a device."""

    def __init__(self, ref: ArtifactRef, device: torch.device | str = "cpu"):
        store = ArtifactStore(ref.root)
        self.ref = ref
        self.device = torch.device(device)
        table = store.load(ref.stage, ref.dataset, ref.version)
        self.config = store.manifest(ref)["config"]
        self._rows = dict(zip(table["video_id"], table["row"]))
        self._states = np.load(store.verified_path(ref, "states.npy"), mmap_mode="r")  # (V, T, P+1, D)

    @property
    def checkpoint_free(self) -> bool:
        """True when no trained weight entered the states (temporal embedding at the first adapted block)."""
        return self.config["model"]["temporal_embedding_at"] != "input"

    def check(self, cfg: Config) -> None:
        """The artifact was made for this config's backbone, M, T and split, else a one-line error."""
        want = plan_fields(cfg)
        diffs = [f"{k}: artifact {self.config.get(k)!r} vs config {v!r}" for k, v in want.items()
                 if k != "checkpoint" and self.config.get(k) != v]
        if diffs:
            raise StageError(f"the prefix artifact {self.ref} was made for another configuration ({'; '.join(diffs)}); "
                             f"run `fsar prefix` with this config or drop the --input prefix=... pin")

    def __contains__(self, video_id: str) -> bool:
        return video_id in self._rows

    def get(self, video_ids: Sequence[str]) -> torch.Tensor:
        """(B, T, P+1, D) float32 states of the videos, in order."""
        missing = [v for v in video_ids if v not in self._rows]
        if missing:
            raise StageError(f"the prefix artifact {self.ref} has no states for video(s) {missing[:5]}; "
                             f"it covers split {self.config.get('split')!r} only")
        rows = np.asarray([self._rows[v] for v in video_ids])
        return torch.from_numpy(np.asarray(self._states[rows], dtype=np.float32)).to(self.device)
