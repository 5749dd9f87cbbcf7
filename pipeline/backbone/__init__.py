"""backbone stage (demo only): a tiny open_clip model pre-trained contrastively on captioned synthetic frames.

    from pipeline.backbone import checkpoint_path, run
    ref = run(config, {}, store)          # `fsar pretrain-backbone --dataset synthetic`
    checkpoint_path(ref)                  # .../open_clip.pt: the value for model.pretrained

See `stage` for the artifact, `data` for the captioned frames and their preprocessing, `train` for
the loss and schedule, `retrieval` for the held-out zero-shot check.
"""

from __future__ import annotations

import importlib
from typing import Any

from pipeline.backbone.config import BackboneConfig

__all__ = ["CHECKPOINT", "STAGE", "BackboneConfig", "checkpoint_path", "run"]

# Imported on first use: `pipeline.config` imports this package, and the stage imports `pipeline.config`.
_LAZY = {"CHECKPOINT": "pipeline.backbone.stage", "STAGE": "pipeline.backbone.stage",
         "checkpoint_path": "pipeline.backbone.stage", "run": "pipeline.backbone.stage"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'pipeline.backbone' has no attribute {name!r}")
    return getattr(importlib.import_module(_LAZY[name]), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
