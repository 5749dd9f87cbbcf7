"""fsar: few-shot action recognition with Task-Adapter++ as an offline pipeline."""

__version__ = "0.1.0"
