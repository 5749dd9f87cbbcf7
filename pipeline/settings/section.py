"""Base class for config sections: strict (unknown keys are errors), immutable, documented."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, SerializationInfo, SerializerFunctionWrapHandler, model_serializer

__all__ = ["Section"]


class Section(BaseModel):
    """A typed config section. Unknown keys are errors; instances are frozen.

    Its JSON form (`model_dump_json`, `model_dump(mode="json")`, and so whatever Prefect stores as a flow
    parameter) has secrets masked: URL user-info and the values of key-like environment variables
    (`pipeline.secrets`). Attribute access and `model_dump()` keep the real values for the code that needs them.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_serializer(mode="wrap")
    def _masked(self, handler: SerializerFunctionWrapHandler, info: SerializationInfo) -> Any:
        data = handler(self)
        if not info.mode_is_json():
            return data
        from pipeline.secrets import redact

        return redact(data)
