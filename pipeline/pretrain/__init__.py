"""The demo's pre-training stage (artifact and config section `backbone`): a tiny open_clip model trained
contrastively on captioned synthetic frames, so the offline demo has a backbone that transfers.

    from pipeline.pretrain import checkpoint_path, run
    ref = run(config, {}, store)          # `fsar pretrain-backbone --dataset synthetic`
    checkpoint_path(ref)                  # .../open_clip.pt: the value for model.pretrained

See `stage` for the artifact, `data` for the captioned frames and their preprocessing, `train` for
the loss and schedule, `retrieval` for the held-out zero-shot check. (Loading any backbone, pre-trained
here or downloaded, is `pipeline.model.backbone`.)
"""

from pipeline.pretrain.stage import CHECKPOINT, STAGE, checkpoint_path, run

__all__ = ["CHECKPOINT", "STAGE", "checkpoint_path", "run"]
