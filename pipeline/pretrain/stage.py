"""The backbone stage (demo only): a tiny open_clip model pre-trained contrastively on captioned synthetic frames.

No pretrained CLIP weights can be had offline, and a random one does not transfer. This stage trains
`backbone.clip` (default `fsar-tiny`) from random init for a few CPU minutes on single frames of the
synthetic generator (every class's trajectory at random times and free random layouts, with every
video nuisance), each paired with words the generator writes from the scene, and saves it as an
open_clip checkpoint that the model stage loads like any other weights:

    ref = run(config, {}, store)
    load_config("demo", overrides=[f"model.pretrained={checkpoint_path(ref)}"])

Pre-training frames come from their own seed stream (`synthetic.frame_seed`), never a video's seed.

Artifact `backbone/<dataset>/<version>/`:
- `open_clip.pt`: the model's state dict (`open_clip.create_model(clip, pretrained=<this file>)`)
- `metrics.parquet` (main table): step, loss, lr, logit_scale, batch_top1 (wall-clock time and threads
  only in the manifest's `run`, so equal versions hold equal bytes)
- `retrieval.json`: zero-shot retrieval on held-out frames after training and at random init
  (see `retrieval`), the preprocessing (mean, std, sizes) and the training run's facts
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pipeline.artifacts import ArtifactError, ArtifactRef, ArtifactStore, Staging
from pipeline.atomic import atomic_open
from pipeline.config import Config, section_dict
from pipeline.contract import StageError, build_once
from pipeline.datasets.synthetic import captioned_frame
from pipeline.fewshot.devices import pick_device
from pipeline.logs import relay_root_records
from pipeline.pretrain import retrieval
from pipeline.pretrain.data import FrameView, TrainStream
from pipeline.pretrain.train import create_clip, train

log = logging.getLogger("fsar")

__all__ = ["CHECKPOINT", "FORMAT_VERSION", "MAIN", "RETRIEVAL", "STAGE", "checkpoint_path", "plan_fields", "run"]

STAGE = "backbone"
FORMAT_VERSION = 2  # 2: a step budget only (no wall-clock budget), no timings in data files
CHECKPOINT = "open_clip.pt"
MAIN = "metrics.parquet"
RETRIEVAL = "retrieval.json"


def plan_fields(cfg: Config, inputs: dict[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes (see `_fields`)."""
    return _fields(cfg)


def _fields(cfg: Config) -> dict[str, Any]:
    """Everything the stage reads: its own section and how the model stage will see frames and prompts."""
    return {
        "backbone": {k: v for k, v in section_dict(cfg.backbone).items() if k != "device"},
        "video_size": cfg.dataset.synthetic_size,
        "storage_size": cfg.frames.storage_size,
        "jpeg_quality": cfg.frames.jpeg_quality,
        "image_size": cfg.model.image_size,
        "prompt_template": cfg.model.prompt_template,
    }


def run(cfg: Config, inputs: dict[str, ArtifactRef] | None, store: ArtifactStore) -> ArtifactRef:
    """Pre-train the demo backbone (skipped when this config's artifact exists); reads no input artifacts."""
    if cfg.dataset.name != "synthetic":
        raise StageError(
            f"the backbone stage pre-trains on synthetic frames for the offline demo; it has nothing to learn for dataset "
            f"{cfg.dataset.name!r}: use an open_clip model with real weights there (model.clip, model.pretrained)"
        )
    fields = _fields(cfg)

    def build(staging: Staging) -> None:
        _build(cfg, staging)

    return build_once(store, STAGE, cfg.dataset.name, config=fields, inputs={}, build=build, main=MAIN, format_version=FORMAT_VERSION)


def _build(cfg: Config, staging: Staging) -> None:
    import open_clip


    b = cfg.backbone
    try:
        clip = create_clip(b.clip, cfg.model.image_size, b.seed, b.pos_init)
    except (ValueError, RuntimeError) as exc:
        raise StageError(f"backbone.clip {b.clip!r} at model.image_size {cfg.model.image_size}: {exc}") from exc
    with relay_root_records("open_clip"):  # open_clip logs on the root logger: its lines become fsar's
        tokenizer = open_clip.get_tokenizer(b.clip)
    pre = clip.visual.preprocess_cfg  # open_clip's defaults for a model without a pretrained tag: OpenAI CLIP's mean/std
    view = FrameView(cfg.dataset.synthetic_size, cfg.frames.storage_size, cfg.frames.jpeg_quality, cfg.model.image_size,
                     tuple(float(v) for v in pre["mean"]), tuple(float(v) for v in pre["std"]))  # type: ignore[arg-type]
    device = pick_device(b.device, "backbone.device")
    clip.to(device)
    heldout = [captioned_frame(b.seed, i, view.video_size, "heldout") for i in range(b.eval_frames)]  # class trajectories only
    at_init = retrieval.evaluate(clip, tokenizer, view, heldout, b.eval_candidates, probes=False)
    log.info(f"backbone: random init: {retrieval.headline(at_init)}")

    stream = TrainStream(view, seed=b.seed, scenes=b.scenes, batch_size=b.batch_size, free_share=b.free_scene_share,
                         caption_weights=b.caption_weights, prompt_template=cfg.model.prompt_template)
    threads = torch.get_num_threads()
    where = f"{threads} CPU threads" if device.type == "cpu" else str(device)
    log.info(f"backbone: training {b.clip} from random init: {b.steps} steps of {b.batch_size} frames, {where}")
    result = train(clip, tokenizer, stream.next, steps=b.steps, lr=b.lr, weight_decay=b.weight_decay,
                   warmup_steps=b.warmup_steps, device=device)
    final = retrieval.evaluate(clip, tokenizer, view, heldout, b.eval_candidates)
    log.info(f"backbone: {result.steps} steps in {result.seconds:.0f} s; held-out zero-shot retrieval: {retrieval.headline(final)}")
    log.info(f"backbone: {retrieval.probe_line(final, 'caption')}")
    log.info(f"backbone: {retrieval.probe_line(final, 'phrase')}")

    with atomic_open(staging.path(CHECKPOINT)) as fh:  # a file object: the bytes do not depend on the temporary's name
        torch.save({k: v.cpu() for k, v in clip.state_dict().items()}, fh)
    staging.write_parquet(MAIN, pd.DataFrame(result.metrics, columns=["step", "loss", "lr", "logit_scale", "batch_top1"]))
    report = {
        "clip": b.clip,
        "trained": final,
        "random_init": at_init,
        "heldout": {"stream": "heldout", "seed": b.seed, "frames": len(heldout), "scenes": "class trajectories at random times"},
        "preprocess": {"mean": list(view.mean), "std": list(view.std), "mean_std_source": "open_clip defaults (OpenAI CLIP)",
                       "video_size": view.video_size, "storage_size": view.storage_size, "resize": "PIL bilinear",
                       "jpeg_quality": view.jpeg_quality, "image_size": view.image_size, "crop": "random (train), centre (retrieval)"},
        "training": {"steps": result.steps, "frames_seen": result.steps * b.batch_size,
                     "final_loss": float(pd.Series([r["loss"] for r in result.metrics]).tail(20).mean()) if result.metrics else None},
    }
    (staging.dir / RETRIEVAL).write_text(json.dumps(report, indent=2), encoding="utf-8")
    staging.extra["summary"] = {
        "caption_top1": final["caption"]["top1"], "caption_chance": final["caption"]["chance"],
        "phrase_top1": final["phrase"]["top1"], "phrase_chance": final["phrase"]["chance"],
        "steps": result.steps,
    }
    staging.extra["run"] = {"seconds": round(result.seconds, 1), "device": str(device), "threads": threads}


def checkpoint_path(ref: ArtifactRef) -> str:
    """Local path of the artifact's `open_clip.pt`: the value for `model.pretrained`."""
    path = ArtifactStore(ref.root).local_path(ref) / CHECKPOINT
    if not Path(path).is_file():
        raise ArtifactError(f"backbone artifact {ref} has no {CHECKPOINT}; re-run `fsar pretrain-backbone`")
    return str(path)
