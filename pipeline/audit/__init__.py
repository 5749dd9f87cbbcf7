"""The audit stage: each class's descriptions checked against its videos under the frozen backbone, before any training.

    from pipeline.audit import run
    ref = run(config, {"descriptions": d, "frames": f}, store)   # `fsar audit`; artifacts.load("audit", D): one row per (class, candidate)

`alignment` holds the order-respecting measure (also used by evaluate's `choose_by_support`), `features` the frozen
towers' features, `measure` the per-class figures and the choice by videos, `report` the summary, report and plot.
docs/audit.md: the measure, what it can and cannot tell, and what to do about a low score.
"""

from pipeline.audit.stage import FORMAT_VERSION, MAIN, STAGE, plan_fields, run

__all__ = ["FORMAT_VERSION", "MAIN", "STAGE", "plan_fields", "run"]
