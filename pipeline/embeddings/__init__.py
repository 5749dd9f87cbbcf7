"""Text-embedding cache stage: frozen text-prefix states of every prompt.

    from pipeline.embeddings import run, TextCache
"""

from pipeline.embeddings.stage import TextCache, build_prompts, run

__all__ = ["TextCache", "build_prompts", "run"]
