"""Text-embedding cache stage: frozen text-prefix states of every prompt.

    from pipeline.embeddings import run, TextCache
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["TextCache", "build_prompts", "run"]


def __getattr__(name: str) -> Any:  # lazy: pipeline.config imports this package's config module
    if name not in __all__:
        raise AttributeError(f"module 'pipeline.embeddings' has no attribute {name!r}")
    return getattr(importlib.import_module("pipeline.embeddings.stage"), name)
