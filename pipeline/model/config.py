"""Config of the Task-Adapter++ model (sizes of method.md; the protocol's T, S come from `protocol`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline._section import Section


class ModelConfig(Section):
    clip: str = "ViT-B-16"  # open_clip model name (or a registered tiny config)
    pretrained: str | None = "openai"  # open_clip pretrained tag or a local checkpoint path; None = random weights
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
    class_prompt_template: str = "A video of action about {c}"  # plain class-name prompt (baselines)
    image_size: int = Field(default=224, ge=16)  # crop side fed to CLIP
    quick_gelu: bool | None = None  # activation of the frozen blocks; None = what the pretrained tag (else the open_clip config) says
    amp: bool = True  # bf16 autocast on CUDA; CPU always runs fp32
