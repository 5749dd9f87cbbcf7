"""Fixtures of the audit tests: an oracle for the frozen towers, the reversed-scripts corpus; helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

# The suite imports test files with --import-mode=importlib; make the helper module next to this file importable.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from audit_helpers import Oracle, scripts_of  # noqa: E402


@pytest.fixture()
def oracle(monkeypatch, synthetic_root):
    """The audit stage's and evaluate's frozen features replaced by an `Oracle` of the synthetic scripts."""
    from pipeline.audit import stage as audit_stage
    from pipeline.evaluate import by_support
    from pipeline.fewshot.scoring import EpisodeScorer

    o = Oracle(scripts_of(synthetic_root))
    monkeypatch.setattr(audit_stage, "frame_features", o.frame_features)
    monkeypatch.setattr(audit_stage, "text_features", o.text_features)
    monkeypatch.setattr(by_support, "text_features", o.text_features)
    monkeypatch.setattr(EpisodeScorer, "frozen_features", lambda scorer, ids: o.frame_features(None, scorer.loader, ids, 0, 0))
    return o


@pytest.fixture()
def reversed_corpus(synthetic_root, tmp_path) -> Path:
    """The synthetic scripts with every class's sentences in reversed order (a file-backend corpus)."""
    corpus = yaml.safe_load((synthetic_root / "scripts.yaml").read_text())
    for entry in corpus.values():
        entry["sub_act_en_li"] = entry["sub_act_en_li"][::-1]
    path = tmp_path / "reversed.yaml"
    path.write_text(yaml.safe_dump(corpus, sort_keys=False))
    return path
