"""Config of the audit stage: each class's descriptions checked against its videos under the frozen backbone.

The measure, what it can and cannot tell, and what to do about a low score: docs/audit.md.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.settings.section import DeviceName, Section, check_workers

__all__ = ["AuditConfig", "SPLITS"]

SPLITS = ("train", "val", "test")


class AuditConfig(Section):
    # splits whose classes' videos are audited; test only when listed here (the artifact and report then say so)
    splits: tuple[Literal["train", "val", "test"], ...] = ("train", "val")
    videos_per_class: int = Field(default=16, ge=1)  # videos audited per class (fewer when a class has fewer), drawn with `seed`
    min_videos: int = Field(default=5, ge=1)  # a class with fewer audited videos is flagged too_few_videos (and keeps the rule's choice)
    seed: int = 0  # which videos of a class are audited
    # every order of a candidate's S sentences is scored when S <= this (S! orders: 24 at S=4); else the stated and reversed only
    all_orders_up_to: int = Field(default=4, ge=1, le=6)
    device: DeviceName = "auto"  # auto | cpu | cuda | cuda:N (not part of the version)
    videos_per_pass: int | None = Field(default=None, ge=1)  # videos per pass through the frozen vision tower; None = 16 on CPU, 128 on CUDA
    prompts_per_pass: int = Field(default=256, ge=1)  # sentence prompts per pass through the frozen text tower
    loader_workers: int | Literal["auto"] = "auto"  # threads loading clips ahead of the passes; "auto" as train.loader_workers

    @field_validator("splits")
    @classmethod
    def _check_splits(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("list at least one split to audit, e.g. [train, val]")
        if len(set(value)) != len(value):
            raise ValueError(f"a split is listed twice: {list(value)}")
        return tuple(s for s in SPLITS if s in value)  # one canonical order: the same splits give the same version

    @field_validator("loader_workers", mode="before")
    @classmethod
    def _check_workers(cls, value: object) -> object:
        return check_workers(value)
