"""Published accuracies on the benchmarks fsar runs, with their sources: what `fsar evaluate`'s report puts
beside its own numbers for the same dataset, way and shot (docs/results.md says more about each source).

A figure is entered only when it was read from a public source or given in the issue that asked for it
(fsar issue 30), never typed in from memory; each says whose figure it is (`party`: first-party = the
method's own authors, third-party = someone else running or quoting it) and where it was read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["PUBLISHED", "Published", "published_for", "published_markdown"]


@dataclass(frozen=True)
class Published:
    method: str  # the method and, where it matters, the variant of the code that gave the figure
    accuracy: float  # %
    spread: str  # what the figure's +- is, as its source gives it ("" when it gives none)
    party: str  # first-party | third-party | first-party, quoted by a third party
    source: str  # where the figure was read


_TAPP_PAPER = "Task-Adapter++ paper (arXiv 2505.06002), Table 6"
_TRIAL = "github.com/Lyxose-Tim/task-adapater-pp-trial, experiments/ledger.csv"
_TS_FSAR = "TS-FSAR (AAAI 2026), results table of github.com/yaozhang0417/TS-FSAR README.md (CLIP ViT-B/16)"
_QUOTED = f"first-party, quoted by a third party ({_TRIAL} compares with 63.6)"


def _ts_fsar(accuracy: float) -> Published:
    return Published("TS-FSAR", accuracy, "", "first-party", _TS_FSAR)


# (dataset, way, shot) -> figures, fsar's dataset names (pipeline.datasets)
PUBLISHED: dict[tuple[str, int, int], tuple[Published, ...]] = {
    ("ssv2_small", 5, 1): (
        Published("Task-Adapter++", 63.6, "", _QUOTED, _TAPP_PAPER),
        Published("Task-Adapter", 60.2, "", "first-party table, as quoted in fsar issue 30 (not read here)", _TAPP_PAPER),
        Published("CLIP-FSAR", 54.6, "", "first-party table, as quoted in fsar issue 30 (not read here)", _TAPP_PAPER),
        Published("Task-Adapter++, released code unmodified (seed 916)", 59.34, "+- 0.42 over 10,000 test episodes", "third-party",
                  f"{_TRIAL}, row B0-official-unpatched"),
        Published("Task-Adapter++, released code with defect 1 fixed (their P1/P2)", 57.01,
                  "+- 1.64 = sample std over 5 seeds, 10,000 test episodes each", "third-party", f"{_TRIAL}, row B0-defined"),
        _ts_fsar(60.5),
    ),
    ("ssv2_small", 5, 5): (_ts_fsar(70.3),),
    ("ssv2_full", 5, 1): (_ts_fsar(75.1),),
    ("ssv2_full", 5, 5): (_ts_fsar(83.5),),
    ("hmdb51", 5, 1): (_ts_fsar(85.0),),
    ("hmdb51", 5, 5): (_ts_fsar(88.9),),
    ("ucf101", 5, 1): (_ts_fsar(98.7),),
    ("ucf101", 5, 5): (_ts_fsar(99.3),),
    ("kinetics100", 5, 1): (_ts_fsar(96.3),),
    ("kinetics100", 5, 5): (_ts_fsar(96.6),),
}


def published_for(summary: Mapping[str, Any]) -> tuple[Published, ...]:
    """The published figures for an evaluation summary's dataset, way and shot (none when unknown)."""
    return PUBLISHED.get((str(summary.get("dataset")), summary.get("way"), summary.get("shot")), ())


def published_markdown(figures: tuple[Published, ...]) -> str:
    """A table of published figures: method, accuracy, what its +- is, whose figure and where it was read."""
    lines = ["| published | accuracy (%) | spread | whose figure | source |", "|---|---|---|---|---|"]
    lines += [f"| {p.method} | {p.accuracy:g} | {p.spread or '-'} | {p.party} | {p.source} |" for p in figures]
    return "\n".join(lines)
