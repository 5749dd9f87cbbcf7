"""The data module: episodes and videos -> model input, for training, validation, evaluation, the prefix and predict.

    loader = EpisodeLoader(frames, text, cfg, model.image_mean, model.image_std, device, text_keep=model.text_keep)
    b = loader.batch(episode, "train", rng)                      # synchronous: the reference
    with Prefetcher(lambda i: loader.host_batch(...), range(n), workers=4, device=device) as batches:
        for b in batches: ...                                    # the same batches, prepared ahead, in order
    for ids, clips in loader.clip_batches(video_ids, 16, workers): ...   # videos in order, chunks of 16

`EpisodeLoader` turns an `Episode` into tensors (clips from the frame store, text states from the
embeddings cache) and is the one place that does. `Prefetcher` is an ordered parallel map with a bounded
look-ahead: worker threads prepare the next items while the caller computes; on CUDA each worker pins
the host tensors and copies them to the device on its own stream (non-blocking), and the caller's
stream waits for that copy only when it takes the item. Results come in the order of the items, and
an item's tensors depend only on the item (a training episode's sampling only on (seed, i): its own
generator), so a prefetched run gets exactly the batches of the synchronous loop, and a run resumed at
step s gets the batches a straight run had from step s on (tests). `workers=0` prepares each item in
the calling thread when it is taken (no threads: the synchronous loop).

Worker threads read frames through their own copy of the frame store (its own open files: reads seek
and read shared handles, which threads must not share), each item in a copy of the taking thread's
context (`contextvars`: the artifact reads a stage records include the workers' reads).
"""

from __future__ import annotations

import contextvars
import copy
import os
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields, replace
from typing import Any, Generic, TypeVar

import numpy as np
import torch

from pipeline.config import Config
from pipeline.fewshot.episodes import Episode

__all__ = ["EpisodeBatch", "EpisodeLoader", "Prefetcher", "stack_batches", "to_device", "train_rng", "workers_for"]

T = TypeVar("T")
MAX_AUTO_WORKERS = 8  # "auto" data workers on CUDA: at most this many threads (JPEG decoding releases the GIL)


def train_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of training episode `index`: its frame and crop sampling depend on (seed, index) alone."""
    return np.random.default_rng([seed, 1, index])


def workers_for(setting: int | str, device: torch.device) -> int:
    """Data worker threads: `setting` when a number; "auto" = 1 on CPU (the cores compute), else up to 8 (cores - 1)."""
    if isinstance(setting, int):
        return setting
    if device.type == "cpu":
        return 1
    return max(1, min(MAX_AUTO_WORKERS, (os.cpu_count() or 2) - 1))


@dataclass
class EpisodeBatch:
    """One episode as model input (or, stacked, B episodes of one layout with a leading episode axis)."""

    support: torch.Tensor  # (N*K, T, 3, H, W) clips or (N*K, T, P+1, D) prefix states
    support_labels: torch.Tensor  # (N*K,)
    query: torch.Tensor  # (N*Q, T, 3, H, W) or prefix states
    query_labels: torch.Tensor  # (N*Q,)
    text_tokens: torch.Tensor  # (N, S, ctx)
    text_prefix: torch.Tensor  # (N, S, ctx, D_t)
    text_keep: int | None = None  # token positions the pooled text output depends on (None: the model finds it)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in fields(self) if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device: torch.device, non_blocking: bool = False) -> "EpisodeBatch":
        return replace(self, **{k: v.to(device, non_blocking=non_blocking) for k, v in self.tensors().items()})

    def pin_memory(self) -> "EpisodeBatch":
        return replace(self, **{k: v.pin_memory() for k, v in self.tensors().items()})

    def record_stream(self, stream: Any) -> None:
        for v in self.tensors().values():
            v.record_stream(stream)


def stack_batches(batches: Sequence[EpisodeBatch]) -> EpisodeBatch:
    """B episode batches of one layout -> one batch with a leading episode axis (text_keep: the largest)."""
    keeps = [b.text_keep for b in batches]
    return EpisodeBatch(
        **{name: torch.stack([getattr(b, name) for b in batches]) for name in batches[0].tensors()},
        text_keep=None if any(k is None for k in keeps) else max(keeps),  # type: ignore[type-var]
    )


def to_device(x: Any, device: torch.device) -> Any:
    """A tensor, an EpisodeBatch or a tuple/list of them on `device`; from the CPU to CUDA through pinned memory,
    without blocking the host (the copy is ordered before later work on the current stream)."""
    return _tree(x, lambda t: _move(t, device))


def _move(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


class EpisodeLoader:
    """Turns an Episode into tensors: clips from the frame store, text states from the cache.

    `frames` has `clip(video_id, T, mode, size, mean, std, rng=)` (a FrameStore); `text` has
    `for_classes(classes)` (a TextCache) or is None (videos only); `text_keep` maps (N, S, ctx) CPU tokens to
    the positions the model's pooled text output depends on (`TaskAdapterPP.text_keep`), so that the model need
    not read it from device tokens (a host synchronisation per episode on a GPU).
    """

    def __init__(
        self, frames: Any, text: Any, cfg: Config, image_mean: Sequence[float], image_std: Sequence[float], device: torch.device,
        text_keep: Callable[[torch.Tensor], int] | None = None,
    ):
        self.frames, self.text, self.cfg, self.device = frames, text, cfg, device
        self.mean, self.std = tuple(image_mean), tuple(image_std)
        self.text_keep = text_keep
        self._owner = threading.get_ident()
        self._local = threading.local()
        self._copies: weakref.WeakSet[Any] = weakref.WeakSet()  # a thread's copy goes (files closed) when the thread ends
        self._lock = threading.Lock()

    # ---- frames -------------------------------------------------------------------------------------------
    def _frames(self) -> Any:
        """The frame store of the calling thread: the loader's own in the thread that made it, else a copy."""
        if threading.get_ident() == self._owner:
            return self.frames
        mine = getattr(self._local, "frames", None)
        if mine is None:
            mine = self._local.frames = copy.copy(self.frames)  # FrameStore: the same index, its own open files
            with self._lock:
                self._copies.add(mine)
        return mine

    def clip(self, video_id: str, mode: str, rng: np.random.Generator | None) -> torch.Tensor:
        """(T, 3, H, W) on the CPU."""
        return self._frames().clip(
            video_id, self.cfg.protocol.num_frames, mode, self.cfg.model.image_size, self.mean, self.std, rng=rng
        )  # (T, 3, H, W)

    def host_clips(self, video_ids: Sequence[str], mode: str, rng: np.random.Generator | None) -> torch.Tensor:
        """(B, T, 3, H, W) on the CPU, clips drawn in order (one generator: the order is part of the sampling)."""
        return _stack([self.clip(v, mode, rng) for v in video_ids])

    def clips(self, video_ids: Sequence[str], mode: str, rng: np.random.Generator | None) -> torch.Tensor:
        """(B, T, 3, H, W) on the loader's device."""
        return to_device(self.host_clips(video_ids, mode, rng), self.device)

    def clip_batches(self, video_ids: Sequence[str], batch: int, workers: int, mode: str = "eval") -> "Prefetcher[tuple[list[str], torch.Tensor]]":
        """(ids, (b, T, 3, H, W) clips on the device) for consecutive chunks of `batch` videos, prepared ahead.

        Deterministic sampling only (`mode` eval): a chunk does not depend on the chunks before it.
        """
        ids = list(video_ids)
        chunks = [ids[i : i + batch] for i in range(0, len(ids), batch)]
        # at most one chunk per worker ahead (+1): a chunk of 128 clips at 224 px is 0.6 GB, pinned and on the device
        return Prefetcher(lambda chunk: (chunk, self.host_clips(chunk, mode, None)), chunks, workers, self.device, depth=workers + 1)

    # ---- text -------------------------------------------------------------------------------------------
    def host_text(self, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.text.for_classes(list(classes))

    def text_for(self, classes: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        return to_device(self.host_text(classes), self.device)

    # ---- episodes ---------------------------------------------------------------------------------------
    def host_batch(self, ep: Episode, mode: str, rng: np.random.Generator | None) -> EpisodeBatch:
        """An episode's tensors on the CPU: supports, then queries, drawn from `rng` in that order."""
        tokens, states = self.host_text(ep.classes)
        return EpisodeBatch(
            support=self.host_clips(ep.support, mode, rng),
            support_labels=torch.as_tensor(ep.support_labels),
            query=self.host_clips(ep.query, mode, rng),
            query_labels=torch.as_tensor(ep.query_labels),
            text_tokens=tokens,
            text_prefix=states,
            text_keep=None if self.text_keep is None else self.text_keep(tokens),
        )

    def batch(self, ep: Episode, mode: str, rng: np.random.Generator | None) -> EpisodeBatch:
        """`host_batch` on the loader's device (synchronous)."""
        return to_device(self.host_batch(ep, mode, rng), self.device)

    def close(self) -> None:
        """Close the frame store copies of worker threads still alive (their open files)."""
        with self._lock:
            copies, self._copies = list(self._copies), weakref.WeakSet()
        for fs in copies:
            close = getattr(fs, "close", None)
            if close is not None:
                close()


class Prefetcher(Generic[T]):
    """Ordered parallel map: `fn(item)` for each item, prepared up to `depth` items ahead by `workers` threads.

    Iterating yields the results in the order of `items` (which may be endless); an exception of `fn` is raised
    when its item is taken. On a CUDA `device` a result's tensors (tensors, tuples/lists of them, EpisodeBatch)
    are pinned and copied to the device by the worker on its own stream; the taker's stream waits for that copy.
    `workers=0`: `fn(item)` runs in the taking thread (no threads), results moved to the device the same way.
    Use as a context manager (or call `close()`): closing cancels what is not started and waits for the rest.
    """

    def __init__(self, fn: Callable[[Any], Any], items: Iterable[Any], workers: int, device: torch.device | None = None,
                 depth: int | None = None):
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.fn, self.items, self.workers = fn, iter(items), workers
        self.device = device if device is not None else torch.device("cpu")
        self.depth = depth if depth is not None else max(2, 2 * workers)
        self._cuda = self.device.type == "cuda"
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fsar-data") if workers else None
        self._queue: deque[Future] = deque()
        self._streams = threading.local()
        self._done = False

    def _prepare(self, item: Any) -> tuple[Any, Any]:
        out = self.fn(item)
        if not self._cuda:
            return out, None
        if self._pool is None:  # the taking thread: copy on its current stream, in order
            return to_device(out, self.device), None
        stream = getattr(self._streams, "stream", None)
        if stream is None:
            stream = self._streams.stream = torch.cuda.Stream(self.device)
        with torch.cuda.stream(stream):
            moved = to_device(out, self.device)
            event = torch.cuda.Event()
            event.record(stream)
        return moved, event

    def _fill(self) -> None:
        while not self._done and len(self._queue) < self.depth:
            try:
                item = next(self.items)
            except StopIteration:
                self._done = True
                return
            # in the taker's context: what it tracks (the artifact files a stage reads) sees the workers' reads too
            self._queue.append(self._pool.submit(contextvars.copy_context().run, self._prepare, item))  # type: ignore[union-attr]

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        if self._pool is None:
            try:
                item = next(self.items)
            except StopIteration:
                raise StopIteration from None
            return self._prepare(item)[0]
        self._fill()
        if not self._queue:
            raise StopIteration
        out, event = self._queue.popleft().result()
        self._fill()
        if event is not None:
            current = torch.cuda.current_stream(self.device)
            current.wait_event(event)
            _tree(out, lambda t: t.record_stream(current) or t)  # the caching allocator keeps the memory until this stream is done
        return out

    def close(self) -> None:
        if self._pool is not None:
            for f in self._queue:
                f.cancel()
            self._queue.clear()
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._done = True

    def __enter__(self) -> "Prefetcher[T]":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _stack(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """torch.stack; for CPU tensors through numpy, which copies in the calling thread. A data worker thread must not
    start OpenMP teams of its own: with more OpenMP threads than cores, libgomp stops spin-waiting in every team of
    the process, which changes the speed of the step's own parallel kernels (on a busy CPU several fold)."""
    if all(t.device.type == "cpu" for t in tensors):
        return torch.from_numpy(np.stack([t.numpy() for t in tensors]))
    return torch.stack(list(tensors))


def _tree(x: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """Apply `fn` to every tensor of x: a tensor, an EpisodeBatch, or a tuple/list of these (other leaves kept)."""
    if isinstance(x, torch.Tensor):
        return fn(x)
    if isinstance(x, EpisodeBatch):
        return replace(x, **{k: fn(v) for k, v in x.tensors().items()})
    if isinstance(x, (tuple, list)):
        return type(x)(_tree(v, fn) for v in x)
    return x
