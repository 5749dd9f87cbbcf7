"""The data module: prefetched batches are the synchronous loop's, in order and after a resume; batched steps
give the gradients of one episode at a time."""

from __future__ import annotations

import itertools
import threading
import time

import pandas as pd
import pytest
import torch

from pipeline.artifacts import ArtifactStore
from pipeline.fewshot.loader import EpisodeBatch, Prefetcher, train_rng
from pipeline.train import stage as train
from pipeline.train.trainer import Trainer


def _equal(a: EpisodeBatch, b: EpisodeBatch) -> None:
    assert a.text_keep == b.text_keep and a.text_keep is not None
    for name, x in a.tensors().items():
        y = getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x, y), name


def test_prefetched_batches_equal_the_synchronous_loop_and_resume(tiny, tmp_path):
    cfg, _, refs = tiny
    cfg = cfg.override("train.episodes_per_epoch=6", "train.episodes_per_step=2")
    trainer = Trainer(cfg, refs, tmp_path)
    assert trainer.total_steps == 3
    sync = [
        trainer.loader.batch(trainer.sampler.episode(i), "train", train_rng(cfg.train.seed, i))
        for s in range(trainer.total_steps) for i in trainer.episode_indices(s)
    ]
    assert len({tuple(b.support.flatten()[:50].tolist()) for b in sync}) == len(sync)  # six different episodes
    for workers in (0, 1, 3):
        trainer.workers = workers
        with trainer.prefetcher(0) as batches:
            got = list(batches)
            if workers:
                assert 1 <= len(trainer.loader._copies) <= workers  # worker threads read through their own frame store copies
        assert len(got) == len(sync)
        for a, b in zip(got, sync):
            _equal(a, b)
        with trainer.prefetcher(2) as batches:  # a run resumed at step 2 gets the straight run's last episodes
            tail = list(batches)
        assert len(tail) == 2
        for a, b in zip(tail, sync[4:]):
            _equal(a, b)
    import gc

    gc.collect()
    assert not trainer.loader._copies  # gone with their threads (their files closed)


def test_prefetching_loop_trains_exactly_like_the_synchronous_one(tiny, tmp_path):
    cfg, _, refs = tiny
    cfg = cfg.override("train.episodes_per_epoch=4", "train.log_every=3", "train.checkpoint_every=2")
    stores = {}
    for workers in (0, 2):
        stores[workers] = ArtifactStore(tmp_path / f"w{workers}")
        train.run(cfg.override(f"train.loader_workers={workers}"), refs, stores[workers])
    a, b = (s.load("train", "synthetic") for s in stores.values())
    assert len(a) == 4 and a["loss"].notna().all()
    pd.testing.assert_frame_equal(a, b)  # the same losses and accuracies, bit for bit
    ra, rb = (s.resolve("train", "synthetic") for s in stores.values())
    assert ra.version == rb.version  # loader_workers is not part of the version
    fa, fb = stores[0].manifest(ra)["files"], stores[2].manifest(rb)["files"]
    assert fa["metrics.parquet"] == fb["metrics.parquet"] and fa["validation.parquet"] == fb["validation.parquet"]
    for name in ("best.pt", "last.pt"):  # the same weights (the checkpoints also hold the config, which names the setting)
        wa, wb = (torch.load(stores[k].local_path(r) / name, weights_only=False)["trainable"] for k, r in ((0, ra), (2, rb)))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_prefetcher_keeps_the_order_bounds_the_look_ahead_and_raises_in_order():
    started: list[int] = []
    lock = threading.Lock()

    def work(i: int) -> int:
        with lock:
            started.append(i)
        time.sleep(0.002 * ((i * 7) % 5))  # later items often finish first
        if i == 9:
            raise ValueError("item nine")
        return i * i

    with Prefetcher(work, itertools.count(), workers=3, depth=4) as p:
        got = [next(p) for _ in range(9)]
        assert got == [i * i for i in range(9)]
        time.sleep(0.05)
        assert max(started) <= 9 + 4  # never more than `depth` items ahead of the one taken
        with pytest.raises(ValueError, match="item nine"):
            next(p)
    with Prefetcher(work, range(3), workers=0) as p:  # no threads: prepared when taken
        assert list(p) == [0, 1, 4]


def _randomize(model: torch.nn.Module) -> None:
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.05)


def _grads_of_a_step(trainer: Trainer, batches, dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    trainer.optimizer.step = lambda *a, **k: None  # keep the gradients the step computed
    stats = trainer.train_step(batches)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert grads and all(g.dtype == dtype for g in grads.values())
    return grads, stats


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_batched_episodes_give_the_gradients_of_one_at_a_time(tiny, tmp_path, dtype):
    """E = 3 episodes in one batched pass (and in passes of 2 + 1) == accumulating them one by one."""
    cfg, _, refs = tiny
    cfg = cfg.override("train.episodes_per_step=3", "train.episodes_per_epoch=3", "model.task_adapter_init=released")
    trainer = Trainer(cfg, refs, tmp_path)
    _randomize(trainer.model)
    trainer.model.to(dtype)
    batches = []
    for i in trainer.episode_indices(0):
        b = trainer.loader.batch(trainer.sampler.episode(i), "train", train_rng(cfg.train.seed, i))
        batches.append(EpisodeBatch(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in b.tensors().items()}, text_keep=b.text_keep))
    results = {}
    for per_pass in (1, 3, 2):
        trainer.cfg = cfg.override(f"train.episodes_per_pass={per_pass}")
        results[per_pass] = _grads_of_a_step(trainer, batches, dtype)
    tol = {"atol": 1e-6, "rtol": 1e-4} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-10}
    ref_grads, ref_stats = results[1]
    assert "vision.temporal_embedding" in ref_grads and any(float(g.abs().max()) > 0 for g in ref_grads.values())
    for per_pass in (3, 2):
        grads, stats = results[per_pass]
        assert set(grads) == set(ref_grads)
        for name, g in ref_grads.items():
            torch.testing.assert_close(grads[name], g, **tol, msg=lambda m, name=name: f"{per_pass} per pass, {name}: {m}")
        torch.testing.assert_close(stats, ref_stats, **tol)  # the same loss sum, correct and total counts


def test_prefetcher_workers_run_in_the_takers_context():
    """What a stage tracks in a context variable (the artifact files it reads) sees the workers' reads too."""
    import contextvars

    seen: contextvars.ContextVar[set | None] = contextvars.ContextVar("seen", default=None)
    reads: set[int] = set()
    token = seen.set(reads)
    try:
        with Prefetcher(lambda i: seen.get().add(i) or i, range(6), workers=2) as p:
            assert list(p) == list(range(6))
    finally:
        seen.reset(token)
    assert reads == set(range(6))
