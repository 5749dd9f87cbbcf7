"""Old import path of the model section; it lives in `pipeline.settings.model` (imports no stage)."""

from pipeline.settings.model import ModelConfig, model_fields

__all__ = ["ModelConfig", "model_fields"]
