"""Where a support class's descriptions come from: --descriptions FILE, else the bundle, else the stage's LLM backends."""

from __future__ import annotations

import pytest
import yaml
from fake_openai_server import FakeLLM, good_sentences

from pipeline.contract import StageError
from pipeline.predict import FewShotClassifier

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def clf(bundle_dir, backbone_file) -> FewShotClassifier:
    return FewShotClassifier.load(bundle_dir, backbone=backbone_file, device="cpu")


def _support(test_videos, renamed: dict[str, str]) -> dict[str, list[str]]:
    """{class: [one clip]} with some test classes under a new name (unknown to the bundle)."""
    return {renamed.get(c, c): paths[:1] for c, paths in sorted(test_videos.items())}


def test_file_beats_bundle_and_the_bundle_needs_no_llm(clf, test_videos, tmp_path):
    known = sorted(test_videos)
    new = {known[0]: "my own: class [1]"}
    corpus = tmp_path / "mine.yaml"
    corpus.write_text(yaml.safe_dump({"my own: class [1]": ["first it sits", "then it moves", "then it stops"],
                                      known[1]: ["a", "b", "c"]}))  # fmt: skip
    clf.fit(_support(test_videos, new), descriptions=corpus)
    assert clf.texts["my own: class [1]"].source == "file mine.yaml"
    assert clf.texts["my own: class [1]"].sentences == ["first it sits", "then it moves", "then it stops"]
    assert clf.texts[known[1]].source == "file mine.yaml" and clf.texts[known[1]].sentences == ["a", "b", "c"]
    assert {clf.texts[c].source for c in known[2:]} == {"bundle"}
    table = clf.predict([test_videos[known[0]][-1]])
    assert f"score:{'my own: class [1]'}" in table.columns and table["error"].isna().all()


def test_unknown_class_without_descriptions_is_one_clear_error(clf, test_videos):
    with pytest.raises(StageError, match=r"'brand new'.*--descriptions FILE.*descriptions.backend"):
        clf.fit(_support(test_videos, {sorted(test_videos)[0]: "brand new"}))
    with pytest.raises(StageError, match="exactly 3"):
        clf.fit(_support(test_videos, {sorted(test_videos)[0]: "short"}), descriptions={"short": ["only one"]})


def test_unknown_class_asks_the_llm_once_then_the_cache(clf, test_videos, tmp_path):
    support = _support(test_videos, {sorted(test_videos)[0]: "juggling_balls"})
    root = str(tmp_path / "root")
    with FakeLLM() as llm:
        sets = ["descriptions.backend=openai", f"descriptions.base_url={llm.url}", "descriptions.model=fake", "descriptions.cache=true"]
        clf.fit(support, llm_overrides=sets, artifacts=root)
        assert clf.texts["juggling_balls"].source == "llm openai/fake"
        assert clf.texts["juggling_balls"].display_name == "juggling balls"
        assert clf.texts["juggling_balls"].sentences == good_sentences("juggling balls", 3)
        assert llm.calls() == 1  # only the unknown class
        clf.fit(support, llm_overrides=sets, artifacts=root)
        assert llm.calls() == 1  # the per-answer cache of the descriptions stage
