"""The open_clip side: registered tiny configs, loading weights from a local file, clear errors."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.transformer import QuickGELU

from pipeline.model import BackboneError, build_model, load_backbone, register_clip_configs
from pipeline.settings.datasets import ProtocolConfig


def test_tiny_configs_are_registered() -> None:
    names = register_clip_configs()
    assert {"fsar-tiny", "fsar-micro"} <= set(names) <= set(open_clip.list_models())
    assert register_clip_configs() == names  # idempotent
    tiny = open_clip.get_model_config("fsar-tiny")
    assert tiny["vision_cfg"]["image_size"] == 64 and tiny["quick_gelu"] is True


def test_open_clip_lines_are_fsar_lines(capfd: pytest.CaptureFixture[str]) -> None:
    """open_clip logs on the root logger ("WARNING:root:No pretrained weights loaded ..." in the middle of fsar's
    output, and a root printer set up behind the application's back): its lines go through fsar's logging, the
    random-weights one worded as fsar's own, naming the setting (a debug line: null is what was asked for)."""
    import logging

    from pipeline.logs import install

    root = logging.getLogger()
    handlers = list(root.handlers)
    install(logging.DEBUG)
    load_backbone("fsar-micro", None, image_size=32)
    out, err = capfd.readouterr()
    assert "WARNING:root" not in out + err and "No pretrained weights" not in out + err
    assert "[fsar] model: clip 'fsar-micro' starts from random weights (model.pretrained is null" in out
    assert root.handlers == handlers  # no printer left on the root logger
    install(logging.INFO)
    load_backbone("fsar-micro", None, image_size=32)
    assert capfd.readouterr() == ("", "")  # at the default level: nothing to say


def test_random_backbone_is_frozen_with_clip_constants() -> None:
    backbone = load_backbone("fsar-micro", None, image_size=32)
    assert backbone.weights == "random" and backbone.quick_gelu
    assert backbone.image_mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    assert backbone.image_std == pytest.approx(open_clip.OPENAI_DATASET_STD)
    assert not any(p.requires_grad for p in backbone.clip.parameters())
    assert isinstance(backbone.clip.visual.transformer.resblocks[0].mlp.gelu, QuickGELU)
    assert backbone.tokenizer(["hello"]).shape == (1, 77)


def test_weights_load_from_a_local_state_dict(kit, tmp_path: Path) -> None:
    torch.manual_seed(7)
    source = open_clip.create_model("fsar-micro")
    path = tmp_path / "micro.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(8)  # a different random init, overwritten by the file
    model = build_model(kit.micro_config(pretrained=str(path)), ProtocolConfig(num_frames=4, num_sub_actions=2))
    assert model.weights == f"file:{path}"
    loaded = model.clip.state_dict()
    for name, value in source.state_dict().items():
        torch.testing.assert_close(loaded[name], value, atol=0, rtol=0, msg=name)


def test_unknown_clip_name() -> None:
    with pytest.raises(BackboneError, match="unknown clip 'ViT-Nope'.*fsar-tiny"):
        load_backbone("ViT-Nope", None, image_size=224)


def test_unknown_pretrained_value(tmp_path: Path) -> None:
    with pytest.raises(BackboneError, match="neither an open_clip tag"):
        load_backbone("fsar-micro", str(tmp_path / "missing.pt"), image_size=32)


def test_image_size_must_fit_the_patches() -> None:
    with pytest.raises(BackboneError, match="multiple of the patch size 8"):
        load_backbone("fsar-micro", None, image_size=36)


def test_too_many_adapted_layers(kit) -> None:
    with pytest.raises(ValueError, match="exceeds the 3 blocks"):
        kit.build({"vision_adapted_layers": 4})
    with pytest.raises(ValueError, match="exceeds the 3 blocks"):
        kit.build({"text_adapted_layers": 5})


def test_image_size_other_than_native(kit) -> None:
    model = kit.build({"image_size": 48})
    assert model.image_size == 48
    states = model.vision_prefix(torch.randn(1, 4, 3, 48, 48))
    assert states.shape == (1, 4, 37, 64)  # 6 x 6 patches + class token
