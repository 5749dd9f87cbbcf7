"""The training speed options equal the default step: outputs (losses, correct counts) and every gradient, in fp32 on
the CPU (CUDA graphs: on a GPU only)."""

from __future__ import annotations

import pytest
import torch

from pipeline.contract import StageError
from pipeline.fewshot.loader import train_rng
from pipeline.train.trainer import Trainer


def _trainer(tiny, tmp_path, *overrides: str) -> Trainer:
    cfg, _, refs = tiny
    cfg = cfg.override("train.episodes_per_epoch=6", "model.task_adapter_init=released", *overrides)
    trainer = Trainer(cfg, refs, tmp_path)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():  # non-zero adapters: every trainable part gets a gradient
        for p in trainer.params:
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    trainer.optimizer.step = lambda *a, **k: None  # keep the step's gradients; the weights stay as they are
    return trainer


def _step(trainer: Trainer, step: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    batches = [trainer.loader.batch(trainer.sampler.episode(i), "train", train_rng(trainer.cfg.train.seed, i)) for i in trainer.episode_indices(step)]
    stats = trainer.train_step(batches)
    return stats, {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def _same(fast, ref, atol=2e-6, rtol=2e-4) -> None:
    (fs, fg), (rs, rg) = fast, ref
    torch.testing.assert_close(fs, rs, atol=atol, rtol=rtol)
    assert set(fg) == set(rg) and "vision.temporal_embedding" in rg
    for name, g in rg.items():
        torch.testing.assert_close(fg[name], g, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("episodes", [1, 2])
def test_fixed_text_length_changes_no_output_or_gradient(tiny, tmp_path, episodes):
    """What compile and CUDA graphs run: the text to the longest prompt of the cache instead of each episode's own."""
    ref = _trainer(tiny, tmp_path, f"train.episodes_per_step={episodes}")
    fixed = _trainer(tiny, tmp_path, f"train.episodes_per_step={episodes}")
    assert fixed.model.text_keep(fixed.loader.text.tokens) >= max(ref.host_episode(i).text_keep for i in range(6))
    batch = ref.loader.batch(ref.sampler.episode(0), "train", train_rng(0, 0))
    fixed._fixed_keep = batch.text_tokens.shape[-1]  # every position: longer than any prompt (the cache's longest may be this one)
    assert batch.text_keep < fixed._fixed_keep
    for step in range(2):
        _same(_step(fixed, step), _step(ref, step))


@pytest.mark.slow
def test_compiled_step_equals_the_eager_step(tiny, tmp_path):
    ref = _trainer(tiny, tmp_path)
    fast = _trainer(tiny, tmp_path, "train.compile=true")
    assert fast._compiled is not None
    for step in range(2):
        _same(_step(fast, step), _step(ref, step))


def test_cuda_graphs_need_a_gpu_and_one_pass_per_step(tiny, tmp_path):
    cfg, _, refs = tiny
    with pytest.raises(StageError, match="train.cuda_graphs=true needs a CUDA device"):
        Trainer(cfg.override("train.cuda_graphs=true"), refs, tmp_path)
    if torch.cuda.is_available():
        with pytest.raises(StageError, match="drop train.episodes_per_pass"):
            Trainer(cfg.override("train.cuda_graphs=true", "train.device=cuda", "train.episodes_per_step=2", "train.episodes_per_pass=1"),
                          refs, tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
@pytest.mark.parametrize("episodes", [1, 2])
def test_cuda_graph_step_equals_the_eager_step(tiny, tmp_path, episodes):
    gpu = ("train.device=cuda", "model.amp=false", f"train.episodes_per_step={episodes}")
    ref = _trainer(tiny, tmp_path, *gpu)
    fast = _trainer(tiny, tmp_path, *gpu, "train.cuda_graphs=true")
    torch.backends.cuda.matmul.allow_tf32 = False
    for step in range(3):  # the first captures, the others replay
        _same(_step(fast, step), _step(ref, step), atol=1e-5, rtol=1e-3)
    assert fast._graph is not None
