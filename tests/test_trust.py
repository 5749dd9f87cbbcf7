"""Artifacts you can trust: planned versions, upstream by config, equal bytes, verified reads, one writer.

Everything runs the tiny real pipeline (synthetic mp4s, fsar-micro with seeded random weights) through
the same entry points users have: `fsar plan/verify/<stage>` and `pipeline.registry.run_stage`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.artifacts import ArtifactStore
from pipeline.cli import app, build_config
from pipeline.registry import PIPELINE, plan, run_stage

pytestmark = pytest.mark.slow
runner = CliRunner()
STAGE_NAMES = [s.name for s in PIPELINE]


def _args(root: Path, synthetic_root: Path, overrides: list[str]) -> list[str]:
    out = ["--dataset", "synthetic", "--video-root", str(synthetic_root), "--artifacts", str(root)]
    for o in overrides:
        out += ["--set", o]
    return out


def _cli(*args: str):
    res = runner.invoke(app, list(args))
    return res.exit_code, res.output


def _one_error(out: str) -> bool:
    """The CLI said what is wrong in one line (progress lines on stdout aside), with no traceback."""
    return sum(line.split("\r")[-1].split("]")[-1].startswith("error: ") for line in out.splitlines()) == 1 and "Traceback" not in out


def _build_all(cfg) -> dict[str, object]:
    refs = {}
    for name in STAGE_NAMES:
        refs[name] = run_stage(name, cfg)
    return refs


@pytest.fixture(scope="module")
def built(synthetic_root, tiny_overrides, tmp_path_factory):
    """The tiny pipeline, built stage by stage through the CLI, after a plan that said 'build' for each."""
    root = tmp_path_factory.mktemp("trust") / "art"
    args = _args(root, synthetic_root, tiny_overrides)
    code, out = _cli("plan", *args, "--json")
    assert code == 0, out
    before = json.loads(out)
    for name in STAGE_NAMES:
        code, out = _cli(name, *args)
        assert code == 0, out
    return root, args, before


def test_plan_predicts_every_version_and_run_uses_it(built):
    root, args, before = built
    assert [p["stage"] for p in before] == STAGE_NAMES
    assert all(p["status"] == "build" and p["version"] for p in before)
    code, out = _cli("plan", *args, "--json")
    after = json.loads(out)
    assert [(p["stage"], p["version"], p["status"]) for p in after] == [(p["stage"], p["version"], "exists") for p in before]
    store = ArtifactStore(root)
    for p in after:  # every artifact's manifest names exactly the upstream versions the plan showed
        m = store.manifest(store.ref(p["stage"], "synthetic", p["version"]))
        assert {k: v["version"] for k, v in m["inputs"].items()} == p["inputs"]
    code, out = _cli("verify", "--artifacts", str(root))
    assert code == 0 and f"{len(STAGE_NAMES)} artifact(s) checked" in out and "0 broken" in out, out
    versions = {p["stage"]: p["version"] for p in after}
    reads = store.manifest(store.ref("evaluate", "synthetic", versions["evaluate"]))["reads"]  # the exact files used
    assert f"train/synthetic/{versions['train']}/best.pt" in reads
    assert f"embeddings/synthetic/{versions['embeddings']}/states.npy" in reads
    assert any(r.startswith(f"frames/synthetic/{versions['frames']}/shards/") for r in reads)
    cat = store.catalog().set_index("stage")  # rows = rows of the main table (not of every file)
    assert cat.loc["frames", "rows"] == len(store.load("frames", "synthetic")) and cat["problem"].isna().all()


def test_upstream_follows_the_config_not_the_newest(built):
    root, args, before = built
    planned = {p["stage"]: p["version"] for p in before}
    longer = ["train.episodes_per_epoch=3" if a == "train.episodes_per_epoch=2" else a for a in args]  # one value per key
    code, out = _cli("train", *longer)  # a newer train artifact, from another config
    assert code == 0, out
    code, out = _cli("plan", *args, "--json")
    again = {p["stage"]: p for p in json.loads(out)}
    assert again["train"]["version"] == planned["train"] and again["evaluate"]["inputs"]["train"] == planned["train"]
    code, out = _cli("evaluate", *args, "--set", "evaluate.seed=7")
    assert code == 0, out
    store = ArtifactStore(root)
    ev = store.resolve("evaluate", "synthetic")  # the one just built
    assert store.manifest(ev)["inputs"]["train"]["version"] == planned["train"]
    assert planned["train"] in (Path(ev.path) / "report.md").read_text()  # the report names the train version it scored
    # a missing upstream is an error naming the stage to run first, never a silent substitute
    code, out = _cli("evaluate", *args, "--set", "train.lr=0.5")
    assert code == 2 and "evaluate needs the train artifact synthetic/" in out and "run `fsar train" in out, out
    assert _one_error(out)


def test_pins_and_blocked_plans_are_one_line_errors(built, tmp_path):
    root, args, before = built
    code, out = _cli("evaluate", *args, "--input", "train=000000000000")
    assert code == 2 and "pinned version 000000000000 does not exist" in out and _one_error(out), out
    code, out = _cli("evaluate", *args, "--input", "nope=1")
    assert code == 2 and "unknown stage 'nope'" in out, out
    train_v = next(p["version"] for p in before if p["stage"] == "train")
    code, out = _cli("evaluate", *args, "--set", "train.lr=0.5", "--input", f"train={train_v}", "--set", "evaluate.seed=8")
    assert code == 0, out  # a pin replaces what the config implies
    code, out = _cli("plan", "--dataset", "synthetic", "--artifacts", str(tmp_path / "x"), "--video-root", str(tmp_path / "none"), "--json")
    assert code == 0
    blocked = {p["stage"]: p for p in json.loads(out)}
    assert blocked["frames"]["status"] == "blocked" and "synthetic.csv" in blocked["frames"]["reason"]
    assert blocked["train"]["status"] == "blocked" and blocked["evaluate"]["status"] == "blocked"
    code, out = _cli("frames", "--dataset", "synthetic", "--artifacts", "memory://x")
    assert code == 2 and "protocol 'memory' is not supported" in out and _one_error(out), out


# canaries: a secret in each form a user may give one (URL user info, a URL query, a secret environment variable)
USER_CANARY, QUERY_CANARY, ENV_CANARY = "canary-userinfo-3f9a1c", "canary-query-b27e44", "canary-env-token-9d01e6"


def test_two_roots_hold_byte_identical_artifacts(synthetic_root, tiny_overrides, tmp_path, monkeypatch):
    """Equal versions hold equal bytes: the whole pipeline built twice, once in-process with the tiny settings and once
    through the CLI and a run file with every setting that no version holds changed (worker and loader-thread counts,
    batching, logging and checkpoint intervals, a failure threshold, the base URL, the preset's name and folder, the
    corpus's folder, the artifact root), gives the same versions and the same bytes in every file. The second run's
    base URL holds a secret in every form: no byte under its root and no line it prints holds one."""
    monkeypatch.setenv("FSAR_CANARY_TOKEN", ENV_CANARY)
    one = build_config("synthetic", None, tiny_overrides, str(tmp_path / "one"), str(synthetic_root))
    refs = _build_all(one)
    store = ArtifactStore(one.artifacts)
    sums = [{s: (r.version, store.manifest(r)["files"]) for s, r in refs.items()}]

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(synthetic_root / "scripts.yaml", elsewhere / "scripts.yaml")  # the same corpus in another folder
    shutil.copy(Path(__file__).resolve().parents[1] / "pipeline" / "configs" / "demo.yaml", elsewhere / "my-demo.yaml")
    sets = dict(o.split("=", 1) for o in tiny_overrides)
    sets.update({
        "descriptions.corpus": str(elsewhere / "scripts.yaml"), "descriptions.concurrency": "4", "frames.workers": "2",
        "frames.max_failed_fraction": "0.5", "embeddings.batch_size": "5", "train.loader_workers": "2", "train.log_every": "1",
        "train.checkpoint_every": "1", "evaluate.loader_workers": "2", "evaluate.episodes_per_batch": "2", "evaluate.videos_per_pass": "3",
    })  # fmt: skip
    base_url = f"http://fsar:{USER_CANARY}@127.0.0.1:9/v1/{ENV_CANARY}?api_key={QUERY_CANARY}&sig={QUERY_CANARY}"
    run_file = elsewhere / "fsar.yaml"
    run_file.write_text(
        f"dataset: synthetic\npreset: my-demo.yaml\nvideo_root: {synthetic_root}\nartifacts: ../two\nbase_url: '{base_url}'\nset:\n"
        + "".join(f"  {k}: {v}\n" for k, v in sets.items()), encoding="utf-8")  # fmt: skip
    printed = []
    for name in STAGE_NAMES:
        code, out = _cli(name, "--config", str(run_file))
        assert code == 0, out
        printed.append(out)
    for extra in (["config"], ["config", "--json"], ["plan"], ["plan", "--json"]):
        code, out = _cli(*extra, "--config", str(run_file))
        assert code == 0, out
        printed.append(out)
    code, out = _cli("catalog", "--artifacts", str(tmp_path / "two"))
    assert code == 0, out
    printed.append(out)
    listing = printed[len(STAGE_NAMES)]
    assert 'descriptions.base_url = "http://***@127.0.0.1:9/v1/***?api_key=***&sig=***"' in listing, listing  # given, and masked
    assert "# preset my-demo" in listing, listing  # values from the copied preset, under its own name

    store = ArtifactStore(tmp_path / "two")
    sums.append({s: (store.resolve(s, "synthetic").version, store.manifest(store.resolve(s, "synthetic"))["files"]) for s in refs})
    assert sums[0] == sums[1]  # same versions, and every file's sha256 (random CLIP weights included) equal
    assert {"states.npy", "tokens.npy"} <= set(sums[0]["embeddings"][1])
    assert {"best.pt", "last.pt", "config.json"} <= set(sums[0]["train"][1])
    stored = json.loads((tmp_path / "one" / "train" / "synthetic" / sums[0]["train"][0] / "config.json").read_text())
    assert "artifacts" not in stored and "resume" not in stored["train"] and str(tmp_path) not in json.dumps(stored)
    assert "descriptions" not in stored and "preset" not in stored and "loader_workers" not in stored["train"]

    canaries = [USER_CANARY, QUERY_CANARY, ENV_CANARY]
    leaks = [f"{p}: {c}" for p in (tmp_path / "two").rglob("*") if p.is_file() for c in canaries if c.encode() in p.read_bytes()]
    assert leaks == []
    assert not [c for c in canaries if any(c in out for out in printed)], "\n".join(printed)


def _copy(root: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(root, dst)
    return dst


def _flip(path: Path, at: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x5A
    path.write_bytes(bytes(data))


def _folder(root: Path, stage: str, before) -> Path:
    return root / stage / "synthetic" / next(p["version"] for p in before if p["stage"] == stage)


@pytest.mark.parametrize("stage,file,expect", [  # caught by the existence check of the upstream, before any read
    ("embeddings", "states.npy", "is broken (file 'states.npy' does not match its sha256"),
    ("train", "best.pt", "is broken (file 'best.pt' does not match its sha256"),
])
def test_a_flipped_byte_is_never_used(built, tmp_path, stage, file, expect):
    root, args, before = built
    copy = _copy(root, tmp_path)
    _flip(_folder(copy, stage, before) / file)
    moved = [a if a != str(root) else str(copy) for a in args]
    evaluations = sorted((copy / "evaluate" / "synthetic").iterdir())
    code, out = _cli("evaluate", *moved, "--set", "evaluate.seed=11")
    assert code == 2 and expect in out and _one_error(out), out
    assert sorted((copy / "evaluate" / "synthetic").iterdir()) == evaluations  # nothing published
    code, out = _cli("verify", "--artifacts", str(copy))
    assert code == 2 and f"BROKEN  {stage}/synthetic/" in out and "1 broken" in out, out


def test_shard_damage_is_a_clear_error(built, tmp_path):
    root, args, before = built
    copy = _copy(root, tmp_path)
    frames = _folder(copy, "frames", before)
    shards = sorted((frames / "shards").glob("*.parquet"))
    moved = [a if a != str(root) else str(copy) for a in args]
    # one flipped byte inside each JPEG of the test videos' shard: same size, caught by the CRC-32 on read
    import pyarrow.parquet as pq

    from pipeline.artifacts import ArtifactError
    from pipeline.frames.reader import FrameStore

    index = pq.read_table(frames / "index.parquet").to_pandas()
    test = index[(index["split"] == "test") & index["shard"].notna()]
    target = frames / test["shard"].iloc[0]
    reader = FrameStore.open("synthetic", frames.name, root=copy)  # opened before the damage, as by a running job
    original = target.read_bytes()
    blob = bytearray(original)
    for jpeg in pq.read_table(target).column("jpeg").to_pylist():
        at = bytes(blob).index(jpeg) + len(jpeg) // 2
        blob[at] ^= 0x5A
    target.write_bytes(bytes(blob))
    vid = test["video_id"].iloc[0]
    with pytest.raises(ArtifactError, match="fails its CRC-32 check"):
        reader.frames(vid, reader.stored_indices(vid)[:1])
    code, out = _cli("evaluate", *moved, "--set", "evaluate.seed=12")  # a new run: the existence check names the shard
    assert code == 2 and f"'{target.relative_to(frames).as_posix()}' does not match its sha256" in out and _one_error(out), out
    target.write_bytes(original)
    # a cut footer and a deleted shard
    shards[-1].write_bytes(shards[-1].read_bytes()[:-20])
    code, out = _cli("verify", "--artifacts", str(copy), "--stage", "frames")
    assert code == 2 and "has" in out and "bytes, the manifest says" in out, out
    shards[-1].unlink()
    code, out = _cli("train", *moved, "--set", "train.seed=5")
    assert code == 2 and "is broken" in out and "is missing" in out and "Traceback" not in out, out


def test_broken_manifest_is_listed_and_never_skipped(built, tmp_path):
    root, args, before = built
    copy = _copy(root, tmp_path)
    (_folder(copy, "frames", before) / "manifest.json").write_text("{not json")
    moved = [a if a != str(root) else str(copy) for a in args]
    code, out = _cli("frames", *moved)
    assert code == 2 and "is broken (manifest.json is not valid JSON" in out and "skipped" not in out, out
    code, out = _cli("catalog", "--artifacts", str(copy))
    assert code == 0 and "manifest.json is not valid JSON" in out
    code, out = _cli("embeddings", *moved, "--set", "embeddings.dtype=float32")
    assert code == 0, out  # stages that do not read frames are unaffected


def test_two_runs_at_once_build_one_artifact(synthetic_root, tiny_overrides, tmp_path):
    root = tmp_path / "art"
    cmd = [sys.executable, "-m", "pipeline.cli", "frames", *_args(root, synthetic_root, tiny_overrides)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("published" in o for o in outs) == 1 and sum("already exists, skipped" in o for o in outs) == 1, outs
    assert not any("Traceback" in o for o in outs)
    assert len(list((root / "frames" / "synthetic").iterdir())) == 1
    leftovers = [p for p in (root / ".staging").rglob("*") if p.is_dir() and p.parent.name == "synthetic"] if (root / ".staging").exists() else []
    assert leftovers == []


def test_killed_run_leaves_no_orphaned_staging(store):
    import pandas as pd

    from pipeline.artifacts import compute_version
    from pipeline.contract import build_once

    version = compute_version("toy", 1, {"k": 1}, {})
    orphan = Path(store.root) / ".staging" / "toy" / "ds" / f"{version}-deadbeef"  # what a kill -9 mid-write leaves
    (orphan / "t.parquet").parent.mkdir(parents=True)
    (orphan / "t.parquet").write_bytes(b"half")
    ref = build_once(store, "toy", "ds", config={"k": 1}, inputs={}, main="t.parquet",
                     build=lambda st: st.write_parquet("t.parquet", pd.DataFrame({"a": [1]})))
    assert ref.version == version and not orphan.exists()
    assert store.load("toy", "ds")["a"].tolist() == [1]


def test_plan_of_the_default_config_needs_nothing_built(tmp_path):
    cfg = build_config("hmdb51", None, ["descriptions.backend=file", f"descriptions.corpus={tmp_path / 'c.yaml'}"], str(tmp_path))
    got = {p.stage: p for p in plan(cfg)}
    assert got["descriptions"].status == "blocked" and "c.yaml" in got["descriptions"].reason
    assert got["frames"].status == "blocked" and "VIDEO_ROOT" in got["frames"].reason
