"""Config of the Task-Adapter++ model (sizes of docs/method.md; the protocol's T, S come from `protocol`)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from pipeline.settings.section import Section

__all__ = ["ModelConfig", "model_fields"]


class ModelConfig(Section):
    clip: str = "ViT-B-16"  # open_clip model name (or a registered tiny config)
    pretrained: str | None = "openai"  # open_clip pretrained tag or a local checkpoint path; None = random weights
    init_seed: int = 0  # seed of the random backbone weights when pretrained is None (so equal versions hold equal bytes)
    vision_adapted_layers: int = Field(default=2, ge=1)  # M: last vision blocks that get adapters
    text_adapted_layers: int = Field(default=8, ge=1)  # M_t: last text blocks that get the order adapter
    adapter_ratio: float = Field(default=0.25, gt=0.0, le=4.0)  # r: bottleneck width / model width
    logit_scale: float = Field(default=64.0, gt=0.0)  # tau
    task_context: Literal["faithful", "inductive"] = "faithful"  # what the task adapter and CA attend over
    task_adapter_init: Literal["released", "zero"] = "released"  # released = PyTorch default init of A_task
    ca_layernorm: bool = False  # LayerNorm after the cross-frame attention (SSv2-Full preset)
    subaction_index_embedding: bool = False  # extension: learnable sub-action index embedding in the text tower
    temporal_embedding_at: Literal["input", "first_adapted"] = "input"  # "first_adapted" is a change to the method
    prompt_template: str = "A video of action about {c}: {s}"  # {c}: class name, {s}: sub-action sentence
    image_size: int = Field(default=224, ge=16)  # crop side fed to CLIP
    quick_gelu: bool | None = None  # activation of the frozen blocks; None = what the pretrained tag (else the open_clip config) says
    # query_class: every score is [query, class] (fsar); released: the released code's product of the semantic
    # [class, query] matrix with the visual [query, class] one, defined only for one query per class (protocol.query=1),
    # queries in class order (docs/method.md, defect 1)
    scores: Literal["query_class", "released"] = "query_class"
    amp: bool = True  # bf16 autocast on CUDA for every forward pass (towers, training, evaluation, predict); CPU always runs fp32

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("scores",)


def model_fields(cfg: ModelConfig, fields: Iterable[str] | None = None) -> dict[str, Any]:
    """The model section as versions and checkpoints record it: a local `pretrained` file by its content
    (``sha256:<hex>``), never by its path, so the same weights give the same version in any folder; late fields at
    their defaults are left out (`Section.LATE_FIELDS`: `scores`)."""
    # start-up: config loading stays light (no pandas/fsspec)
    from pipeline.artifacts import file_fingerprint

    data = cfg.without_late_defaults(json.loads(cfg.model_dump_json()))
    if cfg.pretrained and Path(cfg.pretrained).expanduser().is_file():
        data["pretrained"] = file_fingerprint(cfg.pretrained)
    return data if fields is None else {f: data[f] for f in fields if f in data or f not in cfg.LATE_FIELDS}
