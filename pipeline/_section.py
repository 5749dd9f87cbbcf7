"""Base class for config sections: strict (unknown keys are errors), immutable, documented."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A typed config section. Unknown keys are errors; instances are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)
