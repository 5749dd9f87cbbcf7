"""Run files (settings written once), precedence preset < run file < command line, one value per key,
`fsar config` origins, make variables on every target, and the CLI module graph (issue 22)."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.config import ConfigError
from pipeline.runfile import read_run_file, resolve

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def _write(folder: Path, text: str, name: str = "fsar.yaml") -> Path:
    path = folder / name
    path.write_text(text, encoding="utf-8")
    return path


def test_precedence_and_origins(tmp_path):
    run_file = _write(tmp_path, "dataset: synthetic\npreset: demo\nvideo_root: vids\nllm: openai\nbase_url: http://127.0.0.1:9/v1\n"
                                "set:\n  train.lr: 0.01\n  evaluate: {episodes: 7}\n")  # fmt: skip
    r = resolve(overrides=["train.lr=0.02"], run_file=run_file)
    cfg = r.config
    assert cfg.preset == "demo" and cfg.model.clip == "fsar-tiny"  # the run file's preset
    assert cfg.train.lr == 0.02 and r.origins["train.lr"] == "command line"  # command line > run file
    assert cfg.evaluate.episodes == 7 and r.origins["evaluate.episodes"] == "run file"  # run file > preset (1000)
    assert r.origins["model.clip"] == "preset demo" and "train.seed" not in r.origins  # preset; default
    assert cfg.dataset.video_root == str(tmp_path / "vids")  # relative to the run file's folder
    assert cfg.descriptions.backend == "openai" and cfg.descriptions.base_url == "http://127.0.0.1:9/v1"
    # a command-line preset and dataset win over the run file's
    r = resolve(dataset="hmdb51", preset="ucf101", run_file=run_file)
    assert r.config.dataset.name == "hmdb51" and r.config.preset == "ucf101" and r.origins["dataset.name"] == "command line"


def test_one_value_per_key(tmp_path):
    with pytest.raises(ConfigError, match=r"--set gives train\.lr twice .*give it once"):
        resolve("synthetic", overrides=["train.lr=1", "train.lr=2"])
    assert resolve("synthetic", overrides=["train.lr=1", "train.lr=1"]).config.train.lr == 1  # the same value is fine
    bad = _write(tmp_path, "dataset: synthetic\nllm: openai\nset: {descriptions.backend: local}\n")
    with pytest.raises(ConfigError, match=r"gives descriptions\.backend twice: llm: 'openai' and set"):
        read_run_file(bad)
    out = runner.invoke(app, ["config", "--dataset", "hmdb51", "--set", "train.lr=1", "--set", "train.lr=2"])
    assert out.exit_code == 2 and "train.lr twice" in out.output, out.output
    help_text = " ".join(runner.invoke(app, ["frames", "--help"], terminal_width=400).output.split())
    assert "must have the same value" in help_text  # the rule is stated in --help


def test_run_file_errors_are_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cases = [
        ("model:\n  clip: x\n", "unknown key 'model' (config keys go under `set:`)"),
        ("dataset: [unclosed\n", "is not valid YAML at line"),
        ("- a\n- b\n", "must hold a mapping"),
        ("dataset: synthetic\nset: {train.nope: 1}\n", "unknown config key 'train.nope'"),
    ]
    for text, needle in cases:
        _write(tmp_path, text)
        out = runner.invoke(app, ["plan"])
        assert out.exit_code == 2 and needle in out.output and "Traceback" not in out.output, out.output
    (tmp_path / "fsar.yaml").unlink()
    out = runner.invoke(app, ["frames"])
    assert out.exit_code == 2 and "no dataset given" in out.output and "fsar.yaml" in out.output, out.output
    out = runner.invoke(app, ["frames", "--config", "missing.yaml"])
    assert out.exit_code == 2 and "run file 'missing.yaml' does not exist" in out.output, out.output


def test_run_files_are_strict(tmp_path, monkeypatch):
    """Nothing in a run file is dropped or misread silently: duplicates at any depth, dotted and nested forms of one
    key, two `set:` blocks, values of the wrong type, bytes that are not UTF-8 and a folder are one `error:` line
    each, and an error names the layer its value came from."""
    monkeypatch.chdir(tmp_path)
    where = f"run file {str(tmp_path / 'fsar.yaml')!r}"
    cases = [
        ("dataset: synthetic\nvideo_root: a\nvideo_root: b\n", f"{where} gives the key 'video_root' twice (line 2 and line 3)"),
        ("dataset: synthetic\nset:\n  train.lr: 1\nset:\n  train.seed: 2\n", "gives the key 'set' twice (line 2 and line 4)"),
        ("dataset: synthetic\nset:\n  train:\n    lr: 1\n    lr: 2\n", "gives the key 'set.train.lr' twice (line 4 and line 5)"),
        ("dataset: synthetic\nset: {train.lr: 0.1, train: {lr: 0.2}}\n",
         "set gives train.lr twice, as `train.lr` (0.1) and as `train: {lr: ...}` (0.2); keep one form"),
        ("dataset: synthetic\nartifacts: [art1, art2]\n", "`artifacts` must be a path (one string), got a list ['art1', 'art2']"),
        ("dataset: synthetic\nvideo_root: 2024\n", '`video_root` must be a path (one string), got a number 2024 (quote it: video_root: "2024")'),
        ("dataset: synthetic\nvideo_list: {a: 1}\n", "`video_list` must be a path (one string), got a mapping"),
        ("dataset: synthetic\ncorpus: true\n", "`corpus` must be a path (one string), got true/false"),
        ("dataset: synthetic\nbase_url: [http://h/v1]\n", "`base_url` must be a URL (one string)"),
        ("dataset: 7\n", "`dataset` must be a name (one string), got a number 7"),
        ("dataset: synthetic\nvideo_root:\n", "`video_root:` has no value; give a path or remove the line"),
        ("dataset: synthetic\nset: {train.lr: abc}\n", f"config key 'train.lr' ({where}): Input should be a valid number"),
        ("dataset: synthetic\nset: {train.nope: 1}\n", f"unknown config key 'train.nope' ({where})"),
    ]
    for text, needle in cases:
        _write(tmp_path, text)
        out = runner.invoke(app, ["config"])
        assert out.exit_code == 2 and needle in out.output and out.output.count("\n") == 1, (text, out.output)
    (tmp_path / "fsar.yaml").write_bytes(b"dataset: synthetic\nvideo_root: caf\xe9\n")  # Latin-1, not UTF-8
    out = runner.invoke(app, ["config"])
    assert out.exit_code == 2 and f"{where} is not UTF-8 text: line 2, column 16 holds the byte 0xe9" in out.output, out.output
    _write(tmp_path, "dataset: synthetic\n")
    out = runner.invoke(app, ["config", "--set", "train.lr=abc"])  # the command line's bad value is the command line's
    assert out.exit_code == 2 and "config key 'train.lr' (command line)" in out.output, out.output
    out = runner.invoke(app, ["config", "--config", str(tmp_path)])
    assert out.exit_code == 2 and f"run file {str(tmp_path)!r} is a folder" in out.output and out.output.count("\n") == 1, out.output
    # the same key twice with one value is still one value; llm: and set: may agree
    ok = _write(tmp_path, "dataset: synthetic\nllm: file\nset: {descriptions.backend: file, train: {lr: 0.5}}\n")
    assert resolve(run_file=ok).config.train.lr == 0.5


def test_fsar_config_shows_where_each_value_came_from(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, "dataset: synthetic\nartifacts: arts\nset:\n  train.lr: 0.01\n  train.seed: 3\n")
    out = runner.invoke(app, ["config", "--set", "train.seed=4"], terminal_width=300)
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert lines[0].startswith("# precedence, lowest first: default < preset < run file < command line")
    assert f"# run file: {tmp_path / 'fsar.yaml'}" in lines and "# preset: demo" in lines
    row = {ln.split(" = ")[0]: ln for ln in lines if " = " in ln}
    assert row["train.lr"].endswith("# run file") and "0.01" in row["train.lr"]
    assert row["train.seed"].endswith("# command line") and " 4 " in f"{row['train.seed']} "
    assert row["model.clip"].endswith("# preset demo") and row["train.episodes_per_step"].endswith("# default")
    assert row["artifacts"].startswith(f'artifacts = "{tmp_path / "arts"}"')
    plain = runner.invoke(app, ["config", "--json"])
    import json

    assert json.loads(plain.output)["train"]["lr"] == 0.01  # --json: the resolved config, machine-readable
    other = _write(tmp_path, "dataset: hmdb51\n", "other.yaml")
    out = runner.invoke(app, ["config", "--config", str(other), "--json"])
    assert json.loads(out.output)["dataset"]["name"] == "hmdb51" and json.loads(out.output)["preset"] == "hmdb51"


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_make_variables_reach_every_stage_target(tmp_path):
    """LLM, MODEL, BASE_URL, CORPUS (and CONFIG, INPUT) go to every stage target and `make full`."""
    (tmp_path / "c.yaml").write_text("{}")
    vars_ = ["DATASET=synthetic", "LLM=openai", "MODEL=m", "BASE_URL=http://h:1/v1", "CORPUS=c.yaml", "CONFIG=run.yaml"]
    for target in ("descriptions", "frames", "audit", "embeddings", "train", "evaluate", "full", "plan", "config"):
        out = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), target, *vars_], cwd=tmp_path, capture_output=True, text=True, check=True).stdout
        line = next(ln for ln in out.splitlines() if " fsar " in f" {Path(ln.split()[0]).name} " or "-m flows" in ln)
        for arg in ("--set descriptions.backend=openai", "--set descriptions.model=m", "--set descriptions.base_url=http://h:1/v1",
                    f"--set descriptions.corpus={tmp_path / 'c.yaml'}", "--config run.yaml", "--dataset synthetic"):
            assert arg in line, (target, line)
        assert "--artifacts" not in line  # not given: the run file's (or the default) decides
    out = subprocess.run(["make", "-n", "-f", str(REPO / "Makefile"), "train", "INPUT=embeddings=abc"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert "--input embeddings=abc" in out.stdout


def test_one_cli_module_graph():
    """pipeline.cli and pipeline.predict.cli share pipeline.cli_common; predict's module never imports pipeline.cli."""

    def imported(path: Path) -> set[str]:
        tree = ast.parse(path.read_text())
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
            elif isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
        return names

    predict, main = imported(REPO / "pipeline/predict/cli.py"), imported(REPO / "pipeline/cli.py")
    assert "pipeline.cli" not in predict and "pipeline.cli_common" in predict and "pipeline.cli_common" in main
    assert "pipeline.cli" not in imported(REPO / "pipeline/cli_common.py")


def test_the_cli_starts_without_torch_pandas_or_prefect():
    code = "import sys, pipeline.cli; print(sorted(m for m in ('torch', 'pandas', 'prefect', 'open_clip') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "[]"
