"""Base class for config sections: strict (unknown keys are errors), immutable, documented."""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

from pipeline.secrets import redact

__all__ = ["DeviceName", "Section", "check_device", "check_workers"]

_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def check_device(name: str) -> str:
    """A device string torch accepts and fsar supports: auto, cpu, cuda, cuda:N or mps."""
    if not _DEVICE.fullmatch(name):
        raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N (e.g. cuda:0)")
    return name


DeviceName = Annotated[str, AfterValidator(check_device)]  # a device field of any section (train, evaluate, backbone)


def check_workers(value: object) -> object:
    """A data-worker count field: "auto" or a whole number of threads >= 0."""
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
        return value
    raise ValueError("use 'auto' or a whole number of threads >= 0 (0: load in the loop, no threads)")


class Section(BaseModel):
    """A typed config section. Unknown keys are errors; instances are frozen.

    Its JSON form (`model_dump_json`, `model_dump(mode="json")`, and so whatever Prefect stores as a flow
    parameter) has secrets masked: URL user-info and the values of key-like environment variables
    (`pipeline.secrets`). Attribute access and `model_dump()` keep the real values for the code that needs them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # Fields added after artifacts had been built with this section: versions and stored configs leave such a field
    # out while it holds its default, so adding it moved no existing version and no stored byte.
    LATE_FIELDS: ClassVar[tuple[str, ...]] = ()

    def without_late_defaults(self, data: dict[str, Any]) -> dict[str, Any]:
        """`data` (this section's JSON form, or some of its fields) less the LATE_FIELDS that hold their default."""
        fields = type(self).model_fields
        return {k: v for k, v in data.items() if not (k in self.LATE_FIELDS and getattr(self, k) == fields[k].default)}

    @model_serializer(mode="wrap")
    def _masked(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if not info.mode_is_json():
            return data

        return redact(data)
