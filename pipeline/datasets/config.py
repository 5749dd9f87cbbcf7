"""Old import path of the dataset and protocol sections; they live in `pipeline.settings.datasets` (imports no stage)."""

from pipeline.settings.datasets import DatasetConfig, ProtocolConfig

__all__ = ["DatasetConfig", "ProtocolConfig"]
