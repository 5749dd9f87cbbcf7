"""backbone stage (demo only): a tiny open_clip model pre-trained contrastively on captioned synthetic frames.

    from pipeline.backbone import checkpoint_path, run
    ref = run(config, {}, store)          # `fsar pretrain-backbone --dataset synthetic`
    checkpoint_path(ref)                  # .../open_clip.pt: the value for model.pretrained

See `stage` for the artifact, `data` for the captioned frames and their preprocessing, `train` for
the loss and schedule, `retrieval` for the held-out zero-shot check.
"""

from pipeline.backbone.stage import CHECKPOINT, STAGE, checkpoint_path, run
from pipeline.settings.backbone import BackboneConfig

__all__ = ["CHECKPOINT", "STAGE", "BackboneConfig", "checkpoint_path", "run"]
