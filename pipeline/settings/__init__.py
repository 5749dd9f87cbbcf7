"""The config sections, one module per stage, in a leaf package: it imports no stage code.

`pipeline.config.Config` is built from these sections, and the stages read them; nothing here imports
a stage module or a stage package, so config loading never pulls in torch, open_clip or a stage's
dependencies, and no stage package needs a lazy import to break a cycle with `pipeline.config`.

    from pipeline.settings.model import ModelConfig, model_fields
    from pipeline.settings import FramesConfig

Each section has one home, `pipeline.settings.<stage>` (`pretrain` holds the `backbone` section of the
demo's pre-training stage); this package lists them all.
"""

from pipeline.settings.audit import AuditConfig
from pipeline.settings.datasets import DatasetConfig, ProtocolConfig
from pipeline.settings.descriptions import DescriptionsConfig
from pipeline.settings.embeddings import EmbeddingsConfig
from pipeline.settings.evaluate import EvaluateConfig
from pipeline.settings.frames import FramesConfig
from pipeline.settings.model import ModelConfig, model_fields
from pipeline.settings.pretrain import BackboneConfig
from pipeline.settings.section import DeviceName, Section, check_device
from pipeline.settings.train import TrainConfig

__all__ = [
    "AuditConfig",
    "BackboneConfig",
    "DatasetConfig",
    "DescriptionsConfig",
    "DeviceName",
    "EmbeddingsConfig",
    "EvaluateConfig",
    "FramesConfig",
    "ModelConfig",
    "ProtocolConfig",
    "Section",
    "TrainConfig",
    "check_device",
    "model_fields",
]
