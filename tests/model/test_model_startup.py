"""Start-up (issue 22): open_clip without torch._dynamo and timm, and a file backbone built without random init."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


def test_open_clip_is_imported_without_dynamo_or_timm_and_both_still_work():
    code = (
        "import sys; import pipeline.model\n"
        "print(any(m.startswith('torch._dynamo') for m in sys.modules), 'timm' in sys.modules, sys.modules['open_clip'].timm_model.timm)\n"
        "import torch, torch._dynamo; print(callable(torch._dynamo.disable))\n"
        "import torchvision.ops; print(tuple(torchvision.ops.roi_align(torch.ones(1, 1, 4, 4), [torch.tensor([[0., 0., 2., 2.]])], 1).shape))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True).stdout.split("\n")
    assert out[0] == "False False None"  # neither loaded by `import pipeline.model`; open_clip saw no timm
    assert out[1] == "True" and out[2] == "(1, 1, 1, 1)"  # the real torch._dynamo afterwards; roi_align's forwarder works


def test_a_file_backbone_is_exactly_its_checkpoint(tmp_path):
    """Built without torch.nn.init (every weight comes from the file): equal to the file, causal mask included,
    and to a model built the plain way (random init, then load)."""
    import open_clip

    from pipeline.model import load_backbone

    torch.manual_seed(3)
    source = load_backbone("fsar-micro", None, 32).clip
    path = tmp_path / "micro.pt"
    torch.save(source.state_dict(), path)
    torch.manual_seed(99)  # a different draw, were anything still drawn
    fast = load_backbone("fsar-micro", str(path), 32, quick_gelu=False).clip
    plain = open_clip.create_model("fsar-micro", pretrained=str(path), force_image_size=32, quick_gelu=False)
    for name, value in source.state_dict().items():
        assert torch.equal(fast.state_dict()[name], value), name
    assert torch.equal(fast.attn_mask, plain.attn_mask) and torch.isinf(fast.attn_mask).any()  # non-persistent buffer
    images, text = torch.rand(2, 3, 32, 32), torch.randint(0, 400, (2, 77))
    plain.requires_grad_(False).eval()  # the same (inference) attention path as load_backbone's frozen model
    with torch.no_grad():
        assert torch.equal(fast.encode_image(images), plain.encode_image(images))
        assert torch.equal(fast.encode_text(text), plain.encode_text(text))
    assert torch.nn.init.normal_(torch.zeros(3)).abs().sum() > 0  # initialisers restored afterwards


def test_timm_or_hf_tower_models_are_refused_by_name():
    from pipeline.model import BackboneError, load_backbone

    with pytest.raises(BackboneError, match="timm or Hugging Face tower"):
        load_backbone("ViT-B-16-SigLIP", None, 224)
