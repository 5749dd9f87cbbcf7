"""The evaluate stage: `stage` (version, artifact, `run`), `report` (summary, report.md), `plots`, `combine` (one
artifact over several evaluations of the same episodes)."""
