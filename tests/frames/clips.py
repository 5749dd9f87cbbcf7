"""Clips encoded like each benchmark's originals (PyAV writes them), with content that names every frame.

    truth = write_clip(path, CLIP_KINDS["hmdb51"], frames=60)   # (n, H, W, 3) uint8: what was encoded

Every frame is a grid of random colours drawn for that frame alone, so any two frames differ by far more
than a lossy codec's error (a frame taken from the wrong index is obvious), and every frame is
recognisable after resizing to the stored square.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class ClipKind:
    """How a benchmark's videos are encoded (codec, container, B-frames, size, rate)."""

    codec: str
    container: str
    suffix: str
    width: int
    height: int
    fps: int
    b_frames: int | None = None  # None: the codec's default (VP9 has none)
    gop: int = 50
    pix_fmt: str = "yuv420p"
    bit_rate: int = 2_000_000
    tag: str | None = None  # the FourCC the originals carry (AVI)
    options: tuple[tuple[str, str], ...] = ()  # encoder options (speed only, e.g. libvpx cpu-used)


CLIP_KINDS = {
    # HMDB51 and UCF101: MPEG-4 Part 2 (XviD/DivX) with B-frames in AVI, 320x240 (UCF101 at 25 fps, HMDB51 at 30)
    "hmdb51": ClipKind("mpeg4", "avi", ".avi", 320, 240, 30, b_frames=2, tag="XVID"),
    "ucf101": ClipKind("mpeg4", "avi", ".avi", 320, 240, 25, b_frames=2, tag="XVID"),
    # Kinetics (CLIP-FSAR's train_256 copies): H.264 with B-frames in mp4, short side 256
    "kinetics": ClipKind("libx264", "mp4", ".mp4", 340, 256, 30, b_frames=2),
    # Something-Something v2: VP9 in WebM, height 240, 12 fps
    "ssv2": ClipKind("libvpx-vp9", "webm", ".webm", 427, 240, 12),
    # the same MPEG-4 stream in Matroska (decord's seeking failed there too)
    "mpeg4_mkv": ClipKind("mpeg4", "matroska", ".mkv", 320, 240, 25, b_frames=2),
    # odd sizes: MPEG-4 Part 2 allows them
    "odd_size": ClipKind("mpeg4", "avi", ".avi", 321, 241, 25, b_frames=2),
}


def frames_for(n: int, height: int, width: int, seed: int = 0) -> np.ndarray:
    """(n, height, width, 3) uint8: frame i is a 6 x 8 grid of colours drawn from (seed, i)."""
    out = np.empty((n, height, width, 3), np.uint8)
    for i in range(n):
        grid = np.random.default_rng([seed, i]).integers(16, 240, (6, 8, 3), dtype=np.uint8)
        rows = np.arange(height) * 6 // height
        cols = np.arange(width) * 8 // width
        out[i] = grid[rows][:, cols]
    return out


def write_clip(path: Path, kind: ClipKind, frames: int, seed: int = 0, pts: list[int] | None = None, index_first: bool = False) -> np.ndarray:
    """Encode `frames` frames of `frames_for` into `path` as `kind`; `pts` (in 1/1000 s) makes the rate variable;
    `index_first` (mp4): the index (moov) before the packets, as web-ready files have it (`-movflags faststart`)."""
    import av

    truth = frames_for(frames, kind.height, kind.width, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    options = {"movflags": "faststart"} if index_first else {}
    with av.open(str(path), "w", format=kind.container, options=options) as out:
        stream = out.add_stream(kind.codec, rate=kind.fps, options=dict(kind.options))
        stream.width, stream.height, stream.pix_fmt = kind.width, kind.height, kind.pix_fmt
        stream.bit_rate = kind.bit_rate
        stream.codec_context.gop_size = kind.gop
        if kind.b_frames is not None:
            stream.codec_context.max_b_frames = kind.b_frames
        if kind.tag:
            stream.codec_context.codec_tag = kind.tag
        if pts is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
            stream.time_base = Fraction(1, 1000)
        for i, rgb in enumerate(truth):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            if pts is not None:
                frame.pts, frame.time_base = pts[i], Fraction(1, 1000)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return truth


def overclaim_avi(src: Path, dst: Path, claimed: int) -> None:
    """A copy of an AVI whose headers (avih total frames, strh length) claim `claimed` frames."""
    data = bytearray(src.read_bytes())
    avih = data.find(b"avih")
    strh = data.find(b"strh")
    assert avih > 0 and strh > 0 and data[strh + 8 : strh + 12] == b"vids"
    struct.pack_into("<I", data, avih + 8 + 16, claimed)  # dwTotalFrames
    struct.pack_into("<I", data, strh + 8 + 32, claimed)  # dwLength
    dst.write_bytes(bytes(data))


def packet_spans(path: Path) -> list[tuple[int, int]]:
    """(byte offset, size) of every packet of the first video stream, in file order."""
    import av

    with av.open(str(path)) as container:
        return [(p.pos, p.size) for p in container.demux(container.streams.video[0]) if p.size]


def damaged_copies(src: Path, folder: Path, packet: int) -> dict[str, Path]:
    """Three damaged copies of `src` around its packet number `packet`: cut at that packet's start ("cut_at"),
    cut in its middle ("cut_mid"), and 64 of its bytes flipped, the file otherwise whole ("corrupt")."""
    data = src.read_bytes()
    pos, size = packet_spans(src)[packet]
    out = {"cut_at": folder / f"cut_at{src.suffix}", "cut_mid": folder / f"cut_mid{src.suffix}", "corrupt": folder / f"corrupt{src.suffix}"}
    out["cut_at"].write_bytes(data[:pos])
    out["cut_mid"].write_bytes(data[: pos + size // 2])
    flipped = bytearray(data)
    for i in range(pos + size // 3, pos + size // 3 + 64):
        flipped[i] ^= 0x5A
    out["corrupt"].write_bytes(bytes(flipped))
    return out


def independent_decode(path: Path) -> list:
    """Every frame of the first video stream, decoded front to back by PyAV's plain loop (no threads, no seeking)."""
    import av

    with av.open(str(path)) as container:
        return list(container.decode(container.streams.video[0]))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
