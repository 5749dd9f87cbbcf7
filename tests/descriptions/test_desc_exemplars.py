"""Worked examples, candidates, the quality report and the default backend (fake OpenAI server, real HTTP)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fake_openai_server import FakeLLM

from pipeline.config import ConfigError, load_config
from pipeline.contract import StageError
from pipeline.datasets.synthetic import CLASSES, class_split, script
from pipeline.descriptions import run
from pipeline.descriptions.backends import Completion, make_backend, resolve_backend
from pipeline.descriptions.backends.local_server import server_threads
from pipeline.descriptions.exemplars import load_exemplars
from pipeline.descriptions.asking import Attempt, ClassItem
from pipeline.descriptions.choosing import choose

TRAIN = {c.name for c in CLASSES if class_split(c.name) == "train"}


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def synthetic(store, **desc):
    over = {"dataset.name": "synthetic", "artifacts": store.root, "descriptions.retry_backoff_s": 0.01}
    over.update({f"descriptions.{k}": v for k, v in desc.items()})
    return load_config(None, overrides=over)


def items_of(cfg) -> list[ClassItem]:
    from pipeline.datasets import get_dataset

    spec = get_dataset(cfg.dataset)
    return [ClassItem(s, n, spec.display_name(n)) for s, n in spec.all_classes()]


def test_exemplar_selection_never_own_class_never_held_out(store):
    cfg = synthetic(store)
    items = items_of(cfg)
    pool = load_exemplars("dataset", cfg, items, 3)
    assert {e.name for e in pool.exemplars} == TRAIN  # the dataset's scripts of TRAIN classes only
    for item in items:
        chosen = pool.select(item, 3, "name_overlap")
        names = [e.name for e in chosen]
        assert len(names) == 3 and item.name not in names and set(names) <= TRAIN, item
        assert chosen == pool.select(item, 3, "name_overlap")  # deterministic
        assert all(list(e.sentences) == script(e.name, 3) for e in chosen)
    # nearest in name comes last (closest to the question)
    assert [e.name for e in pool.select(ClassItem("test", "moving up", "moving up"), 2, "name_overlap")][-1] == "moving diagonally up to the left"
    in_order = [c.name for c in CLASSES if c.name in TRAIN and c.name != "growing"]
    assert [e.name for e in pool.select(ClassItem("train", "growing", "growing"), 5, "first")] == in_order[:5]


def test_exemplar_file_checks(store, tmp_path):
    cfg = synthetic(store)
    items = items_of(cfg)
    bad = tmp_path / "leaky.yaml"
    bad.write_text(yaml.safe_dump({"growing": script("growing", 3), "moving up": script("moving up", 3), "two objects approaching": script("two objects approaching", 3)}))
    with pytest.raises(StageError) as err:
        load_exemplars(str(bad), cfg, items, 3)
    msg = str(err.value)
    assert "test/'moving up'" in msg and "val/'two objects approaching'" in msg and "'growing'" not in msg and "\n" not in msg
    wrong = tmp_path / "wrong.yaml"
    wrong.write_text(yaml.safe_dump({"growing": "small then large"}))
    with pytest.raises(StageError, match="not a list of sentences"):
        load_exemplars(str(wrong), cfg, items, 3)
    short = tmp_path / "short.json"
    short.write_text(json.dumps({"growing": ["first small", "finally large"]}))
    with pytest.raises(StageError, match="exactly S=3"):
        load_exemplars(str(short), cfg, items, 3)
    with pytest.raises(StageError, match="does not exist"):
        load_exemplars(str(tmp_path / "none.yaml"), cfg, items, 3)
    # another corpus's classes are fine; a training class is never its own example
    ok = tmp_path / "other.yaml"
    ok.write_text(yaml.safe_dump({"brush hair": ["a", "b", "c"], "growing": script("growing", 3)}))
    pool = load_exemplars(str(ok), cfg, items, 3)
    assert [e.name for e in pool.select(ClassItem("train", "growing", "growing"), 3)] == ["brush hair"]
    custom = load_config(None, overrides={"dataset.name": "hmdb51", "artifacts": store.root})
    with pytest.raises(StageError, match="no scripts of its own"):
        load_exemplars("dataset", custom, items_of(custom), 3)
    with pytest.raises(ConfigError, match="candidates"):
        synthetic(store, candidates=0)


def test_stage_with_exemplars_and_candidates(store):
    script_ = {"growing": ["seeded"] * 3, "appearing": ["copy"] * 9}
    with FakeLLM(script=script_, latency=0.0) as llm:
        cfg = synthetic(store, base_url=llm.url, model="m", prompt="subactions_v2", exemplars="dataset", candidates=3, concurrency=4)
        ref = run(cfg, {}, store)
        first_calls = llm.calls()
        assert first_calls == 24 * 3 + 2 * 3  # 'appearing' copies its example: each candidate is asked again (max_attempts 3)
        df = pd.read_parquet(ref.file("descriptions.parquet"))
        cands = pd.read_parquet(ref.file("candidates.parquet"))
    assert len(cands) == 24 * 3 and cands.groupby("class")["kept"].sum().eq(1).all()
    for _, row in df.drop_duplicates("class").iterrows():
        ex = list(row["exemplars"])
        assert len(ex) == 3 and row["class"] not in ex and set(ex) <= TRAIN
    # agreement decides between valid candidates: seeds 0 / 1 / 2 give manner 0 / 1 / 1, so candidate 1 is the consensus
    grow = df[df["class"] == "growing"].iloc[-1]
    assert grow["candidate"] == 1 and grow["seed"] == 1 and "manner 1" in grow["text"] and grow["candidates"] == 3
    g = cands[cands["class"] == "growing"].set_index("candidate")
    assert g.loc[1, "rank"] == 0 and g.loc[2, "rank"] == 1 and g.loc[0, "rank"] == 2 and g.loc[1, "agreement"] > g.loc[0, "agreement"]
    # an answer that copies its worked example is flagged (after every attempt)
    app = df[df["class"] == "appearing"]
    assert not app["valid"].any() and "copies_exemplar" in list(app["qa_flags"].iloc[0]) and app["attempts"].iloc[0] == 9
    assert df[~df["class"].isin(["appearing"])]["valid"].all()
    # quality against the synthetic scripts: in the table, the manifest and the log
    q = ref.manifest()["run"]["quality"]
    assert q["truth"] == "synthetic scripts" and 0 <= q["similarity"] < 0.5 and set(q["by_split"]) == {"train", "val", "test"}
    assert len(q["per_class"]) == 24 and df["truth_similarity"].notna().all()
    # same config, artifact gone: rebuilt from the cache, same choice (deterministic)
    shutil.rmtree(ref.path)
    again = run(cfg, {}, store)
    assert again.version == ref.version
    pd.testing.assert_frame_equal(pd.read_parquet(again.file("candidates.parquet")).drop(columns=["from_cache"]), cands.drop(columns=["from_cache"]))


def _attempt(sentences: list[str], flags: list[str] = (), seed: int = 0) -> Attempt:
    return Attempt(seed, f"k{seed}", Completion(json.dumps(sentences)), sentences, list(flags))


def test_choose_rule_is_deterministic():
    items = [ClassItem("train", "a", "a"), ClassItem("train", "b", "b")]
    x, y, z = ["one red", "two red", "three red"], ["one blue", "two blue", "three blue"], ["one red", "two red", "four red"]
    # class a: a flagged consensus loses to a valid answer; class b: equal to a's kept answer -> same_as_other_class
    attempts = [[_attempt(x, ["too_long"])], [_attempt(y, seed=1)], [_attempt(z, seed=2)],
                [_attempt(y)], [_attempt(x, seed=1)], [_attempt(y, seed=2)]]  # fmt: skip
    choices, scores = choose(items, attempts, 3, 3)
    assert choices[0].candidate == 2 and choices[0].valid  # y and z are valid; z agrees more with x and y than y does
    assert choices[1].candidate == 0 and choices[1].valid  # y twice is the consensus; the tie goes to the lower index
    again, _ = choose(items, attempts, 3, 3)
    assert [c.candidate for c in again] == [c.candidate for c in choices]
    same = [[_attempt(x)], [_attempt(x)]]
    flagged, _ = choose(items, same, 1, 3)
    assert flagged[0].valid and flagged[1].flags == ["same_as_other_class"]


def test_default_backend_auto(store, monkeypatch, capsys, fsar_lines):
    cfg = load_config("hmdb51", overrides={"artifacts": store.root})
    assert cfg.descriptions.backend == "auto"
    assert resolve_backend(cfg.descriptions)[0] == "local"
    assert make_backend(cfg.descriptions, announce=True).name == "local"
    assert "backend local (auto: no base URL and no $OPENAI_API_KEY" in capsys.readouterr().out
    monkeypatch.setenv("OPENAI_API_KEY", "sk-x")
    assert resolve_backend(cfg.descriptions) == ("openai", "auto: $OPENAI_API_KEY is set")
    monkeypatch.delenv("OPENAI_API_KEY")
    with_url = cfg.override("descriptions.base_url=http://127.0.0.1:9/v1")
    assert make_backend(with_url.descriptions).name == "openai"
    assert resolve_backend(cfg.override("descriptions.backend=file").descriptions)[0] == "file"
    # the local server: every core on a machine with <= 2 cores, else half of them (2 to 4)
    for cores, want in ((1, 1), (2, 2), (3, 2), (4, 2), (16, 4)):
        monkeypatch.setattr("os.sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert server_threads(cfg.descriptions) == want, cores
    assert server_threads(cfg.override("descriptions.server_threads=3").descriptions) == 3


def test_quality_report_with_the_true_scripts(store, tmp_path, capsys, fsar_lines):
    truth = tmp_path / "scripts.yaml"  # what `fsar synthetic` writes beside the videos
    truth.write_text(yaml.safe_dump({c.name: {"label": c.name, "sub_act_en_li": script(c.name, 3)} for c in CLASSES}))
    cfg = synthetic(store, backend="file", corpus=str(truth))
    ref = run(cfg, {}, store)
    q = ref.manifest()["run"]["quality"]
    assert q["similarity"] == 1.0 and q["exact_sentences"] == 1.0 and q["by_split"] == {"train": 1.0, "test": 1.0, "val": 1.0}
    assert "closeness to the true scripts (synthetic scripts): 1.00" in capsys.readouterr().out
    cands = pd.read_parquet(ref.file("candidates.parquet"))
    assert len(cands) == 24 and cands["kept"].all() and (cands["truth_similarity"] == 1.0).all()
    # a corpus with one class's sentences reversed: its closeness drops, the others stay at 1
    corpus = yaml.safe_load(truth.read_text())
    corpus["moving up"]["sub_act_en_li"] = script("moving down", 3)
    other = tmp_path / "swapped.yaml"
    other.write_text(yaml.safe_dump(corpus))
    q2 = run(synthetic(store, backend="file", corpus=str(other)), {}, store).manifest()["run"]["quality"]
    assert q2["per_class"]["test/moving up"] < 1.0 and q2["per_class"]["test/moving down"] == 1.0
    assert q["order_right"] == 1.0 and q2["order_right"] == round(23 / 24, 4) and "test/moving up" not in q2["order_right_classes"]
