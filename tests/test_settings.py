"""The config sections live in a leaf package: loading a config imports no stage, and no stage package
needs a lazy `__getattr__` to break a cycle with `pipeline.config`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pipeline

ROOT = Path(pipeline.__file__).parent
STAGE_PACKAGES = ("audit", "datasets", "descriptions", "embeddings", "evaluate", "fewshot", "frames", "model", "predict", "prefix", "pretrain", "train")


def _pipeline_imports(path: Path) -> set[str]:
    """Every `pipeline.*` module a file imports, at any depth (function-local imports included)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("pipeline"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("pipeline"))
    return out


def test_config_and_sections_import_no_stage():
    files = [ROOT / "config.py", *sorted((ROOT / "settings").glob("*.py"))]
    for path in files:
        for module in _pipeline_imports(path):
            top = module.split(".")[1] if "." in module else ""
            assert top not in STAGE_PACKAGES, f"{path.name} imports the stage module {module}"


def test_loading_a_config_loads_no_stage_package():
    code = (
        "import sys; from pipeline.config import load_config; load_config('demo');"
        "print(sorted(m for m in sys.modules if m.startswith('pipeline.') and not m.startswith(('pipeline.settings',"
        " 'pipeline.config', 'pipeline.secrets', 'pipeline.artifacts', 'pipeline.errors')))); print('torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split("\n")
    assert out[0] == "[]"
    assert out[1] == "False"


def test_no_lazy_shims_for_the_config_cycle():
    for name in ("pretrain", "embeddings", "model"):
        tree = ast.parse((ROOT / name / "__init__.py").read_text(encoding="utf-8"))
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert "__getattr__" not in defined, f"pipeline/{name}/__init__.py still imports lazily"


def test_each_section_has_one_home():
    """No re-exporting shims: a section is imported from `pipeline.settings.<stage>` (or the package that lists them)."""
    from pipeline import settings
    from pipeline.settings.datasets import DatasetConfig, ProtocolConfig
    from pipeline.settings.descriptions import DescriptionsConfig
    from pipeline.settings.model import ModelConfig, model_fields

    assert (DatasetConfig, ProtocolConfig, DescriptionsConfig, ModelConfig, model_fields) == (
        settings.DatasetConfig, settings.ProtocolConfig, settings.DescriptionsConfig, settings.ModelConfig, settings.model_fields
    )
    for old in ("datasets/config.py", "descriptions/config.py", "model/config.py", "settings/training.py", "settings/backbone.py"):
        assert not (ROOT / old).exists(), f"pipeline/{old} is back"


# ---- one precision setting, one autocast helper ------------------------------------------------------------------


def test_train_amp_is_refused_naming_model_amp(tmp_path):
    import pytest

    from pipeline.config import ConfigError, load_config

    preset = tmp_path / "old.yaml"
    preset.write_text("train:\n  amp: false\n", encoding="utf-8")
    for attempt in (lambda: load_config("demo", overrides=["train.amp=false"]), lambda: load_config(preset),
                    lambda: load_config("demo").override("train.amp=true")):
        with pytest.raises(ConfigError, match=r"'train\.amp' is gone: use model\.amp"):
            attempt()
    assert load_config("demo", overrides=["model.amp=false"]).model.amp is False
    cli = subprocess.run([sys.executable, "-m", "pipeline.cli", "config", "--set", "train.amp=false"], capture_output=True, text=True)
    assert cli.returncode == 2 and "Traceback" not in cli.stderr
    assert "model.amp" in cli.stderr.strip().splitlines()[-1]


def test_one_autocast_helper_for_towers_training_and_evaluation():
    import contextlib

    import torch

    from pipeline import precision
    from pipeline.fewshot import scoring
    from pipeline.train import trainer

    assert scoring.autocast is precision.autocast and trainer.autocast is precision.autocast
    assert isinstance(precision.autocast(torch.device("cpu"), True), contextlib.nullcontext)  # CPU: always fp32
    assert isinstance(precision.autocast("cuda:0", False), contextlib.nullcontext)  # model.amp=false: fp32 on CUDA too
    model_src = (ROOT / "model" / "model.py").read_text(encoding="utf-8")
    assert "from pipeline.precision import autocast" in model_src and "torch.autocast(" not in model_src
