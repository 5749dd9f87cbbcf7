"""The vision-prefix stage: the frozen first L-M vision blocks of every video of the evaluated split."""

from pipeline.prefix.stage import FORMAT_VERSION, PrefixStates, enabled, mode, plan_fields, run, upstream_for

__all__ = ["FORMAT_VERSION", "PrefixStates", "enabled", "mode", "plan_fields", "run", "upstream_for"]
