"""Read stored frames back: `FrameStore`, TSN sampling and the train/eval clip transforms.

    fs = FrameStore.open("hmdb51")                       # latest frames artifact under $FSAR_ARTIFACTS
    fs.usable_videos("test")                             # index rows of decodable test videos
    fs.frames(video_id, [0, 12, 24])                     # uint8 (3, H, W, 3), stored frame numbers
    fs.clip(video_id, 8, "train", rng=rng)               # float (8, 3, 224, 224), CLIP-normalised

Sampling (docs/method.md, as released): T equal segments over the stored frames; training takes one
random frame in each segment, evaluation the centre frame of each segment. Transforms: frames are
stored at storage_size^2 already (the paper's 257 resize); training takes one random size^2 crop
(same for all T frames), evaluation the centre crop; no flip; normalised with the given mean/std.

Reads are row-exact: the index gives each video's shard and row range, open Parquet files are
cached (per process, so a forked DataLoader worker opens its own), and only the row groups that
hold the requested rows are read. A raw-storage artifact (`frames.storage_format=raw`, see
`shards`) keeps each open part's frame numbers and CRC-32s in memory and reads the T frames'
pixels straight from its pixel file at row * frame bytes: no Parquet read and no JPEG decoding per
sample, and the same pixels as the JPEG it was built from (CRC-checked like JPEG bytes).
"""

from __future__ import annotations

import os
import zlib
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline.artifacts import ArtifactError, ArtifactRef, ArtifactStore, broken_message, record_read
from pipeline.errors import FsarError
from pipeline.frames.shards import pixels_name

__all__ = ["CLIP_MEAN", "CLIP_STD", "FrameStore", "FrameStoreError", "MODES", "clip_from_jpegs", "crop_box", "sample_indices", "to_clip"]

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MODES = ("train", "eval")

RngLike = np.random.Generator | int | None


class FrameStoreError(FsarError, LookupError):
    """A video or frame that is not in the store (unknown id, failed video, frame not stored)."""


def _rng(rng: RngLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def sample_indices(stored_indices: Sequence[int] | np.ndarray, num_frames: int, mode: str = "eval", rng: RngLike = None) -> np.ndarray:
    """T frame numbers out of `stored_indices` (TSN): one random frame per segment (train) or each segment's centre (eval).

    Segments split the stored frames into `num_frames` equal parts; with fewer stored frames than
    segments, frames repeat. Returns int64 source frame numbers, ascending.
    """
    _check_mode(mode)
    stored = np.asarray(stored_indices, dtype=np.int64)
    n, t = len(stored), int(num_frames)
    if t < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    if n == 0:
        raise ValueError("no stored frames to sample from")
    bounds = np.arange(t + 1) * (n / t)  # segment edges in stored positions
    if mode == "eval":
        pos = ((bounds[:-1] + bounds[1:]) / 2).astype(np.int64)  # = int(tick / 2 + tick * k), as released
    else:
        lo = np.floor(bounds[:-1]).astype(np.int64)
        hi = np.maximum(lo + 1, np.floor(bounds[1:]).astype(np.int64))
        pos = _rng(rng).integers(lo, hi)
    return stored[np.minimum(pos, n - 1)]


def crop_box(height: int, width: int, size: int, mode: str, rng: RngLike = None) -> tuple[int, int]:
    """(top, left) of a size x size crop: random (train) or centred like torchvision's CenterCrop (eval)."""
    _check_mode(mode)
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the stored frames ({height}x{width}); lower it or rebuild frames with a larger storage_size")
    if mode == "eval":
        return int(round((height - size) / 2.0)), int(round((width - size) / 2.0))
    g = _rng(rng)
    return int(g.integers(0, height - size + 1)), int(g.integers(0, width - size + 1))


def to_clip(
    frames: np.ndarray, size: int, mode: str, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, rng: RngLike = None
) -> torch.Tensor:
    """uint8 frames (T, H, W, 3) -> float (T, 3, size, size): one crop for all frames (random/centre), normalised."""
    return _clip_chw(frames.transpose(0, 3, 1, 2), size, mode, mean, std, rng)


def clip_from_jpegs(
    jpegs: Sequence[bytes], size: int, mode: str = "eval", mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD, rng: RngLike = None
) -> torch.Tensor:
    """Sampled frames as stored (JPEG bytes, T of them) -> float (T, 3, size, size), exactly as `FrameStore.clip` transforms them.

    For frames that are not in a store: `decode.decode_video` gives a video's stored frames, `sample_indices` picks T.
    """
    _check_mode(mode)
    return _clip_chw(_decode_jpegs(jpegs), size, mode, mean, std, rng)  # (T, 3, size, size)


def _clip_chw(x: np.ndarray, size: int, mode: str, mean: Sequence[float], std: Sequence[float], rng: RngLike) -> torch.Tensor:
    """uint8 (T, 3, H, W), any strides -> cropped, normalised float (T, 3, size, size).

    numpy only: torch's parallel kernels take tens of milliseconds on tensors this small when the
    cores are busy (decoding workers, other jobs); single-threaded numpy does not.
    """
    top, left = crop_box(x.shape[2], x.shape[3], size, mode, rng)
    out = np.ascontiguousarray(x[:, :, top : top + size, left : left + size], dtype=np.float32)  # (T, 3, size, size)
    out -= np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0
    out *= 1.0 / (np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1) * 255.0)
    return torch.from_numpy(out)


def _decode_jpegs(jpegs: Sequence[bytes]) -> np.ndarray:
    """JPEG bytes -> uint8 (N, 3, H, W) (libjpeg-turbo via torchvision: about 30% faster than PIL here)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    return np.stack([decode_jpeg(torch.frombuffer(bytearray(j), dtype=torch.uint8), mode=ImageReadMode.RGB).numpy() for j in jpegs])


@dataclass
class _Shard:
    """One open Parquet part; raw storage adds its pixel file and every row's frame number and CRC-32."""

    pf: pq.ParquetFile
    starts: np.ndarray  # first row of each row group, then the row count
    shape: tuple[int, int, int] | None = None  # raw: one frame's (3, S, S); None: JPEG bytes in the Parquet file
    frame_index: np.ndarray | None = None  # raw: frame number of every row
    crc: np.ndarray | None = None  # raw: CRC-32 of every row's pixels
    pixels: Any = None  # raw: the open pixel file (unbuffered)

    def close(self) -> None:
        if self.pixels is not None:
            self.pixels.close()
            self.pixels = None


@dataclass(frozen=True)
class _Video:
    status: str
    reason: str | None
    error: str | None
    shard: str | None
    start: int | None  # first row of the video in its shard
    stored: np.ndarray  # stored source frame numbers, ascending


class FrameStore:
    """Random access to the frames of one frames artifact."""

    def __init__(self, path: str, index: pd.DataFrame, *, fs: Any = None, ref: ArtifactRef | None = None, max_open_files: int = 64,
                 sizes: dict[str, int] | None = None):
        self.path = path.rstrip("/")  # the artifact folder
        self.ref = ref
        self._sizes = dict(sizes or {})  # file -> bytes, from the manifest: a shard of another size is refused
        self.index = index  # one row per video (see pipeline.frames.shards.INDEX_SCHEMA)
        self._fs = fs  # fsspec filesystem for remote roots; None = local files
        self._max_open = max_open_files
        self._videos = {  # video_id -> _Video: what a read needs, without pandas on the hot path
            vid: _Video(status, reason, error, shard, None if offsets is None else int(offsets[0]), np.asarray(stored, dtype=np.int64))
            for vid, status, reason, error, shard, offsets, stored in zip(
                index["video_id"], index["status"], index["reason"], index["error"], index["shard"], index["offsets"], index["stored_indices"]
            )
        }
        self._files: OrderedDict[str, _Shard] = OrderedDict()
        self._pid = os.getpid()

    # ------------------------------------------------------------------ opening
    @classmethod
    def open(cls, dataset: str, version: str = "latest", root: str | os.PathLike[str] | None = None) -> "FrameStore":
        """The frames artifact of `dataset` (latest or a version) under `root` (default: the configured root)."""
        store = ArtifactStore(root)
        ref = store.resolve("frames", dataset, version)
        index = store.load("frames", dataset, ref.version)  # checksum-verified
        return cls(ref.path, index, ref=ref, sizes=store.manifest(ref).get("sizes"))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_files"] = OrderedDict()  # open files do not travel to other processes
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def close(self) -> None:
        for sh in self._files.values():
            sh.close()
        self._files.clear()

    def __enter__(self) -> "FrameStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return f"FrameStore({self.ref or self.path}, {len(self)} videos)"

    # ------------------------------------------------------------------- lookup
    def usable_videos(self, split: str | None = None) -> pd.DataFrame:
        """Index rows of the videos that decoded (status ok), of one split or all."""
        ok = self.index["status"] == "ok"
        if split is not None:
            ok &= self.index["split"] == split
        return self.index[ok].reset_index(drop=True)

    def _video(self, video_id: str) -> "_Video":
        try:
            v = self._videos[video_id]
        except KeyError:
            raise FrameStoreError(f"video {video_id!r} is not in this frames artifact ({self.path})") from None
        if v.status != "ok":
            raise FrameStoreError(
                f"video {video_id!r} has no frames: decoding failed ({v.reason}: {v.error}); pick videos from FrameStore.usable_videos()"
            )
        return v

    def stored_indices(self, video_id: str) -> np.ndarray:
        """Source frame numbers stored for a video, ascending."""
        return self._video(video_id).stored.copy()

    # -------------------------------------------------------------------- reads
    def frames(self, video_id: str, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Stored frames of a video as uint8 (len(indices), H, W, 3); `indices` are source frame numbers."""
        return torch.from_numpy(np.ascontiguousarray(self._frames(video_id, indices).transpose(0, 2, 3, 1)))  # (N, H, W, 3)

    def _frames(self, video_id: str, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        v = self._video(video_id)
        stored = v.stored
        want = np.asarray(indices, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(stored, want)
        bad = (pos >= len(stored)) | (stored[np.minimum(pos, len(stored) - 1)] != want)
        if bad.any():
            missing = want[bad][:5].tolist()
            raise FrameStoreError(
                f"frame(s) {missing} of video {video_id!r} are not stored; it stores {len(stored)} frames "
                f"({_describe(stored)}); sample from FrameStore.stored_indices() / sample_indices()"
            )
        sh = self._file(v.shard)
        if sh.shape is not None:
            pixels, got = self._read_pixels(v.shard, sh, v.start + pos)  # (N, 3, S, S)
        else:
            jpegs, got = self._read_rows(v.shard, v.start + pos)
        if not np.array_equal(got, want):
            raise FrameStoreError(f"shard {v.shard} disagrees with the index for video {video_id!r}; the artifact is corrupt, rebuild it")
        if sh.shape is not None:
            return pixels
        if len(want) == 0:
            return np.empty((0, 3, 0, 0), dtype=np.uint8)
        return _decode_jpegs(jpegs)  # (N, 3, H, W)

    def clip(
        self,
        video_id: str,
        num_frames: int,
        mode: str = "eval",
        size: int = 224,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        rng: RngLike = None,
    ) -> torch.Tensor:
        """T sampled, cropped, normalised frames: float (T, 3, size, size)."""
        _check_mode(mode)
        g = _rng(rng)
        idx = sample_indices(self._video(video_id).stored, num_frames, mode, g)
        return _clip_chw(self._frames(video_id, idx), size, mode, mean, std, g)  # (T, 3, size, size)

    def _file(self, shard: str) -> _Shard:
        if self._pid != os.getpid():  # forked: never share file handles with the parent
            self._files = OrderedDict()
            self._pid = os.getpid()
        hit = self._files.get(shard)
        if hit is not None:
            self._files.move_to_end(shard)
            return hit
        sh = self._open_shard(shard)
        self._files[shard] = sh
        if len(self._files) > self._max_open:
            self._files.popitem(last=False)[1].close()
        return sh

    def _open(self, name: str) -> Any:
        """An open binary file of the artifact (size checked against the manifest), mapping failures to ArtifactError."""
        full = f"{self.path}/{name}"
        try:
            size = self._fs.size(full) if self._fs is not None else os.stat(full).st_size
            if name in self._sizes and size != self._sizes[name]:
                raise self._corrupt(name, f"it has {size} bytes, the manifest says {self._sizes[name]}")
            f = self._fs.open(full, "rb") if self._fs is not None else open(full, "rb", buffering=0)
        except FileNotFoundError:
            raise self._corrupt(name, "it is missing") from None
        except OSError as exc:
            raise self._corrupt(name, f"it cannot be read ({' '.join(str(exc).split())[:120]})") from None
        if self.ref is not None:
            record_read(self.ref, name)
        return f

    def _open_shard(self, shard: str) -> _Shard:
        try:
            pf = pq.ParquetFile(self._open(shard))
            md = pf.metadata
            meta = pf.schema_arrow.metadata or {}
            raw = meta.get(b"fsar.storage") == b"raw"
            sh = _Shard(pf, np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)]))
            if raw:
                sh.shape = tuple(int(d) for d in meta[b"fsar.frame_shape"].split(b","))
                t = pf.read(columns=["frame_index", "crc32"])  # small: kept for the file's lifetime
                sh.frame_index, sh.crc = t.column("frame_index").to_numpy(), t.column("crc32").to_numpy()
        except (OSError, pa.ArrowException, KeyError, ValueError) as exc:
            raise self._corrupt(shard, f"it cannot be read ({' '.join(str(exc).split())[:120]})") from None
        if raw:
            pixels = pixels_name(shard)
            sh.pixels = self._open(pixels)
            size = self._fs.size(f"{self.path}/{pixels}") if self._fs is not None else os.fstat(sh.pixels.fileno()).st_size
            if size != md.num_rows * int(np.prod(sh.shape)):
                sh.close()
                raise self._corrupt(pixels, f"it has {size} bytes, {md.num_rows} frames of {'x'.join(map(str, sh.shape))} need {md.num_rows * int(np.prod(sh.shape))}")
        return sh

    def _read_pixels(self, shard: str, sh: _Shard, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw storage: uint8 (len(rows), 3, S, S) pixels and frame numbers of the given rows, CRC-checked."""
        out = np.empty((len(rows), *sh.shape), dtype=np.uint8)  # (N, 3, S, S)
        nbytes = out[0].nbytes if len(rows) else 0
        for k, r in enumerate(rows.tolist()):
            buf = memoryview(out[k].reshape(-1))
            try:
                sh.pixels.seek(r * nbytes)
                got = sh.pixels.readinto(buf)
            except OSError as exc:
                raise self._corrupt(pixels_name(shard), f"it cannot be read ({' '.join(str(exc).split())[:120]})") from None
            if got != nbytes:
                raise self._corrupt(pixels_name(shard), f"frame row {r} is cut short ({got} of {nbytes} bytes)")
            if zlib.crc32(buf) != int(sh.crc[r]):
                raise self._corrupt(pixels_name(shard), f"frame {int(sh.frame_index[r])} fails its CRC-32 check")
        return out, sh.frame_index[rows]

    def _read_rows(self, shard: str, rows: np.ndarray) -> tuple[list[bytes], np.ndarray]:
        """JPEG bytes and frame numbers of the given rows of a shard, in the order asked."""
        sh = self._file(shard)
        pf, starts = sh.pf, sh.starts
        groups = np.searchsorted(starts, rows, side="right") - 1
        jpegs: list[bytes] = [b""] * len(rows)
        frame_index = np.empty(len(rows), dtype=np.int64)
        for g in np.unique(groups):
            try:
                t = pf.read_row_group(int(g), columns=["frame_index", "jpeg", "crc32"])
            except (OSError, pa.ArrowException) as exc:
                raise self._corrupt(shard, f"row group {int(g)} cannot be read ({' '.join(str(exc).split())[:120]})") from None
            fi = t.column("frame_index").to_numpy()
            jp = t.column("jpeg")
            crc = t.column("crc32").to_numpy()
            for k in np.flatnonzero(groups == g):
                local = int(rows[k] - starts[g])
                jpegs[k] = jp[local].as_py()
                frame_index[k] = fi[local]
                if zlib.crc32(jpegs[k]) != int(crc[local]):
                    raise self._corrupt(shard, f"frame {int(fi[local])} fails its CRC-32 check")
        return jpegs, frame_index

    def _corrupt(self, shard: str, what: str) -> ArtifactError:
        if self.ref is not None:
            return ArtifactError(broken_message(self.ref, f"shard {shard}: {what}"))
        return ArtifactError(f"shard {shard} of {self.path}: {what}; rebuild the frames artifact")


def _describe(stored: np.ndarray) -> str:
    if len(stored) <= 8:
        return ", ".join(map(str, stored.tolist()))
    return f"{stored[0]}, {stored[1]}, ..., {stored[-1]}"
