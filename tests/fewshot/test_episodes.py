import subprocess
import sys

import pytest

from pipeline.fewshot.episodes import EpisodeSampler, episodes_from_frame, episodes_to_frame

VIDEOS = {f"class{c}": [f"class{c}/v{i}" for i in range(6)] for c in range(8)}


def test_episodes_are_seeded_and_well_formed():
    a = EpisodeSampler(VIDEOS, way=5, shot=2, query=1, seed=7).take(20)
    b = EpisodeSampler(dict(reversed(list(VIDEOS.items()))), way=5, shot=2, query=1, seed=7).take(20)
    assert a == b  # insertion order of the input does not matter
    c = EpisodeSampler(VIDEOS, way=5, shot=2, query=1, seed=8).take(20)
    assert a != c
    for e in a:
        assert len(set(e.classes)) == 5 and len(e.support) == 10 and len(e.query) == 5
        assert not set(e.support) & set(e.query)
        for vid, label in zip(e.support, e.support_labels):
            assert vid.startswith(e.classes[label] + "/")
        for vid, label in zip(e.query, e.query_labels):
            assert vid.startswith(e.classes[label] + "/")


def test_episodes_identical_across_processes():
    code = (
        "from pipeline.fewshot.episodes import EpisodeSampler;"
        "V={f'class{c}':[f'class{c}/v{i}' for i in range(6)] for c in range(8)};"
        "print([e.support+e.query for e in EpisodeSampler(V,5,2,1,7).take(5)])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == str([e.support + e.query for e in EpisodeSampler(VIDEOS, 5, 2, 1, 7).take(5)])


def test_roundtrip_through_a_table():
    eps = EpisodeSampler(VIDEOS, way=3, shot=1, query=2, seed=1).take(4)
    assert episodes_from_frame(episodes_to_frame(eps)) == eps


def test_small_classes_are_excluded_or_fatal():
    videos = dict(VIDEOS)
    videos["tiny"] = ["tiny/v0", "tiny/v1"]
    with pytest.warns(UserWarning, match="fewer than K\\+Q=3 usable videos and are excluded: \\['tiny'\\]"):
        sampler = EpisodeSampler(videos, way=5, shot=2, query=1, seed=0)
    assert "tiny" not in sampler.class_names
    with pytest.raises(ValueError, match="fewer than N=5"):
        EpisodeSampler({k: v[:2] for k, v in VIDEOS.items()}, way=5, shot=2, query=1, seed=0)


def test_shuffled_queries_keep_videos_and_labels_together_and_depend_on_the_episode_alone():
    eps = EpisodeSampler(VIDEOS, way=5, shot=1, query=2, seed=3).take(6)
    for ep in eps:
        assert ep.with_query_order("by_class") is ep
        shuffled = ep.with_query_order("shuffled")
        assert shuffled == ep.with_query_order("shuffled")  # seeded by (seed, index)
        assert sorted(zip(shuffled.query, shuffled.query_labels)) == sorted(zip(ep.query, ep.query_labels))
        assert (shuffled.classes, shuffled.support, shuffled.support_labels) == (ep.classes, ep.support, ep.support_labels)
        for vid, label in zip(shuffled.query, shuffled.query_labels):
            assert vid.startswith(shuffled.classes[label] + "/")
    assert any(ep.with_query_order("shuffled").query != ep.query for ep in eps)
    with pytest.raises(ValueError, match="already reordered"):
        eps[0].with_query_order("shuffled").with_query_order("shuffled")
    with pytest.raises(ValueError, match="save the episodes as sampled"):
        episodes_to_frame([eps[0].with_query_order("shuffled")])
