"""Dataset registry, standard split-file readers, the custom and synthetic datasets."""

from pipeline.datasets import benchmarks as _benchmarks  # noqa: F401  (registers the benchmarks)
from pipeline.datasets import custom as _custom  # noqa: F401  (registers `custom`)
from pipeline.datasets import synthetic as _synthetic  # noqa: F401  (registers `synthetic`)
from pipeline.datasets.registry import (
    SPLITS,
    DatasetError,
    DatasetSpec,
    VideoEntry,
    get_dataset,
    humanize,
    list_datasets,
    register_dataset,
)

__all__ = [
    "SPLITS",
    "DatasetError",
    "DatasetSpec",
    "VideoEntry",
    "get_dataset",
    "humanize",
    "list_datasets",
    "register_dataset",
]
