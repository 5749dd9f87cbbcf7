"""Config of the text-embedding cache stage."""

from __future__ import annotations

from pydantic import Field

from pipeline.settings.section import Section

__all__ = ["EmbeddingsConfig"]


class EmbeddingsConfig(Section):
    batch_size: int = Field(default=64, ge=1)  # prompts encoded at once
    dtype: str = "float32"  # dtype of the stored hidden states (float32 | float16)
