"""Shard files and the work unit that writes them.

A work unit is a fixed group of videos (`videos_per_shard`). `decode_unit(unit)` decodes them, writes
their frames into one or more Parquet files `shards/<unit>-<part>.parquet` (a new part starts when
the next video would push a file past `shard_max_mb`; a video never spans files), and finally writes
the hidden completion marker `.unit-<unit>.json` holding the unit's index rows and file checksums.
Everything is written under a temporary name and renamed, so a killed unit leaves nothing that looks
finished. The function touches nothing but its own files: it can run in a pool, a Prefect task or a
Dask/Ray worker, and running it twice gives the same bytes.

Shard schema (`SHARD_SCHEMA`): one row per stored frame, videos in unit order, frames ascending;
row groups hold at most `ROW_GROUP_ROWS` rows of a single video, so a reader fetches one video's
frames without touching its neighbours. Each frame carries the CRC-32 of its JPEG bytes, which the
reader checks before decoding (the cheap per-read check; `fsar verify` checks whole files by sha256).

Raw storage (`frames.storage_format=raw`): the same JPEG is decoded once here (PIL; the reader's
torchvision decoder gives the same pixels) and its pixels are stored instead, so a sample reads
exactly what a jpeg artifact's reader would decode. Each Parquet part then has the columns of
`raw_shard_schema(size)` (no `jpeg`; its schema metadata says `fsar.storage: raw` and the frame
shape) and a pixel file beside it, `shards/<unit>-<part>.rgb`: the part's frames in row order,
uint8 planes (3, size, size) each, so row r is at byte r * 3 * size^2; the CRC-32 column is that of
the frame's pixel bytes. Both files are in the unit's files (checksums, sizes, `fsar verify`).
"""

from __future__ import annotations

import hashlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import sha256_file
from pipeline.atomic import AtomicFile, atomic_write_text
from pipeline.datasets.registry import VideoEntry
from pipeline.frames.decode import DecodeSettings, VideoFailure
from pipeline.frames.isolation import IsolatedDecoder

__all__ = [
    "INDEX_SCHEMA",
    "PIXELS_SUFFIX",
    "ROW_GROUP_ROWS",
    "SHARD_DIR",
    "SHARD_SCHEMA",
    "ShardUnit",
    "decode_unit",
    "jpeg_planes",
    "pixels_name",
    "raw_shard_schema",
    "read_marker",
    "unit_files_prefix",
]

SHARD_DIR = "shards"
ROW_GROUP_ROWS = 64  # at most this many frames (of one video) per row group

SHARD_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # the dataset's video id
        pa.field("frame_index", pa.int32(), nullable=False),  # frame number in the source video (0-based)
        pa.field("jpeg", pa.binary(), nullable=False),  # the frame, resized to storage_size^2, JPEG-encoded
        pa.field("crc32", pa.uint32(), nullable=False),  # zlib.crc32 of `jpeg`: readers check it before decoding
    ]
)

INDEX_SCHEMA = pa.schema(
    [
        pa.field("video_id", pa.string(), nullable=False),  # unique id inside the dataset
        pa.field("class", pa.string(), nullable=False),  # raw class name
        pa.field("split", pa.string(), nullable=False),  # train | val | test
        pa.field("source_path", pa.string(), nullable=False),  # the video file that was read
        pa.field("status", pa.string(), nullable=False),  # ok | failed
        pa.field("reason", pa.string()),  # failed: one of decode.REASONS
        pa.field("error", pa.string()),  # failed: what happened, in words
        pa.field("decoder", pa.string()),  # pyav: what decoded it, front to back (see decode.py)
        pa.field("num_frames", pa.int32()),  # frames decoded from the source (null when unreadable); not the container's claim
        pa.field("fps", pa.float64()),  # average frame rate of the source
        pa.field("stored_indices", pa.list_(pa.int32()), nullable=False),  # source frame numbers stored, ascending
        pa.field("shard", pa.string()),  # shard file, relative to the artifact folder
        pa.field("offsets", pa.list_(pa.int64(), 2)),  # [start, stop) rows of this video in the shard
        pa.field("bytes", pa.int64(), nullable=False),  # frame bytes stored for this video (JPEG, or raw pixels)
        pa.field("warnings", pa.string()),  # ok videos: corrupt packets skipped, demuxing cut short; null when clean
    ]
)

PIXELS_SUFFIX = ".rgb"  # raw storage: the pixel file beside each Parquet part


def raw_shard_schema(size: int) -> pa.Schema:
    """Columns of a raw-storage Parquet part (frames are in its pixel file); the metadata names the layout."""
    fields = [SHARD_SCHEMA.field(name) for name in ("video_id", "frame_index")]
    crc = pa.field("crc32", pa.uint32(), nullable=False)  # zlib.crc32 of the frame's pixel bytes
    return pa.schema([*fields, crc], metadata={"fsar.storage": "raw", "fsar.frame_shape": f"3,{size},{size}"})


def pixels_name(shard: str) -> str:
    """The pixel file of a raw-storage Parquet part (same folder and stem)."""
    return shard.removesuffix(".parquet") + PIXELS_SUFFIX


def jpeg_planes(jpeg: bytes, size: int) -> bytes:
    """A stored JPEG's pixels as raw storage keeps them: uint8 planes (3, size, size), row-major."""
    from PIL import Image

    with Image.open(io.BytesIO(jpeg)) as im:
        rgb = np.asarray(im.convert("RGB"))  # (size, size, 3)
    if rgb.shape != (size, size, 3):
        raise ValueError(f"stored frame is {rgb.shape[1]}x{rgb.shape[0]}, expected {size}x{size}")
    return np.ascontiguousarray(rgb.transpose(2, 0, 1)).tobytes()  # (3, size, size)


@dataclass(frozen=True)
class ShardUnit:
    """One work unit: videos decoded into the shard file(s) of one unit id."""

    unit_id: int
    videos: tuple[VideoEntry, ...]
    out_dir: str  # the artifact's staging folder (shards go to <out_dir>/shards/)
    settings: DecodeSettings
    shard_max_bytes: int

    @property
    def name(self) -> str:
        return f"{self.unit_id:05d}"

    @property
    def marker(self) -> Path:
        return Path(self.out_dir) / f".unit-{self.name}.json"

    def key(self) -> str:
        """What the unit's output depends on (guards a marker against a different unit of the same id)."""
        payload = {
            "videos": [[v.video_id, v.class_name, v.split, v.path] for v in self.videos],
            "settings": {k: v for k, v in vars(self.settings).items() if (k, v) != ("storage", "jpeg")},
            "shard_max_bytes": self.shard_max_bytes,
        }  # storage only when raw (jpeg keys predate it)
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def unit_files_prefix(unit: ShardUnit) -> str:
    return f"{unit.name}-"


def _row(v: VideoEntry) -> dict[str, Any]:
    return {
        "video_id": v.video_id,
        "class": v.class_name,
        "split": v.split,
        "source_path": v.path,
        "status": "ok",
        "reason": None,
        "error": None,
        "decoder": None,
        "num_frames": None,
        "fps": None,
        "stored_indices": [],
        "shard": None,
        "offsets": None,
        "bytes": 0,
        "warnings": None,
    }


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, sort_keys=True))


class _PartWriter:
    """Writes a unit's rows into size-bounded Parquet parts (and, raw storage, their pixel files), each renamed into place when closed."""

    def __init__(self, unit: ShardUnit):
        self.unit = unit
        self.raw = unit.settings.storage == "raw"
        self.dir = Path(unit.out_dir) / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, dict[str, Any]] = {}
        self._part = -1
        self._writer: pq.ParquetWriter | None = None
        self._pending: AtomicFile | None = None
        self._pixels: tuple[AtomicFile, BinaryIO] | None = None  # raw storage: the part's pixel file, open for writing
        self._rows = 0
        self._bytes = 0

    @property
    def _name(self) -> str:
        return f"{SHARD_DIR}/{self.unit.name}-{self._part:02d}.parquet"

    def _open(self) -> None:
        self._part += 1
        final = Path(self.unit.out_dir) / self._name
        self._pending = AtomicFile(final)
        if self.raw:
            pending = AtomicFile(Path(self.unit.out_dir) / pixels_name(self._name))
            self._pixels = (pending, open(pending.tmp, "wb"))
        self._writer = pq.ParquetWriter(
            self._pending.tmp,
            raw_shard_schema(self.unit.settings.size) if self.raw else SHARD_SCHEMA,
            compression={"video_id": "zstd", "frame_index": "zstd", "jpeg": "none", "crc32": "none"},  # JPEG does not compress
            use_dictionary=["video_id"],
            write_statistics=["video_id", "frame_index"],
        )
        self._rows = self._bytes = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        pending = [(self._name, self._pending)]
        if self._pixels is not None:
            self._pixels[1].close()
            pending.append((pixels_name(self._name), self._pixels[0]))
        for name, p in pending:
            self.files[name] = {"sha256": sha256_file(p.tmp), "size": p.tmp.stat().st_size}
        for _, p in pending:
            p.commit()
        self._writer = self._pending = self._pixels = None

    def add(self, video_id: str, indices: list[int], jpegs: list[bytes]) -> tuple[str, int, int, int]:
        """Append one video's frames; returns (shard name, first row, end row, bytes stored)."""
        frames = [jpeg_planes(j, self.unit.settings.size) for j in jpegs] if self.raw else jpegs  # what is stored
        size = sum(len(f) for f in frames)
        if self._writer is not None and self._rows and self._bytes + size > self.unit.shard_max_bytes:
            self._close()
        if self._writer is None:
            self._open()
        columns = [pa.array([video_id] * len(frames), pa.string()), pa.array(indices, pa.int32())]
        if self._pixels is not None:
            for f in frames:
                self._pixels[1].write(f)
        else:
            columns.append(pa.array(frames, pa.binary()))
        columns.append(pa.array([zlib.crc32(f) for f in frames], pa.uint32()))
        table = pa.Table.from_arrays(columns, schema=self._writer.schema)
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        start = self._rows
        self._rows += len(frames)
        self._bytes += size
        return self._name, start, self._rows, size

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
                if self._pixels is not None:
                    self._pixels[1].close()
            finally:
                self._pending.abort()
                if self._pixels is not None:
                    self._pixels[0].abort()
                self._writer = self._pending = self._pixels = None


def read_marker(unit: ShardUnit) -> dict[str, Any] | None:
    """The unit's result if it finished (marker present, same unit, its files intact), else None."""
    try:
        data = json.loads(unit.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if data.get("key") != unit.key():
        return None
    for name, info in data.get("files", {}).items():
        p = Path(unit.out_dir) / name
        if not p.is_file() or p.stat().st_size != info["size"]:
            return None
    return data


def decode_unit(unit: ShardUnit) -> dict[str, Any]:
    """Decode a unit's videos into its shard file(s) and write its completion marker.

    Returns {"unit", "key", "rows" (index rows, unit order), "files" ({name: {sha256, size}}),
    "decoded" (True; False when an earlier run had finished it)}. Bad videos become failed rows;
    only an unexpected error (disk full, a bug) raises.
    """
    done = read_marker(unit)
    if done is not None:
        return {**done, "decoded": False}
    writer = _PartWriter(unit)
    rows = []
    try:
        with IsolatedDecoder(unit.settings) as decoder:
            for v in unit.videos:
                row = _row(v)
                try:
                    video = decoder.decode(v.path)
                except VideoFailure as exc:
                    row.update(status="failed", reason=exc.reason, error=str(exc), num_frames=exc.num_frames)
                    rows.append(row)
                    continue
                shard, start, stop, nbytes = writer.add(v.video_id, video.stored_indices, video.jpegs)
                row.update(
                    decoder=video.decoder,
                    num_frames=video.num_frames,
                    fps=video.fps,
                    stored_indices=list(video.stored_indices),
                    shard=shard,
                    offsets=[start, stop],
                    bytes=nbytes,
                    warnings=video.warnings,
                )
                rows.append(row)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    result = {"unit": unit.unit_id, "key": unit.key(), "rows": rows, "files": writer.files}
    _atomic_json(unit.marker, result)
    return {**result, "decoded": True}

