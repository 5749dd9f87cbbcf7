"""Old import path of the descriptions section; it lives in `pipeline.settings.descriptions` (imports no stage)."""

from pipeline.settings.descriptions import DescriptionsConfig

__all__ = ["DescriptionsConfig"]
