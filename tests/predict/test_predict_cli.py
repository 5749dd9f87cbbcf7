"""`fsar export` / `fsar predict` from the command line: the happy path and every bad input (one line, exit 2)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from predict_helpers import link_support
from typer.testing import CliRunner

from pipeline.cli import app

pytestmark = pytest.mark.slow
runner = CliRunner()


@pytest.fixture(scope="module")
def support_dir(tmp_path_factory, test_videos) -> Path:
    return link_support(tmp_path_factory.mktemp("support"), test_videos, shots=2)


@pytest.fixture(scope="module")
def queries(test_videos) -> list[str]:
    return [paths[-1] for paths in test_videos.values()]  # the third video of each class: never a support clip


def _predict(bundle, backbone, support, *query: str, extra: tuple[str, ...] = ()):
    args = ["predict", "--model", str(bundle), "--backbone", str(backbone), "--support", str(support), "--query", *query, *extra]
    return runner.invoke(app, args)


def _one_line_error(out, *words: str) -> None:
    assert out.exit_code == 2, out.output
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr
    assert "Traceback" not in out.output
    for w in words:
        assert w in lines[0], lines[0]


def test_export_then_predict_writes_the_csv(trained, tiny_overrides, backbone_file, support_dir, queries, tmp_path, test_videos):
    cfg, store, _ = trained
    bundle = tmp_path / "bundle"
    given = {o.split("=", 1)[0]: o for o in [f"dataset.video_root={cfg.dataset.video_root}", *tiny_overrides, *_tiny_sets(cfg)]}  # last wins here
    sets = [a for o in given.values() for a in ("--set", o)]
    out = runner.invoke(app, ["export", "--dataset", "synthetic", "--preset", "demo", "--artifacts", str(store.root), *sets, "--out", str(bundle)])
    assert out.exit_code == 0, out.output
    assert (bundle / "bundle.json").is_file()
    csv = tmp_path / "pred.csv"
    out = _predict(bundle, backbone_file, support_dir, queries[0], *queries[1:], extra=("--out", str(csv)))
    assert out.exit_code == 0, out.output
    df = pd.read_csv(csv)
    classes = sorted(test_videos)
    assert df["query"].tolist() == queries
    assert df["prediction"].isin(classes).all()
    assert [c for c in df.columns if c.startswith("score:")] == [f"score:{c}" for c in classes]
    for cls in classes:
        assert f"descriptions of {cls!r}: bundle" in out.output
    assert "task context inductive" in out.output and "6 classes, 2 support clip(s) per class" in out.output
    parquet = tmp_path / "pred.parquet"
    assert _predict(bundle, backbone_file, support_dir, *queries, extra=("--out", str(parquet))).exit_code == 0
    pd.testing.assert_frame_equal(pd.read_parquet(parquet)[["query", "prediction"]], df[["query", "prediction"]])


def _tiny_sets(cfg) -> list[str]:
    """With the tiny overrides: what makes the CLI's config equal the fixture's (export takes the train version it implies)."""
    m = cfg.model
    return [
        "descriptions.cache=false", "evaluate.episodes=2",
        f"model.clip={m.clip}", f"model.pretrained={m.pretrained}", f"model.image_size={m.image_size}", "model.quick_gelu=false",
        f"model.vision_adapted_layers={m.vision_adapted_layers}", f"model.text_adapted_layers={m.text_adapted_layers}",
        f"protocol.num_frames={cfg.protocol.num_frames}",
    ]  # fmt: skip


def test_help_says_inductive():
    out = runner.invoke(app, ["predict", "--help"])
    assert out.exit_code == 0 and "inductive" in out.output


def test_bad_queries_get_a_reason_and_the_others_an_answer(bundle_dir, backbone_file, support_dir, queries, tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not a video")
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    csv = tmp_path / "mixed.csv"
    out = _predict(bundle_dir, backbone_file, support_dir, queries[0], str(text), str(corrupt), queries[1], extra=("--out", str(csv)))
    _one_line_error(out, "2 of 4 queries", "notes.txt")
    df = pd.read_csv(csv)
    assert df["query"].tolist() == [queries[0], str(text), str(corrupt), queries[1]]
    assert df["prediction"].isna().tolist() == [False, True, True, False]
    assert df.loc[1, "error"].startswith("not a video (.txt extension)") and df.loc[2, "error"].startswith("unreadable: ")
    assert "missing_file" in _predict(bundle_dir, backbone_file, support_dir, str(tmp_path / "gone.mp4"), queries[0]).stderr


def test_support_errors(bundle_dir, backbone_file, tmp_path, queries, test_videos):
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(_predict(bundle_dir, backbone_file, empty, queries[0]), "holds no class folders")
    no_clips = link_support(tmp_path / "no_clips", test_videos, shots=1)
    (no_clips / "lonely [class]").mkdir()
    (no_clips / "lonely [class]" / "readme.txt").write_text("x")
    _one_line_error(_predict(bundle_dir, backbone_file, no_clips, queries[0]), "'lonely [class]'", "no clips")
    one = link_support(tmp_path / "one", dict(list(test_videos.items())[:1]), shots=1)
    _one_line_error(_predict(bundle_dir, backbone_file, one, queries[0]), "at least 2 support classes")
    bad_clip = link_support(tmp_path / "bad_clip", test_videos, shots=1)
    first = sorted(test_videos)[0]
    (bad_clip / first / "broken.mp4").write_bytes(b"\x00" * 1000)
    _one_line_error(_predict(bundle_dir, backbone_file, bad_clip, queries[0]), "broken.mp4", repr(first), "unreadable")
    _one_line_error(_predict(bundle_dir, backbone_file, tmp_path / "nowhere", queries[0]), "is not a folder")


def test_bundle_and_backbone_errors(bundle_dir, backbone_file, support_dir, queries, tmp_path):
    from pipeline.predict.bundle import _write_manifest

    other = tmp_path / "v99"
    shutil.copytree(bundle_dir, other)
    meta = json.loads((other / "bundle.json").read_text())
    (other / "bundle.json").write_text(json.dumps({**meta, "format_version": 99}))
    _write_manifest(other)  # as a future fsar would have written it
    _one_line_error(_predict(other, backbone_file, support_dir, queries[0]), "format version 99", "re-export")
    _one_line_error(_predict(tmp_path, backbone_file, support_dir, queries[0]), "not a fsar model bundle")
    _one_line_error(_predict(bundle_dir, tmp_path / "missing.pt", support_dir, queries[0]), "missing.pt", "does not exist")
    wrong = tmp_path / "wrong.pt"
    data = backbone_file.read_bytes()
    wrong.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    _one_line_error(_predict(bundle_dir, wrong, support_dir, queries[0]), "sha256", "micro.pt")
    bare = tmp_path / "bare"  # a bundle without its copy, whose recorded backbone file is gone
    shutil.copytree(bundle_dir, bare, ignore=shutil.ignore_patterns("backbone"))
    meta = json.loads((bare / "bundle.json").read_text())
    (bare / "bundle.json").write_text(json.dumps({**meta, "backbone": {**meta["backbone"], "path": str(tmp_path / "moved.pt")}}))
    _write_manifest(bare)  # as exported with a large backbone (not copied) that was then moved
    out = runner.invoke(app, ["predict", "--model", str(bare), "--support", str(support_dir), "--query", queries[0]])
    _one_line_error(out, "micro.pt", "in the bundle", "moved.pt) it is missing", "--backbone FILE")
    _one_line_error(_predict(bundle_dir, backbone_file, support_dir, queries[0], extra=("--out", str(tmp_path / "x.xlsx"))), ".csv or .parquet")
    _one_line_error(_predict(bundle_dir, backbone_file, support_dir, queries[0], extra=("--task-context", "psychic")), "psychic")


def test_export_errors(trained, tmp_path):
    _, store, _ = trained
    out = runner.invoke(app, ["export", "--dataset", "synthetic", "--artifacts", str(tmp_path / "empty-root"), "--out", str(tmp_path / "b")])
    _one_line_error(out, "export needs a train artifact")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    out = runner.invoke(app, ["export", "--dataset", "synthetic", "--artifacts", str(store.root), "--checkpoint", str(tmp_path / "none.pt"), "--out", str(tmp_path / "taken")])
    _one_line_error(out, "none.pt")
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine"


def test_predict_from_any_folder_with_only_the_bundle(trained, backbone_file, support_dir, queries, tmp_path, monkeypatch):
    """The bundle holds a small backbone's copy, else uses the file where it was at export, from any working folder;
    a moved or changed file is refused with the fix (issue 22)."""
    import pipeline.predict.bundle as bundle_module
    from pipeline.predict import export_bundle

    cfg, store, _ = trained
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # no artifacts/ here, no fsar.yaml
    copied = export_bundle(cfg, store, tmp_path / "copied")
    out = runner.invoke(app, ["predict", "--model", str(copied), "--support", str(support_dir), "--query", queries[0]])
    assert out.exit_code == 0, out.output
    own = tmp_path / "own.pt"  # a backbone file of its own, so it can be moved and changed here
    shutil.copyfile(backbone_file, own)
    monkeypatch.setattr(bundle_module, "BACKBONE_COPY_MAX_BYTES", 0)  # as for a ViT-B-16 file: not copied
    linked = export_bundle(cfg.override(f"model.pretrained={own}"), store, tmp_path / "linked")
    assert not (linked / "backbone").exists()
    assert json.loads((linked / "bundle.json").read_text())["backbone"]["path"] == str(own)
    out = runner.invoke(app, ["predict", "--model", str(linked), "--support", str(support_dir), "--query", queries[0]])
    assert out.exit_code == 0, out.output
    own.rename(tmp_path / "away.pt")
    out = runner.invoke(app, ["predict", "--model", str(linked), "--support", str(support_dir), "--query", queries[0]])
    _one_line_error(out, "own.pt", "where it was at export", "it is missing", "--backbone FILE")
    out = runner.invoke(app, ["predict", "--model", str(linked), "--backbone", str(tmp_path / "away.pt"), "--support", str(support_dir), "--query", queries[0]])
    assert out.exit_code == 0, out.output
    data = (tmp_path / "away.pt").read_bytes()
    own.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # back in place, but changed
    out = runner.invoke(app, ["predict", "--model", str(linked), "--support", str(support_dir), "--query", queries[0]])
    _one_line_error(out, "it has changed (sha256", "--backbone FILE")
