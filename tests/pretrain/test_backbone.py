"""The demo backbone stage: captioned frames, the loss, a tiny pre-training run and its checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import open_clip
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from pipeline.datasets.synthetic import CLASSES, captioned_frame, frame_seed, sample_video_params, script
from pipeline.pretrain.data import FrameView, TrainStream, describe, positives
from pipeline.pretrain.train import clip_loss, create_clip, encode_text

TINY = {  # a few steps of the real recipe, shrunk
    "backbone.steps": 6,
    "backbone.batch_size": 16,
    "backbone.warmup_steps": 2,
    "backbone.eval_frames": 48,
    "backbone.eval_candidates": 12,
}


def _view(clip=None) -> FrameView:
    mean, std = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
    return FrameView(64, 72, 90, 64, mean, std)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from pipeline.artifacts import ArtifactStore
    from pipeline.pretrain import run
    from pipeline.config import load_config

    cfg = load_config("demo", overrides=TINY)
    store = ArtifactStore(tmp_path_factory.mktemp("artifacts"))
    return cfg, store, run(cfg, {}, store)


def test_frames_are_deterministic_and_seeded_apart_from_videos():
    a, b = captioned_frame(0, 7, 64, "train", 0.5), captioned_frame(0, 7, 64, "train", 0.5)
    assert np.array_equal(a.image, b.image) and a.caption() == b.caption() and a.phrase() == b.phrase()
    held = captioned_frame(0, 7, 64, "heldout", 0.5)
    assert not np.array_equal(a.image, held.image)
    seed = frame_seed(0, 7, "train")
    assert len(seed) == 4 and seed[-1] != 0  # videos use [seed, class, video]: 3 entries
    assert frame_seed(0, 7, "train") != frame_seed(0, 7, "heldout")
    # a frame's scene is not a video's first frame with the same numbers
    rng = np.random.default_rng([0, 0, 7])
    assert sample_video_params(rng, CLASSES[0]) != a.params


def test_captions_name_what_matters_and_phrases_use_the_scripts_words():
    frames = [captioned_frame(1, i, 64, "train", 0.5) for i in range(300)]
    caps = {f.caption() for f in frames}
    assert any(c.startswith("a small ") and " near the top left on a " in c for c in caps)
    assert any(c.startswith("two ") for c in caps) and any(", tilted " in c for c in caps)
    assert any(c.startswith("an empty scene") for c in caps) and any(c.startswith("a faint ") for c in caps)
    script_words = {w for c in CLASSES for s in script(c.name, 3) for w in s.split()}
    phrase_words = {w for f in frames for w in f.phrase().split()}
    assert phrase_words <= script_words | {"top", "bottom", "faint", "empty", "scene"}


def test_describe_styles_and_positives():
    rng = np.random.default_rng(0)
    f = captioned_frame(0, 3, 64, "train", 0.0)
    text, form = describe(f, "prompt", rng, "A video of action about {c}: {s}")
    assert text.startswith("A video of action about ") and text.endswith(f.phrase()) and form == "phrase"
    assert describe(f, "caption", rng, "{c}{s}")[0] in (f.caption(True), f.caption(False))
    frames = [f, f, captioned_frame(0, 4, 64, "train", 0.0)]
    pos = positives(frames, ["phrase", "caption", "caption"])
    assert pos.diagonal().all() and pos[1, 0] and pos[0, 1]  # the same scene: each text fits both


def test_stream_is_deterministic():
    kw = dict(seed=3, scenes=10, batch_size=8, free_share=0.5, caption_weights=(1, 1, 1), prompt_template="{c}: {s}")
    a, b = TrainStream(_view(), **kw), TrainStream(_view(), **kw)
    for _ in range(2):  # the second batch wraps around the 10 scenes
        (ia, ta, pa), (ib, tb, pb) = a.next(), b.next()
        assert torch.equal(ia, ib) and ta == tb and torch.equal(pa, pb)


def test_short_context_text_encoding_is_exact():
    clip = create_clip("fsar-tiny", 64, 0).eval()
    tok = open_clip.get_tokenizer("fsar-tiny")(["the object is small near the left", "A video of action about growing: first the scene is empty"])
    with torch.no_grad():
        assert torch.allclose(encode_text(clip, tok), clip.encode_text(tok), atol=1e-5)


def test_loss_is_open_clips_with_one_caption_per_frame():
    torch.manual_seed(0)
    img, txt = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    scale = torch.tensor(14.3)
    ours, _ = clip_loss(img, txt, scale)
    assert torch.allclose(ours, open_clip.ClipLoss()(img, txt, scale))
    pos = torch.eye(6, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    assert not torch.allclose(clip_loss(img, txt, scale, pos)[0], ours)


def test_tiny_run_writes_a_loadable_checkpoint(built):
    from pipeline.pretrain import checkpoint_path

    cfg, store, ref = built
    path = checkpoint_path(ref)
    saved = torch.load(path, weights_only=True)
    loaded = open_clip.create_model("fsar-tiny", pretrained=path).state_dict()
    assert saved.keys() == loaded.keys()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)
    fresh = create_clip("fsar-tiny", 64, 0).state_dict()
    assert not torch.equal(fresh["visual.conv1.weight"], saved["visual.conv1.weight"])  # it trained


def test_artifact_tables_and_retrieval(built):
    cfg, store, ref = built
    metrics = store.load("backbone", "synthetic", ref.version)
    assert list(metrics.columns[:3]) == ["step", "loss", "lr"] and len(metrics) == 6
    report = json.loads(Path(ref.file("retrieval.json")).read_text())
    for part in ("trained", "random_init"):
        assert 0 <= report[part]["caption"]["top1"] <= 1 and report[part]["caption"]["chance"] == pytest.approx(1 / 12)
        assert 0 <= report[part]["phrase"]["top1"] <= 1
    assert report["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert set(report["trained"]["probes"]["caption"]) >= {"position", "size", "colour"}


def test_rerun_is_skipped(built):
    from pipeline.artifacts import compute_version
    from pipeline.pretrain import run
    from pipeline.pretrain.stage import FORMAT_VERSION, STAGE, _fields

    cfg, store, ref = built
    again = run(cfg, {}, store)
    assert again.skipped and again.version == ref.version
    other = cfg.override({"backbone.seed": 1})
    assert compute_version(STAGE, FORMAT_VERSION, _fields(other), {}) != ref.version
    assert compute_version(STAGE, FORMAT_VERSION, _fields(cfg.override({"model.image_size": 48})), {}) != ref.version


def test_other_datasets_are_refused(tmp_path):
    from pipeline.artifacts import ArtifactStore
    from pipeline.pretrain import run
    from pipeline.config import load_config
    from pipeline.contract import StageError

    with pytest.raises(StageError, match="synthetic"):
        run(load_config("demo", overrides={"dataset.name": "hmdb51"}), {}, ArtifactStore(tmp_path))


def test_loss_goes_down():
    from pipeline.pretrain.train import train

    clip = create_clip("fsar-tiny", 64, 0)
    stream = TrainStream(_view(), seed=0, scenes=10_000, batch_size=24, free_share=0.5, caption_weights=(1, 0, 0),
                         prompt_template="A video of action about {c}: {s}")
    res = train(clip, open_clip.get_tokenizer("fsar-tiny"), stream.next, steps=30, lr=1e-3, weight_decay=0.1, warmup_steps=5,
                progress=False)
    loss = pd.Series([r["loss"] for r in res.metrics])
    assert loss.tail(5).mean() < loss.head(5).mean() - 0.3
