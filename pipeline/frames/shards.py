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
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pipeline.artifacts import sha256_file
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.atomic import AtomicFile, atomic_write_text
from pipeline.datasets.registry import VideoEntry
from pipeline.frames.decode import DecodeSettings, VideoFailure, decode_video

__all__ = [
    "INDEX_SCHEMA",
    "ROW_GROUP_ROWS",
    "SHARD_DIR",
    "SHARD_SCHEMA",
    "ShardUnit",
    "decode_unit",
    "read_marker",
    "unit_files_prefix",
]

SHARD_DIR = "shards"
CRASH_MESSAGE = "decoding this file killed the worker process (a decoder crash, or out of memory)"
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
        pa.field("decoder", pa.string()),  # decord | decord+pil | pyav: the way that read it (see decode.py)
        pa.field("num_frames", pa.int32()),  # frames in the source (null when unreadable)
        pa.field("fps", pa.float64()),  # average frame rate of the source
        pa.field("stored_indices", pa.list_(pa.int32()), nullable=False),  # source frame numbers stored, ascending
        pa.field("shard", pa.string()),  # shard file, relative to the artifact folder
        pa.field("offsets", pa.list_(pa.int64(), 2)),  # [start, stop) rows of this video in the shard
        pa.field("bytes", pa.int64(), nullable=False),  # JPEG bytes stored for this video
    ]
)


@dataclass(frozen=True)
class ShardUnit:
    """One work unit: videos decoded into the shard file(s) of one unit id."""

    unit_id: int
    videos: tuple[VideoEntry, ...]
    out_dir: str  # the artifact's staging folder (shards go to <out_dir>/shards/)
    settings: DecodeSettings
    shard_max_bytes: int
    crashed: frozenset[str] = frozenset()  # video ids that killed a decoding process: recorded, not decoded again

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
            "settings": {k: v for k, v in vars(self.settings).items() if k != "threads"},
            "shard_max_bytes": self.shard_max_bytes,
        }  # not `crashed`: which videos crash follows from the rest
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
    }


def _atomic_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, sort_keys=True))


class _PartWriter:
    """Writes a unit's rows into size-bounded Parquet parts, each renamed into place when closed."""

    def __init__(self, unit: ShardUnit):
        self.unit = unit
        self.dir = Path(unit.out_dir) / SHARD_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.files: dict[str, dict[str, Any]] = {}
        self._part = -1
        self._writer: pq.ParquetWriter | None = None
        self._pending: AtomicFile | None = None
        self._rows = 0
        self._bytes = 0

    @property
    def _name(self) -> str:
        return f"{SHARD_DIR}/{self.unit.name}-{self._part:02d}.parquet"

    def _open(self) -> None:
        self._part += 1
        final = Path(self.unit.out_dir) / self._name
        self._pending = AtomicFile(final)
        self._writer = pq.ParquetWriter(
            self._pending.tmp,
            SHARD_SCHEMA,
            compression={"video_id": "zstd", "frame_index": "zstd", "jpeg": "none", "crc32": "none"},  # JPEG does not compress
            use_dictionary=["video_id"],
            write_statistics=["video_id", "frame_index"],
        )
        self._rows = self._bytes = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        tmp = self._pending.tmp
        self.files[self._name] = {"sha256": sha256_file(tmp), "size": tmp.stat().st_size}
        self._pending.commit()
        self._writer = self._pending = None

    def add(self, video_id: str, indices: list[int], jpegs: list[bytes]) -> tuple[str, int, int]:
        """Append one video's frames; returns (shard name, first row, end row)."""
        size = sum(len(j) for j in jpegs)
        if self._writer is not None and self._rows and self._bytes + size > self.unit.shard_max_bytes:
            self._close()
        if self._writer is None:
            self._open()
        table = pa.Table.from_arrays(
            [pa.array([video_id] * len(jpegs), pa.string()), pa.array(indices, pa.int32()), pa.array(jpegs, pa.binary()),
             pa.array([zlib.crc32(j) for j in jpegs], pa.uint32())],
            schema=SHARD_SCHEMA,
        )
        self._writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
        start = self._rows
        self._rows += len(jpegs)
        self._bytes += size
        return self._name, start, self._rows

    def close(self) -> None:
        self._close()

    def abort(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            finally:
                self._pending.abort()
                self._writer = self._pending = None


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
        for v in unit.videos:
            row = _row(v)
            if v.video_id in unit.crashed:
                row.update(status="failed", reason="decoder_crash", error=CRASH_MESSAGE)
                rows.append(row)
                continue
            try:
                video = decode_video(v.path, unit.settings)
            except VideoFailure as exc:
                row.update(status="failed", reason=exc.reason, error=str(exc), num_frames=exc.num_frames)
                rows.append(row)
                continue
            shard, start, stop = writer.add(v.video_id, video.stored_indices, video.jpegs)
            row.update(
                decoder=video.decoder,
                num_frames=video.num_frames,
                fps=video.fps,
                stored_indices=list(video.stored_indices),
                shard=shard,
                offsets=[start, stop],
                bytes=sum(len(j) for j in video.jpegs),
            )
            rows.append(row)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    result = {"unit": unit.unit_id, "key": unit.key(), "rows": rows, "files": writer.files}
    _atomic_json(unit.marker, result)
    return {**result, "decoded": True}

