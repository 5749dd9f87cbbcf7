import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from pipeline import artifacts
from pipeline.artifacts import ArtifactError, ArtifactStore, compute_version
from pipeline.contract import build_once


def _build(df):
    def build(staging):
        staging.write_parquet("table.parquet", df)

    return build


def test_version_is_a_content_hash(store):
    a = compute_version("s", 1, {"x": 1, "y": [1, 2]}, {})
    assert a == compute_version("s", 1, {"y": [1, 2], "x": 1}, {})  # key order does not matter
    assert a != compute_version("s", 2, {"x": 1, "y": [1, 2]}, {})  # format version
    assert a != compute_version("s", 1, {"x": 2, "y": [1, 2]}, {})  # config
    up1, up2 = store.ref("u", "d", "v1"), store.ref("u", "d", "v2")
    assert compute_version("s", 1, {}, {"u": up1}) != compute_version("s", 1, {}, {"u": up2})  # inputs


def test_publish_load_catalog_and_cache_hit(store):
    df = pd.DataFrame({"a": [1, 2, 3], "b": ["x", "y", "z"]})
    calls = []

    def build(staging):
        calls.append(1)
        staging.write_parquet("table.parquet", df)
        staging.extra["summary"] = {"n": 3}

    ref = build_once(store, "toy", "ds", config={"k": 1}, inputs={}, build=build, main="table.parquet")
    again = build_once(store, "toy", "ds", config={"k": 1}, inputs={}, build=build, main="table.parquet")
    assert calls == [1] and again == ref and again.skipped and not ref.skipped
    pd.testing.assert_frame_equal(store.load("toy", "ds"), df)
    pd.testing.assert_frame_equal(artifacts.load("toy", "ds", root=store.root), df)
    m = ref.manifest()
    assert m["rows"] == {"table.parquet": 3} and m["summary"] == {"n": 3} and m["config"] == {"k": 1}
    assert set(m["files"]) == {"table.parquet"}
    cat = artifacts.catalog(store.root)
    assert list(cat[["stage", "dataset", "version"]].itertuples(index=False, name=None)) == [("toy", "ds", ref.version)]
    assert {"created", "inputs", "path"} <= set(cat.columns)

    child = build_once(store, "child", "ds", config={}, inputs={"toy": ref}, build=_build(df), main="table.parquet")
    row = artifacts.catalog(store.root).set_index("stage").loc["child"]
    assert row["inputs"] == f"toy=toy/ds/{ref.version}"
    assert [str(r) for r in store.lineage(child)] == [str(child), str(ref)]


def test_latest_is_the_newest(store):
    first = build_once(store, "toy", "ds", config={"k": 1}, inputs={}, build=_build(pd.DataFrame({"a": [1]})), main="table.parquet")
    second = build_once(store, "toy", "ds", config={"k": 2}, inputs={}, build=_build(pd.DataFrame({"a": [2]})), main="table.parquet")
    assert store.resolve("toy", "ds").version == second.version
    assert store.load("toy", "ds", first.version)["a"].tolist() == [1]
    assert store.load("toy", "ds")["a"].tolist() == [2]


def test_crash_mid_write_leaves_nothing_visible(store):
    def crash(staging):
        staging.write_parquet("table.parquet", pd.DataFrame({"a": [1]}))
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        build_once(store, "toy", "ds", config={}, inputs={}, build=crash, main="table.parquet")
    assert store.catalog().empty
    assert not (store.local_path(store.ref("toy", "ds", "x")).parent).exists() or not any(
        store.local_path(store.ref("toy", "ds", "x")).parent.iterdir()
    )
    with pytest.raises(ArtifactError, match="no toy artifact"):
        store.load("toy", "ds")


def test_killed_process_leaves_nothing_visible(tmp_path):
    root = tmp_path / "art"
    code = f"""
import os, pandas as pd
from pipeline.artifacts import ArtifactStore
store = ArtifactStore({str(root)!r})
with store.publish("toy", "ds", "v1", config={{}}, main="t.parquet") as st:
    st.write_parquet("t.parquet", pd.DataFrame({{"a": [1]}}))
    os._exit(9)  # a kill: no clean-up runs
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True)
    assert proc.returncode == 9
    store = ArtifactStore(root)
    assert store.catalog().empty and store.exists("toy", "ds", "v1") is None


def test_folder_without_manifest_is_never_read(store):
    ref = build_once(store, "toy", "ds", config={}, inputs={}, build=_build(pd.DataFrame({"a": [1]})), main="table.parquet")
    path = store.local_path(ref)
    (path / "manifest.json").unlink()
    cat = store.catalog()  # listed as broken, never hidden
    assert cat["problem"].tolist() == ["no manifest.json"]
    assert store.manifests() == []  # and never read
    with pytest.raises(ArtifactError):
        store.load("toy", "ds", ref.version)


def test_checksum_mismatch_is_a_clear_error(store):
    ref = build_once(store, "toy", "ds", config={}, inputs={}, build=_build(pd.DataFrame({"a": [1, 2]})), main="table.parquet")
    target = store.local_path(ref) / "table.parquet"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte, same size: only the sha256 can tell
    target.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="'table.parquet' does not match its sha256.*re-run the toy stage"):
        store.load("toy", "ds")  # resolving the artifact checks every file (the existence check)
    with pytest.raises(ArtifactError, match="checksum mismatch for 'table.parquet'.*re-run the toy stage"):
        store.verified_path(ref, "table.parquet")  # and so does every read
    pd.DataFrame({"a": [9, 9, 9]}).to_parquet(target, index=False)  # another size: caught before hashing
    with pytest.raises(ArtifactError, match=r"is broken \(file 'table.parquet' has \d+ bytes, the manifest says"):
        store.load("toy", "ds")


def test_artifact_without_table_loads_as_path(store):
    def build(staging):
        staging.path("weights.bin").write_bytes(b"\x00" * 10)

    ref = build_once(store, "bin", "ds", config={}, inputs={}, build=build)
    assert store.load("bin", "ds") == ref.path and os.path.isdir(ref.path)
    store.verify(ref)


def test_only_local_roots(tmp_path):
    with pytest.raises(ArtifactError, match="protocol 'memory' is not supported; use a local folder or a file:// URL"):
        ArtifactStore("memory://fsar-test-root")
    store = ArtifactStore(f"file://{tmp_path / 'art'}")
    ref = build_once(store, "toy", "ds", config={"a": 1}, inputs={}, build=_build(pd.DataFrame({"a": [5]})), main="table.parquet")
    assert ref.path == str(tmp_path / "art" / "toy" / "ds" / ref.version)
    assert ArtifactStore(tmp_path / "art").load("toy", "ds")["a"].tolist() == [5]
