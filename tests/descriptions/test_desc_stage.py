"""The descriptions stage end to end against a fake OpenAI-compatible server (real HTTP on loopback)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from fake_openai_server import FakeLLM, good_sentences

from pipeline.config import load_config
from pipeline.contract import StageError
from pipeline.descriptions import run
from pipeline.descriptions.prompts import PROMPT_DIR

SECRET = "sk-test-SECRET-never-stored-123"
TINY = {  # split -> display names (custom dataset: labels are used as they are)
    "train": ["catch", "chew", "clap", "climb", "dive", "drink", "eat", "fencing"],
    "val": ["jump", "kick"],
    "test": ["Pushing something from left to right", "punch"],
}


@pytest.fixture()
def tiny_list(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    lines = ["path,label,split"] + [f"{c}/v0.mp4,{c},{s}" for s, cs in TINY.items() for c in cs]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def config(store, dataset="custom", video_list=None, **desc):
    over = {"dataset.name": dataset, "artifacts": store.root, "descriptions.retry_backoff_s": 0.01}
    if video_list is not None:
        over["dataset.video_list"] = str(video_list)
    over.update({f"descriptions.{k}": v for k, v in desc.items()})
    return load_config(None, overrides=over)


def table(ref) -> pd.DataFrame:
    return pd.read_parquet(ref.file("descriptions.parquet"))


def check_artifact(ref, classes: list[tuple[str, str]], s: int = 3) -> pd.DataFrame:
    """Every class of every split, S rows each in order k = 0..S-1; corpus.yaml agrees."""
    df = table(ref)
    assert set(zip(df["split"], df["class"])) == set(classes)
    assert len(df) == s * len(classes)
    assert (df.groupby(["split", "class"])["k"].apply(sorted).map(tuple) == tuple(range(s))).all()
    corpus = yaml.safe_load(Path(ref.file("corpus.yaml")).read_text())
    assert list(corpus) == [c for _, c in classes]
    for c, entry in corpus.items():
        assert entry["label"] == c
        assert entry["sub_act_en_li"] == df[df["class"] == c].sort_values("k")["text"].tolist()
    return df


def all_classes(cfg) -> list[tuple[str, str]]:
    from pipeline.datasets import get_dataset

    return get_dataset(cfg.dataset).all_classes()


def test_good_run_rerun_and_cache(store, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    with FakeLLM(latency=0.02) as llm:
        cfg = config(store, "hmdb51", base_url=llm.url, model="fake-model", concurrency=4)
        ref = run(cfg, {}, store)
        assert llm.calls() == 51 and llm.max_in_flight > 1 and llm.max_in_flight <= 4
        assert {e["response_format"] for e in llm.log} == {"json_schema"}
        assert {e["model"] for e in llm.log} == {"fake-model"}
        df = check_artifact(ref, all_classes(cfg))
        row = df[(df["class"] == "brush_hair") & (df["k"] == 1)].iloc[0]
        assert row["text"] == good_sentences("brush hair", 3)[1] and row["action"] == "brush hair"
        assert row["backend"] == "openai" and row["model"] == "fake-model" and row["prompt_version"] == "subactions_v1"
        assert row["attempts"] == 1 and row["valid"] and list(row["qa_flags"]) == [] and row["seed"] == 0
        assert row["structured_output"] == "json_schema" and row["prompt_tokens"] == 50 and row["completion_tokens"] == 20
        assert json.loads(row["raw_response"])["sub_actions"][1] == row["text"]
        assert not row["from_cache"]
        manifest = ref.manifest()
        assert manifest["config"]["model"] == "fake-model" and manifest["config"]["num_sub_actions"] == 3
        assert manifest["run"]["llm_calls"] == 51 and manifest["run"]["from_cache"] == 0
        # same config: the artifact exists, nothing is asked
        again = run(cfg, {}, store)
        assert again.skipped and again.version == ref.version and llm.calls() == 51
        # artifact gone, cache kept: rebuilt from the cache with 0 calls, same content
        shutil.rmtree(ref.path)
        rebuilt = run(cfg, {}, store)
        assert rebuilt.version == ref.version and llm.calls() == 51
        df2 = table(rebuilt)
        assert df2["from_cache"].all() and df2["text"].tolist() == df["text"].tolist()
        # another dataset sharing two classes (fencing, punch): asks only for the others
        ucf = run(config(store, "ucf101", base_url=llm.url, model="fake-model"), {}, store)
        assert llm.calls() == 51 + 101 - 2
        assert table(ucf).set_index(["class", "k"]).loc[("Fencing", 0), "from_cache"]
    # the key is in no file under the artifact root
    for p in Path(store.root).rglob("*"):
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


def test_new_version_for_model_prompt_s_and_sampling(store, tiny_list, tmp_path):
    with FakeLLM() as llm:
        base = dict(video_list=tiny_list, base_url=llm.url, model="m1")
        v1 = run(config(store, **base), {}, store).version
        n = llm.calls()
        assert run(config(store, **base), {}, store).version == v1 and llm.calls() == n
        v_model = run(config(store, **{**base, "model": "m2"}), {}, store).version
        prompt2 = tmp_path / "subactions_v2"
        shutil.copytree(PROMPT_DIR / "subactions_v1", prompt2)
        v_prompt = run(config(store, **base, prompt=str(prompt2)), {}, store)
        assert table(v_prompt)["prompt_version"].iloc[0] == "subactions_v2"
        # same version name, edited content: new version too
        (prompt2 / "user.txt").write_text((prompt2 / "user.txt").read_text() + "\nBe concise.\n")
        v_edit = run(config(store, **base, prompt=str(prompt2)), {}, store).version
        v_temp = run(config(store, **base, temperature=0.7), {}, store).version
        s4 = run(config(store, **base).override("protocol.num_sub_actions=4"), {}, store)
        assert len({v1, v_model, v_prompt.version, v_edit, v_temp, s4.version}) == 6
        check_artifact(s4, [(s, c) for s, cs in TINY.items() for c in cs], s=4)


def test_error_paths_nothing_lost(store, tiny_list):
    script = {
        "catch": ["429", "429", "ok"],
        "chew": ["500", "ok"],
        "clap": ["slow", "ok"],
        "climb": ["malformed", "ok"],
        "dive": ["wrong_count", "ok"],
        "drink": ["refusal", "ok"],
        "eat": ["class_name", "ok"],
        "jump": ["garbage", "ok"],
    }
    with FakeLLM(script=script, reject_json_schema=True, slow_s=1.5) as llm:
        cfg = config(store, video_list=tiny_list, base_url=llm.url, model="m", request_timeout_s=0.5, concurrency=4)
        ref = run(cfg, {}, store)
        df = check_artifact(ref, all_classes(cfg))
        per = df.groupby("class").first()
        assert per["valid"].all() and (per["qa_flags"].map(len) == 0).all()
        # transport failures are retried inside one attempt; invalid answers cost an attempt
        for c in ("catch", "chew", "clap", "jump", "kick"):
            assert per.loc[c, "attempts"] == 1, c
        for c in ("climb", "dive", "drink", "eat"):
            assert per.loc[c, "attempts"] == 2 and per.loc[c, "seed"] == 1, c
        assert llm.calls("catch", "429") == 2 and llm.calls("chew", "500") == 1
        # llama.cpp-like rejection of json_schema: fall back to json_object, remembered for the server
        rejected = [e for e in llm.log if e["behaviour"] == "reject_json_schema"]
        assert 1 <= len(rejected) <= 4  # at most the requests already in flight
        later = [e for e in llm.log if e["behaviour"] != "reject_json_schema"]
        assert {e["response_format"] for e in later} == {"json_object"}
        assert set(per["structured_output"]) == {"json_object"}
        run_info = ref.manifest()["run"]
        assert run_info["structured_output"] == "json_object" and run_info["classes_reasked"] == 4
        # every attempt is replayed from the cache, the unparseable one included: 0 calls, same table
        def fast_calls() -> int:  # the slow request is logged when its sleep ends, whenever that is
            return llm.calls() - llm.calls(behaviour="slow")

        n = fast_calls()
        shutil.rmtree(ref.path)
        again = run(cfg, {}, store)
        assert fast_calls() == n and table(again)["text"].tolist() == df["text"].tolist()
        assert table(again).groupby("class")["attempts"].first().to_dict() == per["attempts"].to_dict()


def test_invalid_answers_kept_with_flags_or_strict_failure(store, tiny_list):
    script = {"dive": ["wrong_count"] * 9, "kick": ["refusal"] * 9}
    with FakeLLM(script=script) as llm:
        with pytest.raises(StageError) as err:
            run(config(store, video_list=tiny_list, base_url=llm.url, model="m", strict=True), {}, store)
        assert "'dive'" in str(err.value) and "'kick'" in str(err.value) and "wrong_count" in str(err.value)
        assert llm.calls("dive") == 3  # max_attempts
        assert store.catalog().empty
        # not strict: kept; the cached attempts make it 0 new calls
        n = llm.calls()
        ref = run(config(store, video_list=tiny_list, base_url=llm.url, model="m"), {}, store)
        assert llm.calls() == n
    df = check_artifact(ref, [(s, c) for s, cs in TINY.items() for c in cs])
    dive = df[df["class"] == "dive"]
    assert not dive["valid"].any() and list(dive["qa_flags"].iloc[0]) == ["wrong_count"] and dive["attempts"].iloc[0] == 3
    assert dive["text"].tolist() == good_sentences("dive", 4)[:3]  # cut to S
    # a refusal with no sentence to keep is a missing class: see the next test; the text-only refusal here
    # parses into one sentence, kept (padded to S) with its flags
    kick = df[df["class"] == "kick"]
    assert "refusal" in list(kick["qa_flags"].iloc[0]) and kick["text"].nunique() == 1


def test_missing_class_is_an_error_naming_it(store, tiny_list):
    with FakeLLM(script={"jump": ["500"] * 99, "clap": ["malformed"] * 99}) as llm:
        cfg = config(store, video_list=tiny_list, base_url=llm.url, model="m", max_retries=1, max_attempts=2)
        with pytest.raises(StageError) as err:
            run(cfg, {}, store)
        msg = str(err.value)
        assert "val/'jump'" in msg and "HTTP 500" in msg and "train/'clap'" in msg and "unparseable" in msg
        assert "'catch'" not in msg and store.catalog().empty
        assert "\n" not in msg and "after 2 answer(s)" in msg  # one line, the attempts made
        assert "the last '{\"sub_actions\": [\"The person reaches out\", \"and then'" in msg  # clap's last answer, as received
        for option in ("descriptions.local_model=", "LLM=openai", "descriptions.max_attempts=4; now 2", "LLM=file CORPUS="):
            assert option in msg, option
        assert llm.calls("jump") == 4  # 2 attempts x (1 + 1 retry)
    with FakeLLM() as healthy:  # the other classes' answers are cached: only the two are asked
        ref = run(config(store, video_list=tiny_list, base_url=healthy.url, model="m", max_retries=1, max_attempts=2), {}, store)
        assert sorted({e["action"] for e in healthy.log}) == ["clap", "jump"]
    check_artifact(ref, all_classes(cfg))


def test_the_demo_preset_asks_again_until_an_answer_parses(store, tiny_list):
    """The demo preset (one candidate per class) re-asks an unparseable answer with another seed, so a weak
    model's broken answer does not stop `make full PRESET=demo` or a deployment (issue 22)."""
    demo = load_config("demo")
    assert demo.descriptions.max_attempts >= 3 and demo.descriptions.candidates == 1
    with FakeLLM(script={"clap": ["malformed", "garbage"], "kick": ["refusal"]}) as llm:
        over = {"dataset.name": "custom", "dataset.video_list": str(tiny_list), "artifacts": store.root, "descriptions.backend": "openai",
                "descriptions.base_url": llm.url, "descriptions.model": "m", "descriptions.max_retries": 0}  # fmt: skip
        ref = run(load_config("demo", overrides=over), {}, store)
        clap = [e for e in llm.log if e["action"] == "clap"]
        assert [e["behaviour"] for e in clap] == ["malformed", "garbage", "ok"] and len({e["seed"] for e in clap}) == 3  # another seed each time
    df = table(ref)
    assert df[df["class"] == "clap"]["valid"].all() and df[df["class"] == "kick"]["valid"].all()


def test_benchmark_preset_without_llm_stops_before_work(store):
    cfg = load_config("hmdb51", overrides={"artifacts": store.root, "descriptions.backend": "openai"})
    with pytest.raises(StageError) as err:
        run(cfg, {}, store)
    msg = str(err.value)
    for choice in ("OPENAI_API_KEY", "MODEL=", "vllm", "BASE_URL=", "LLM=local", "LLM=file"):
        assert choice in msg
    assert not Path(store.root).exists() or not any(Path(store.root).rglob("*.parquet"))


def test_base_url_without_model_uses_the_servers_model(store, tiny_list):
    with FakeLLM(models=("only-one",)) as llm:
        ref = run(config(store, video_list=tiny_list, base_url=llm.url), {}, store)
        assert {e["model"] for e in llm.log} == {"only-one"} and table(ref)["model"].iloc[0] == "only-one"
    with FakeLLM(models=("a", "b")) as llm, pytest.raises(StageError, match="offers 2"):
        run(config(store, video_list=tiny_list, base_url=llm.url), {}, store)


def test_file_backend(store, tiny_list, tmp_path):
    names = [c for cs in TINY.values() for c in cs]
    release = {c.upper(): {"label": c, "sub_act_en_li": good_sentences(c, 3)} for c in names}
    release["DIVE"]["sub_act_en_li"] = ["Only one sentence."]
    path = tmp_path / "corpus.yaml"
    path.write_text(yaml.safe_dump(release))
    ref = run(config(store, video_list=tiny_list, backend="file", corpus=str(path)), {}, store)
    df = check_artifact(ref, [(s, c) for s, cs in TINY.items() for c in cs])
    assert (df["backend"] == "file").all() and df["prompt_version"].isna().all() and (df["attempts"] == 1).all()
    assert ref.manifest()["run"]["llm_calls"] == 0 and ref.manifest()["run"]["read_without_call"] == 12
    dive = df[df["class"] == "dive"]
    assert list(dive["qa_flags"].iloc[0]) == ["wrong_count"] and dive["text"].tolist() == ["Only one sentence."] * 3
    assert df[df["class"] == "catch"]["text"].tolist() == good_sentences("catch", 3)
    # JSON {class: [sentences]}; a missing class is named before any work
    as_json = tmp_path / "corpus.json"
    as_json.write_text(json.dumps({c: good_sentences(c, 3) for c in names if c != "kick"}))
    with pytest.raises(StageError, match="lacks 1 of 12 classes: 'kick'"):
        run(config(store, video_list=tiny_list, backend="file", corpus=str(as_json)), {}, store)
    with pytest.raises(StageError, match="needs a corpus"):
        run(config(store, video_list=tiny_list, backend="file"), {}, store)


def test_vllm_and_local_say_what_is_missing(store, tiny_list, tmp_path):
    with pytest.raises(StageError, match="needs a model"):
        run(config(store, video_list=tiny_list, backend="vllm"), {}, store)
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(StageError, match="vllm serve"):
            run(config(store, video_list=tiny_list, backend="vllm", model="Qwen/Qwen2.5-0.5B-Instruct"), {}, store)
    with pytest.raises(StageError, match="does not exist"):
        run(config(store, video_list=tiny_list, backend="local", gguf=str(tmp_path / "none.gguf")), {}, store)
    with pytest.raises(StageError, match="takes a GGUF file"):
        run(config(store, video_list=tiny_list, backend="local", model="gpt-4o"), {}, store)
