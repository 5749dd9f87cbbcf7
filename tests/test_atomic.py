"""pipeline.atomic: the one write-to-temp-then-rename helper."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.atomic import AtomicFile, atomic_path, atomic_write_bytes, atomic_write_text


def test_write_text_and_bytes_replace_in_place(tmp_path: Path) -> None:
    p = tmp_path / "sub" / "a.json"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two", fsync=True)
    assert p.read_text(encoding="utf-8") == "two"
    atomic_write_bytes(tmp_path / "b.bin", b"\x00\x01")
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert sorted(x.name for x in tmp_path.rglob("*")) == ["a.json", "b.bin", "sub"]  # no temporaries left


def test_error_keeps_the_old_file_and_drops_the_temporary(tmp_path: Path) -> None:
    p = tmp_path / "a.txt"
    p.write_text("old", encoding="utf-8")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        assert tmp.parent == p.parent and tmp.name.startswith(".") and tmp.name.endswith(".part")
        tmp.write_text("half", encoding="utf-8")
        raise RuntimeError("writer died")
    assert p.read_text(encoding="utf-8") == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["a.txt"]


def test_a_folder_replaces_a_folder(tmp_path: Path) -> None:
    out = tmp_path / "bundle"
    out.mkdir()
    (out / "stale").write_text("x", encoding="utf-8")
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("y", encoding="utf-8")
    assert [x.name for x in out.iterdir()] == ["new"]


def test_open_writer_commit_and_abort(tmp_path: Path) -> None:
    a, b = AtomicFile(tmp_path / "a"), AtomicFile(tmp_path / "b")
    assert a.tmp != AtomicFile(tmp_path / "a").tmp  # two writers of one path never share a temporary
    a.tmp.write_bytes(b"a")
    b.tmp.write_bytes(b"b")
    a.commit()
    b.abort()
    assert [x.name for x in tmp_path.iterdir()] == ["a"]
