"""Config of the evaluate stage (and of the vision-prefix stage that evaluation reads)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from pipeline.settings.section import DeviceName, Section, check_workers

__all__ = ["EvaluateConfig"]


class EvaluateConfig(Section):
    episodes: int = Field(default=10000, ge=1)  # test episodes
    shot: int | None = Field(default=None, ge=1)  # K at test; None = protocol.shot
    seed: int = 2024  # test episodes' seed (same seed -> same saved episodes)
    split: Literal["train", "val", "test"] = "test"  # split evaluated
    # queries of each saved episode in class order (as the released sampler lays them out) or shuffled (seeded by the
    # episode); fsar's scores predict the same either way, model.scores=released does not (the report shows both)
    query_order: Literal["by_class", "shuffled"] = "by_class"
    cache: bool = True  # run the frozen vision prefix once per video
    # where that prefix lives: `artifact` (true): the `prefix` stage's artifact (computed once, shared by evaluation
    # runs; with model.temporal_embedding_at=first_adapted also by checkpoints and description corpora); `memory`
    # (false): computed by evaluate and kept on its device; `auto`: memory on a GPU when the trained temporal
    # embedding enters the prefix (temporal_embedding_at=input: an artifact would serve this checkpoint only, and
    # writing and re-reading gigabytes costs more than recomputing), else artifact (CPU runs, the first_adapted variant)
    prefix: bool | Literal["auto", "artifact", "memory"] = "auto"
    prefix_dtype: Literal["float32", "float16"] = "float32"  # stored dtype of the prefix artifact (float16: half the disk)
    # episodes scored per pass through the adapted blocks (same results as one at a time; not part of the version);
    # "auto" = 1 on CPU (batching is slower there), 64 on CUDA; lower it if evaluation runs out of memory
    episodes_per_batch: int | Literal["auto"] = "auto"
    videos_per_pass: int | None = Field(default=None, ge=1)  # videos per pass through the frozen prefix; None = 16 on CPU, 128 on CUDA
    loader_workers: int | Literal["auto"] = "auto"  # threads loading clips ahead of the prefix passes; "auto" as train.loader_workers
    baselines: bool = True  # also score the frozen-CLIP prototype baseline, visual-only and semantic-only
    # also score a variant beyond the paper: per episode and class, the description candidate (and order) that the class's
    # labelled support clips support most under the frozen towers (queries never looked at); its own row, `by_support`
    choose_by_support: bool = False
    untrained: bool = False  # also score the full model at its training initialisation (a second model in memory)
    device: DeviceName = "auto"  # auto | cpu | cuda | cuda:N
    checkpoint: str | None = None  # checkpoint file to evaluate; None = best checkpoint of the latest train artifact
    descriptions_label: str | None = None  # name of the corpus in the results; None = `llm` or `file` by backend

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("query_order", "choose_by_support")

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        return check_workers(value)

    @field_validator("episodes_per_batch", mode="before")
    @classmethod
    def _check_episodes_per_batch(cls, value: object) -> object:
        if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
            return value
        raise ValueError("use 'auto' or a whole number of episodes >= 1")
