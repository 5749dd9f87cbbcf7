"""The training loop of the train stage: episodes in, trainable weights, metrics and checkpoints out.

The loop (`Trainer.fit`) never waits for data: `train.loader_workers` threads prepare the next episodes
while a step runs (`pipeline.fewshot.loader.Prefetcher`: pinned memory and non-blocking copies on CUDA),
giving exactly the batches of the synchronous loop, and the loss and accuracy stay on the device until
they are logged (every `train.log_every` episodes, at checkpoints, validation and the end): no host
synchronisation per step. With `train.episodes_per_step = E > 1` the E episodes of a step run as one
batched forward and backward (`train.episodes_per_pass` at a time; task attention never mixes two
episodes), with the gradients of accumulating them one by one (tests).

Several GPUs/processes (`torchrun --nproc_per_node G -m pipeline.cli train ...`): each rank runs whole
episodes (never a split episode) and gradients are averaged across ranks before each step: one step
with W ranks of E episodes equals one process with `train.episodes_per_step = W * E`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from pipeline.artifacts import ArtifactRef, Staging
from pipeline.atomic import atomic_open
from pipeline.config import Config
from pipeline.contract import StageError
from pipeline.fewshot.checkpoints import save_checkpoint
from pipeline.fewshot.devices import dist_info, pick_device
from pipeline.fewshot.episodes import EpisodeSampler, videos_by_class
from pipeline.fewshot.loader import EpisodeBatch, Prefetcher, stack_batches, train_rng, workers_for
from pipeline.fewshot.prepare import prepare
from pipeline.fewshot.scoring import EpisodeScorer, episode_batches
from pipeline.precision import autocast
from pipeline.train.monitor import TrainMonitor

log = logging.getLogger("fsar")

__all__ = ["CapturedPass", "STATE", "STORED_CONFIG", "Trainer", "make_optimizer"]

STATE = "state.pt"  # resumable state in the staging folder (not published)
# What a train artifact stores of its config (config.json, the checkpoints' `config`): the parts the versions of
# train and its inputs cover, so equal versions hold equal bytes (`Config.stored`). The descriptions behind the
# run are its embeddings input's lineage (manifests), not config fields: `descriptions.backend: auto` and the
# backend it picks give one version.
STORED_CONFIG = ("dataset.name", "protocol", "frames", "embeddings", "model", "train")


def make_optimizer(cfg: Config, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "sgd":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)


class Trainer:
    """One training run writing into `out` (the artifact's staging folder)."""

    def __init__(self, cfg: Config, inputs: dict[str, ArtifactRef], out: Path):
        self.cfg, self.out = cfg, Path(out)
        self.stored = cfg.stored(STORED_CONFIG)
        self.rank, self.world = dist_info()
        self.device = pick_device(cfg.train.device)
        if self.device.type == "cuda" and self.world > 1:
            self.device = torch.device("cuda", self.rank % torch.cuda.device_count())
        torch.manual_seed(cfg.train.seed)  # adapters with a random init (the released task adapter) start alike everywhere
        self.model, self.loader, frames = prepare(cfg, inputs, self.device)
        self.params = [q for q in self.model.parameters() if q.requires_grad]
        if self.world > 1:  # every rank starts from rank 0's weights
            for q in self.params:
                torch.distributed.broadcast(q.data, src=0)
        p = cfg.protocol
        vids, excluded = videos_by_class(frames.index, "train", p.num_frames)
        self.excluded = {"train": excluded}
        self.sampler = EpisodeSampler(vids, p.way, p.shot, p.query, cfg.train.seed, split="train")
        val_split = cfg.train.val_split  # val; test only to measure the released code's pick on test (defect 2)
        val_vids, val_excluded = videos_by_class(frames.index, val_split, p.num_frames)
        self.excluded[val_split] = val_excluded
        self.val_episodes = EpisodeSampler(val_vids, p.way, p.shot, p.query, cfg.train.seed + 1, split=val_split).take(cfg.train.val_episodes)
        self.optimizer = make_optimizer(cfg, self.params)
        self.workers = workers_for(cfg.train.loader_workers, self.device)
        self._setup_speed_options()
        self.state: dict[str, Any] = {"step": 0, "best": None, "metrics": [], "validation": [], "seconds": 0.0}
        self.monitor: TrainMonitor | None = None  # rank 0 only, made in fit()

    # ------------------------------------------------------------------ plan
    @property
    def per_step(self) -> int:
        return self.world * self.cfg.train.episodes_per_step

    @property
    def total_steps(self) -> int:
        return math.ceil(self.cfg.train.epochs * self.cfg.train.episodes_per_epoch / self.per_step)

    def _epoch_of(self, episodes_done: int) -> int:
        return (episodes_done - 1) // self.cfg.train.episodes_per_epoch

    def _validate_now(self, before: int, after: int) -> bool:
        t = self.cfg.train
        start = t.warmup_epochs * t.episodes_per_epoch  # validation only after the warm-up epochs
        if after <= start:
            return False
        epoch_end = after // t.episodes_per_epoch > before // t.episodes_per_epoch
        every = t.val_every is not None and after // t.val_every > before // t.val_every
        last = after >= t.epochs * t.episodes_per_epoch
        return epoch_end or every or last

    # --------------------------------------------------------------- resume
    def _restore(self) -> None:
        path = self.out / STATE
        if not path.exists():
            return
        if not self.cfg.train.resume:
            for name in (STATE, "best.pt", "last.pt"):
                (self.out / name).unlink(missing_ok=True)
            log.info("train: found a previous unfinished run; starting afresh (pass --resume to continue it)")
            return
        saved = torch.load(path, map_location="cpu", weights_only=False)
        self.model.load_trainable_state_dict(saved["trainable"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.state = saved["state"]
        log.info(f"train: resumed at step {self.state['step']} of {self.total_steps}")

    def _save_state(self) -> None:
        if self.rank != 0:
            return
        payload = {"trainable": self.model.trainable_state_dict(), "optimizer": self.optimizer.state_dict(), "state": self.state}
        with atomic_open(self.out / STATE) as fh:  # a file object: the bytes do not depend on the temporary's name
            torch.save(payload, fh)

    # ----------------------------------------------------------------- steps
    def episode_indices(self, step: int) -> list[int]:
        """The training episodes of this rank at optimiser step `step` (E of them; ranks take disjoint ones)."""
        E = self.cfg.train.episodes_per_step
        first = step * self.per_step + self.rank * E
        return list(range(first, first + E))

    def host_episode(self, index: int) -> EpisodeBatch:
        """Training episode `index` as CPU tensors: its classes, videos and frames depend on (seed, index) alone."""
        return self.loader.host_batch(self.sampler.episode(index), "train", train_rng(self.cfg.train.seed, index))

    def step(self, step: int) -> dict[str, float]:
        """One optimiser step over this rank's episodes, loaded synchronously; gradients averaged over episodes and ranks."""
        batches = [self.loader.batch(self.sampler.episode(i), "train", train_rng(self.cfg.train.seed, i)) for i in self.episode_indices(step)]
        return self.metrics(self.train_step(batches))

    # ----------------------------------------------------------- speed options
    def _setup_speed_options(self) -> None:
        """`train.compile` / `train.cuda_graphs`: the same step with fixed shapes (the text runs to the longest prompt of
        the cache, which changes no output: positions after a prompt's pooled token never reach it)."""
        t = self.cfg.train
        self._graph: CapturedPass | None = None
        self._fixed_keep: int | None = None
        self._compiled = None
        if not (t.compile or t.cuda_graphs):
            return
        if t.cuda_graphs and self.device.type != "cuda":
            raise StageError(f"train.cuda_graphs=true needs a CUDA device, but training runs on {self.device}; drop it or use train.device=cuda")
        if t.cuda_graphs and t.episodes_per_pass not in (None, t.episodes_per_step):
            raise StageError(f"train.cuda_graphs=true captures a whole step in one pass, but train.episodes_per_pass="
                             f"{t.episodes_per_pass} splits the {t.episodes_per_step} episodes of a step; drop train.episodes_per_pass")
        self._fixed_keep = self.model.text_keep(self.loader.text.tokens)
        if t.compile:
            self._compiled = torch.compile(self._pass_losses, dynamic=False)

    def _pass_losses(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, query_labels: torch.Tensor,
                     text_tokens: torch.Tensor, text_prefix: torch.Tensor, batched: bool, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(losses (B,) of B stacked episodes, or (1,) of one, correct queries): what the speed options compile or capture."""
        with autocast(self.device, self.cfg.model.amp):
            if batched:
                scores = self.model.forward_batch(support, support_labels, query, text_tokens, text_prefix=text_prefix, text_keep=keep,
                                                  validate=False)
                losses = self.model.episode_losses(scores, query_labels)
            else:
                scores = self.model(support, support_labels, query, text_tokens, text_prefix=text_prefix, text_keep=keep, validate=False)
                losses = self.model.loss(scores, query_labels)[None]
        return losses, (scores.logits.argmax(-1) == query_labels).sum()

    def _fast_pass(self, b: EpisodeBatch, batched: bool) -> tuple[torch.Tensor, torch.Tensor]:
        fn = self._compiled or self._pass_losses
        return fn(b.support, b.support_labels, b.query, b.query_labels, b.text_tokens, b.text_prefix, batched, self._fixed_keep)

    def train_step(self, batches: Sequence[EpisodeBatch]) -> torch.Tensor:
        """One optimiser step over this rank's episode batches (on the device).

        Returns (loss sum, correct, total) as a float64 tensor on the device, unread (`metrics` reads it). The step's
        gradient is the mean of the episodes' gradients (and of the ranks'): `train.episodes_per_pass` episodes at a
        time run as one batched forward and backward, one episode at a time as `forward`.
        """
        self.model.train()
        E = len(batches)
        stats = torch.zeros(3, dtype=torch.float64, device=self.device)
        if self.cfg.train.cuda_graphs:  # the whole step's forward and backward replayed from one CUDA graph
            b = batches[0] if E == 1 else stack_batches(batches)
            if self._graph is None:
                self.optimizer.zero_grad(set_to_none=True)
                self._graph = CapturedPass(lambda x: self._fast_pass(x, E > 1), b, E, self.params)
            losses, correct = self._graph(b)
            passes = [(batches, losses, correct)]
        else:
            self.optimizer.zero_grad(set_to_none=True)
            passes = self._passes(batches)
        for chunk, losses, correct in passes:
            for x in losses:  # one by one: the same float64 sums as adding the episodes' losses in order
                stats[0] += x.double()
            stats[1] += correct.double()
            stats[2] += sum(b.query_labels.numel() for b in chunk)
        if self.world > 1:
            for q in self.params:
                if q.grad is None:
                    q.grad = torch.zeros_like(q)
                torch.distributed.all_reduce(q.grad)
                q.grad /= self.world
            torch.distributed.all_reduce(stats)
        self.optimizer.step()
        return stats

    def _passes(self, batches: Sequence[EpisodeBatch]) -> list[tuple[Sequence[EpisodeBatch], torch.Tensor, torch.Tensor]]:
        """Forward and backward of the step's episodes, `train.episodes_per_pass` at a time: (episodes, losses, correct) per pass."""
        E = len(batches)
        per_pass = self.cfg.train.episodes_per_pass or E
        out = []
        for first in range(0, E, per_pass):
            chunk = batches[first : first + per_pass]
            if self._fixed_keep is not None:  # train.compile
                losses, correct = self._fast_pass(chunk[0] if len(chunk) == 1 else stack_batches(chunk), len(chunk) > 1)
                (losses.sum() / E).backward()
            elif len(chunk) == 1:
                loss, correct = self._episode_loss(chunk[0])
                (loss / E).backward()
                losses = loss[None]
            else:
                losses, correct = self._episodes_loss(stack_batches(chunk))
                (losses.sum() / E).backward()
            out.append((chunk, losses.detach(), correct))
        return out

    def _episode_loss(self, b: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss, correct queries) of one episode, both on the device."""
        with autocast(self.device, self.cfg.model.amp):
            scores = self.model(b.support, b.support_labels, b.query, b.text_tokens, text_prefix=b.text_prefix, text_keep=b.text_keep,
                                validate=False)  # sampled episodes: labels valid by construction
            loss = self.model.loss(scores, b.query_labels)
        return loss, (scores.logits.argmax(-1) == b.query_labels).sum()

    def _episodes_loss(self, b: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-episode losses (B,), correct queries) of B stacked episodes, in one batched pass."""
        with autocast(self.device, self.cfg.model.amp):
            scores = self.model.forward_batch(b.support, b.support_labels, b.query, b.text_tokens, text_prefix=b.text_prefix,
                                              text_keep=b.text_keep, validate=False)
            losses = self.model.episode_losses(scores, b.query_labels)  # (B,)
        return losses, (scores.logits.argmax(-1) == b.query_labels).sum()

    def metrics(self, stats: torch.Tensor) -> dict[str, float]:
        """Loss (mean over episodes and ranks) and accuracy of a step's `train_step` output (reads it: a sync on a GPU)."""
        return self._metrics_of(stats.cpu())

    def _metrics_of(self, stats: torch.Tensor) -> dict[str, float]:
        E = self.cfg.train.episodes_per_step
        return {"loss": float(stats[0] / (E * self.world)), "accuracy": float(stats[1] / stats[2])}

    def prefetcher(self, start_step: int) -> Prefetcher[EpisodeBatch]:
        """This rank's training episodes from step `start_step` to the end, in order, prepared ahead on the device."""
        indices = (i for s in range(start_step, self.total_steps) for i in self.episode_indices(s))
        return Prefetcher(self.host_episode, indices, self.workers, self.device)

    @torch.no_grad()
    def validate(self) -> float:
        self.model.eval()
        scorer = EpisodeScorer(self.model, self.loader, cache=True, amp=self.cfg.model.amp, workers=self.workers)
        scorer.precompute(self.val_episodes)
        acc: list[float] = []
        for batch in episode_batches(self.val_episodes, scorer.episodes_per_batch):  # batched, as evaluate scores
            predictions = scorer.scores_batch(batch).prediction.cpu().numpy()  # (B, Q)
            acc += [float((p == np.asarray(ep.query_labels)).mean()) for p, ep in zip(predictions, batch, strict=True)]
        return float(np.mean(acc))

    def fit(self, staging: Staging | None = None) -> None:
        self._restore()
        t = self.cfg.train
        bar = tqdm(total=self.total_steps, initial=self.state["step"], desc="train", unit="step", disable=self.rank != 0, mininterval=2.0)
        try:
            if self.rank == 0:
                p = self.cfg.protocol
                self.monitor = TrainMonitor(self.out, self.cfg.dataset.name, self.total_steps * self.per_step, t.log_every,
                                            title=f"train: {self.cfg.dataset.name}, {p.way}-way {p.shot}-shot, {self.total_steps * self.per_step} episodes",
                                            chance=1.0 / p.way)
                self.monitor.start(self.state["step"] * self.per_step)
            pending: list[tuple[dict[str, Any], torch.Tensor]] = []  # steps whose loss/accuracy are still on the device
            start_step, loop_start = self.state["step"], time.perf_counter()
            E = t.episodes_per_step
            with self.prefetcher(start_step) as episodes:
                while self.state["step"] < self.total_steps:
                    step = self.state["step"]
                    t0 = time.perf_counter()
                    stats = self.train_step([next(episodes) for _ in range(E)])
                    self.state["seconds"] += time.perf_counter() - t0
                    before, after = step * self.per_step, (step + 1) * self.per_step
                    pending.append(({"step": step + 1, "epoch": self._epoch_of(after), "episode": after}, stats))
                    self.state["step"] = step + 1
                    validate = self._validate_now(before, after)
                    checkpoint = after // t.checkpoint_every > before // t.checkpoint_every
                    log_now = after // t.log_every > before // t.log_every or self.state["step"] >= self.total_steps
                    if validate or checkpoint or log_now:
                        self._flush(pending, bar)
                    if validate:
                        self._record_validation(self.state["metrics"][-1])
                    if checkpoint:
                        self._save_state()
                    if self.monitor is not None and log_now:
                        self.monitor.update(before, after, self.state["metrics"], self.state["validation"])
                    bar.update(1)
            self._flush(pending, bar)
        finally:  # closed on the way out too: a later line (an error) starts a line of its own
            bar.close()
        loop = time.perf_counter() - loop_start
        self.state["loop_seconds"] = self.state.get("loop_seconds", 0.0) + loop
        done = (self.state["step"] - start_step) * self.per_step
        if self.rank == 0 and done:
            log.info(f"train: {done} episodes in {loop:.1f} s ({done / max(loop, 1e-9):.2f} episodes/s, data loading, validation "
                     f"and checkpoints included)")
        if self.rank == 0:
            self._finish(staging)

    def _flush(self, pending: list[tuple[dict[str, Any], torch.Tensor]], bar: Any) -> None:
        """Read the pending steps' loss and accuracy (one transfer) into the metrics rows, in order."""
        if not pending:
            return
        values = torch.stack([stats for _, stats in pending]).cpu()  # (steps, 3) float64
        for (row, _), stats in zip(pending, values, strict=True):
            self.state["metrics"].append({**row, **self._metrics_of(stats), "lr": self.optimizer.param_groups[0]["lr"]})
        pending.clear()
        window = self.state["metrics"][-self.cfg.train.log_every :]
        bar.set_postfix(loss=f"{np.mean([w['loss'] for w in window]):.3f}", acc=f"{np.mean([w['accuracy'] for w in window]):.2f}")

    def _record_validation(self, row: dict[str, Any]) -> None:
        acc = self.validate()
        best = self.state["best"]
        is_best = best is None or acc > best["accuracy"]
        self.state["validation"].append({"step": row["step"], "epoch": row["epoch"], "episode": row["episode"], "accuracy": acc, "best": is_best})
        if is_best and self.rank == 0:
            self.state["best"] = {"step": row["step"], "accuracy": acc}
            picked_on = {} if self.cfg.train.val_split == "val" else {"val_split": self.cfg.train.val_split}  # val: the bytes as before
            save_checkpoint(self.out / "best.pt", self.model, self.cfg, stored=self.stored, step=row["step"], val_accuracy=acc, **picked_on)
        line = f"validation at step {row['step']} (episode {row['episode']}): accuracy {acc:.4f}{' (best)' if is_best else ''}"
        if self.monitor is not None:
            self.monitor.emit(line)
        else:
            log.info(line)

    def _finish(self, staging: Staging | None) -> None:
        step = self.state["step"]
        save_checkpoint(self.out / "last.pt", self.model, self.cfg, stored=self.stored, step=step)
        if self.state["best"] is None:  # no validation ran (warm-up covers every epoch): the last weights are the best we have
            save_checkpoint(self.out / "best.pt", self.model, self.cfg, stored=self.stored, step=step, val_accuracy=None)
        metrics = pd.DataFrame(self.state["metrics"])
        validation = pd.DataFrame(self.state["validation"], columns=["step", "epoch", "episode", "accuracy", "best"])
        (self.out / "config.json").write_text(json.dumps(self.stored, indent=2), encoding="utf-8")
        (self.out / STATE).unlink(missing_ok=True)
        if staging is not None:
            staging.write_parquet("metrics.parquet", metrics)
            staging.write_parquet("validation.parquet", validation)
        if self.monitor is not None:  # TensorBoard events + curves.png, from the tables just written
            best = self.state["best"]
            kept = {"episode": best["step"] * self.per_step, "accuracy": best["accuracy"]} if best else {"episode": step * self.per_step, "accuracy": None}
            self.monitor.finish(metrics, validation, kept)
        if staging is not None:
            staging.extra["summary"] = {
                "steps": step,
                "episodes": step * self.per_step,
                "best": self.state["best"],
                "seconds": self.state["seconds"],
                "loop_seconds": self.state.get("loop_seconds"),
                "excluded_videos": self.excluded,
                "final_loss": float(metrics["loss"].tail(50).mean()) if len(metrics) else None,
            }


class CapturedPass:
    """A training step's forward and backward (`fn(batch)` -> (losses, correct), then `losses.sum() / E` backward)
    captured once in a CUDA graph and replayed for every later step (`train.cuda_graphs`).

    The graph reads its inputs from fixed buffers (each step's batch is copied in) and writes the gradients into the
    tensors the capture allocated, which the parameters keep as `.grad` (the optimiser steps on them; they are never
    zeroed again: each replay overwrites them). Capture follows torch.cuda.graph's rules: warm-up iterations on a
    side stream first, no host synchronisation inside (labels are not read, the text length is fixed), autocast
    without its cast cache.
    """

    WARMUP = 3

    def __init__(self, fn, example: EpisodeBatch, episodes: int, params: Sequence[torch.nn.Parameter]):
        self.static = replace(example, **{k: v.clone() for k, v in example.tensors().items()})
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.WARMUP):
                losses, _ = fn(self.static)
                (losses.sum() / episodes).backward()
        torch.cuda.current_stream().wait_stream(side)
        for q in params:
            q.grad = None
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            losses, correct = fn(self.static)
            (losses.sum() / episodes).backward()
        self.losses, self.correct = losses.detach(), correct

    def __call__(self, batch: EpisodeBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Replay on `batch` (same shapes as the example); the outputs live in the graph's buffers until the next replay."""
        for name, value in batch.tensors().items():
            getattr(self.static, name).copy_(value, non_blocking=True)
        self.graph.replay()
        return self.losses, self.correct
