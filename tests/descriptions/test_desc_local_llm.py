"""One honest end-to-end run of the `local` backend: the real llama.cpp server with the SmolLM2-135M GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipeline.config import load_config
from pipeline.descriptions import run

CLASSES = {"train": ["brush hair", "ride bike"], "test": ["Pushing something from left to right"]}


def _llama_cpp_or_skip() -> None:
    try:
        import llama_cpp  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - ImportError, or a wheel that does not load on this CPU
        reason = f"llama-cpp-python cannot be imported here ({type(exc).__name__}: {exc}); install fsar[local]"
        print(f"SKIPPED: {reason}")
        pytest.skip(reason)


@pytest.mark.llm
@pytest.mark.slow
def test_local_backend_with_smollm2(store, tmp_path, capsys, fsar_lines):
    _llama_cpp_or_skip()
    video_list = tmp_path / "three.csv"
    video_list.write_text("path,label,split\n" + "".join(f"x/{c}.mp4,{c},{s}\n" for s, cs in CLASSES.items() for c in cs))
    cfg = load_config(
        "demo",
        overrides={
            "dataset.name": "custom",
            "dataset.video_list": str(video_list),
            "artifacts": store.root,
            "descriptions.max_attempts": 1,  # keeps the run short on a busy CPU; re-asking is tested with the fake server
            "descriptions.max_tokens": 160,
        },
    )
    assert cfg.descriptions.backend == "local"
    ref = run(cfg, {}, store)
    out = capsys.readouterr().out
    assert "poor sentences" in out and "llama.cpp server ready" in out
    df = pd.read_parquet(ref.file("descriptions.parquet"))
    assert len(df) == 3 * 3 and set(df["class"]) == {c for cs in CLASSES.values() for c in cs}
    assert (df["backend"] == "local").all() and (df["model"] == "SmolLM2-135M-Instruct.Q4_1.gguf").all()
    assert df["text"].str.len().gt(0).all()
    # llama.cpp rejects json_schema: the answers came with json_object + schema
    assert set(df["structured_output"]) == {"json_object"}
    for raw in df.groupby("class")["raw_response"].first():
        assert isinstance(json.loads(raw)["sub_actions"], list)
    assert df["prompt_tokens"].gt(0).all() and df["completion_tokens"].gt(0).all()
    manifest = ref.manifest()
    assert manifest["config"]["gguf_sha256"] and manifest["run"]["llm_calls"] == 3
    print("\nSmolLM2-135M wrote:\n" + df[["class", "k", "text", "qa_flags"]].to_string(index=False))
    # the server is gone; a re-run is a skip, and a rebuild from the cache starts no server at all
    import shutil

    shutil.rmtree(ref.path)
    again = run(cfg, {}, store)
    assert again.version == ref.version and "starting llama.cpp" not in capsys.readouterr().out
    assert pd.read_parquet(again.file("descriptions.parquet"))["from_cache"].all()
    assert not any(Path(store.root).glob(".staging/descriptions/*/*"))
