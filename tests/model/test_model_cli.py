"""`fsar model-info` prints one JSON object with the integer `trainable` at the top level."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from pipeline.cli import app


def _info(*args: str) -> dict:
    result = CliRunner().invoke(app, ["model-info", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_model_info_vit_b16_ssv2_small() -> None:
    info = _info("--preset", "ssv2_small", "--clip", "ViT-B-16", "--no-pretrained")
    assert info["trainable"] == 7_370_496
    assert info["model"]["clip"] == "ViT-B-16" and info["model"]["pretrained"] is None
    assert info["stage_windows"] == [[1, 2, 3], [3, 4, 5], [5, 6, 7]]
    assert info["backbone"]["vision_layers"] == 12 and info["backbone"]["quick_gelu"] is False


def test_model_info_demo_with_overrides() -> None:
    info = _info("--preset", "demo", "--set", "model.ca_layernorm=true")
    assert info["model"]["clip"] == "fsar-tiny" and info["backbone"]["embed_dim"] == 128
    assert info["parts"]["other"]["trainable"] == 2 * 128
    assert isinstance(info["trainable"], int) and info["frozen"] > info["trainable"]


def test_model_info_bad_clip_is_a_clear_error() -> None:
    result = CliRunner().invoke(app, ["model-info", "--preset", "demo", "--clip", "nope"])
    assert result.exit_code == 2
    assert "unknown clip 'nope'" in result.output
