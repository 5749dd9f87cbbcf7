"""The package as a wheel: presets and prompt templates are package data, and a non-editable install
reads them through importlib.resources from any directory (environment overrides read when used)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PRESETS = {"demo", "hmdb51", "kinetics100", "ssv2_full", "ssv2_small", "ucf101"}


def _source_copy(dest: Path) -> Path:
    """The files a build reads, copied out of the shared tree (a build writes build/ and egg-info beside them)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pipeline", "flows"):
        shutil.copytree(REPO / name, dest / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, dest / name)
    return dest


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`pip wheel --no-deps .` of a copy of the repository (no build isolation: no network needed)."""
    src = _source_copy(tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(src), "-w", str(out)]
    subprocess.run(cmd, check=True, cwd=src, capture_output=True, env={**os.environ, "PIP_NO_INDEX": "1"})
    (path,) = out.glob("fsar-*.whl")
    return path


def test_wheel_holds_presets_and_prompts(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"pipeline/configs/{p}.yaml" for p in PRESETS} <= names
    for version in ("subactions_v1", "subactions_v2"):
        assert {f"pipeline/prompts/{version}/{f}" for f in ("system.txt", "user.txt", "schema.json")} <= names
    assert "pipeline/prompts/README.md" in names
    assert "pipeline/model/clip_configs/fsar-micro.json" in names
    assert any(n.startswith("pipeline/datasets/classes/") and n.endswith(".json") for n in names)
    assert not any(n.startswith(("configs/", "prompts/", "tests/")) for n in names)


_CHECK = """
import os, sys, pipeline
from pipeline.config import list_presets, load_config
from pipeline.descriptions.prompts import list_prompts, load_prompt
assert pipeline.__file__.startswith(sys.argv[1]), pipeline.__file__
assert {"demo", "hmdb51", "ucf101"} <= set(list_presets()), list_presets()
assert load_config("hmdb51").dataset.name == "hmdb51"
assert {"subactions_v1", "subactions_v2"} <= set(list_prompts())
assert "sub_actions" in load_prompt("subactions_v1").schema_template
os.environ["FSAR_CONFIG_DIR"] = sys.argv[2]  # read when used, not at import
os.environ["FSAR_PROMPT_DIR"] = sys.argv[2]
assert list_presets() == ["mine"], list_presets()
assert list_prompts() == []
print("ok")
"""


@pytest.mark.slow
def test_non_editable_install_reads_package_data_from_anywhere(wheel: Path, tmp_path: Path) -> None:
    """`pip install --no-deps --target DIR` of the wheel, then the presets and prompts load with only
    DIR on the path (the repository neither on sys.path nor the working directory)."""
    target, elsewhere, mine = tmp_path / "site", tmp_path / "cwd", tmp_path / "mine"
    elsewhere.mkdir()
    mine.mkdir()
    (mine / "mine.yaml").write_text("protocol:\n  way: 3\n")
    pip = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target), str(wheel)]
    subprocess.run(pip, check=True, capture_output=True)
    env = {k: v for k, v in os.environ.items() if k not in ("FSAR_CONFIG_DIR", "FSAR_PROMPT_DIR", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    run = subprocess.run(
        [sys.executable, "-c", _CHECK, str(target), str(mine)], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "ok"


def test_docs_cited_in_the_code_exist() -> None:
    """Every `docs/<name>.md` that code, presets or tests cite is in the repository, with the cited section."""
    import re

    cited: set[tuple[str, str]] = set()
    for folder in ("pipeline", "flows", "tests", "benchmarks"):
        for path in (REPO / folder).rglob("*"):
            if path.suffix in (".py", ".yaml", ".md") and "__pycache__" not in path.parts:
                for m in re.finditer(r'docs/(\w+)\.md(?:,? "([^".]+)|)', path.read_text(encoding="utf-8")):
                    cited.add((m.group(1), m.group(2) or ""))
    assert ("method", "") in cited or any(name == "method" for name, _ in cited)
    for name, section in cited:
        doc = REPO / "docs" / f"{name}.md"
        assert doc.is_file(), f"docs/{name}.md is cited but missing"
        headings = [line.lstrip("# ").strip() for line in doc.read_text(encoding="utf-8").splitlines() if line.startswith("#")]
        assert not section or any(h.startswith(section.strip()) for h in headings), f"docs/{name}.md has no section {section!r}"
