"""Decode one video into resized JPEG frames: decord first, PyAV when decord cannot read it.

    video = decode_video("/data/a b [1].mp4", DecodeSettings(size=257, max_frames=32))
    video.num_frames, video.stored_indices, video.jpegs   # source frame count, kept frame numbers, bytes

Both backends hand full-resolution RGB frames to the same resize (PIL bilinear, antialiased when
shrinking; the aspect ratio is not kept, as the paper) and the same JPEG encoder, so the output is
deterministic and nearly independent of the backend that read the video.

decord 0.6.0 mis-decodes some frame widths (48 and 72 px among others: frames come back with four
channels or `get_batch` raises "DECORDArrayCopyFromTo: The size must exactly match"); every batch's
shape is checked and such videos are read again with PyAV.

A video that cannot be used raises `VideoFailure(reason, message)`; the reasons are `REASONS`.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "REASONS",
    "DecodeSettings",
    "DecodedVideo",
    "VideoFailure",
    "decode_video",
    "encode_jpeg",
    "spread_indices",
]

# Why a video is not usable (the `reason` column of the index; the `error` column says more).
REASONS = {
    "missing_file": "the file does not exist",
    "not_a_file": "the path is a folder or another non-file",
    "empty_file": "the file has zero bytes",
    "unreadable": "neither decord nor PyAV could decode it",
    "too_few_frames": "it has fewer frames than T (protocol.num_frames)",
}

_BATCH = 32  # frames fetched from decord at a time (bounds memory for long videos)


class VideoFailure(Exception):
    """A video that cannot be used: `reason` is one of REASONS, the message says what happened."""

    def __init__(self, reason: str, message: str, num_frames: int | None = None):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.num_frames = num_frames  # frames in the source, when it was readable


@dataclass(frozen=True)
class DecodeSettings:
    """How frames are decoded and stored (everything that changes the output, plus thread count)."""

    size: int = 257  # stored frames are size x size
    max_frames: int | None = 32  # frames kept per video, spread evenly; None = every frame
    quality: int = 90  # JPEG quality
    min_frames: int = 1  # a video with fewer source frames fails with `too_few_frames`
    first: str = "decord"  # backend tried first: decord | pyav (the other one is the fallback)
    threads: int = 0  # decoder threads per video (0 = the library's choice); does not change output


@dataclass
class DecodedVideo:
    """The kept frames of one video, JPEG-encoded, with what was learnt about the source."""

    num_frames: int  # frames in the source
    fps: float | None  # average frame rate reported by the container
    width: int  # source frame width
    height: int  # source frame height
    decoder: str  # backend that produced the frames: decord | pyav
    stored_indices: list[int] = field(default_factory=list)  # source frame numbers kept, ascending
    jpegs: list[bytes] = field(default_factory=list)  # one JPEG per kept frame


def spread_indices(num_frames: int, max_frames: int | None) -> list[int]:
    """`max_frames` frame numbers spread evenly over [0, num_frames) (segment centres), or all of them."""
    if max_frames is None or num_frames <= max_frames:
        return list(range(num_frames))
    return [(2 * i + 1) * num_frames // (2 * max_frames) for i in range(max_frames)]


def encode_jpeg(rgb: np.ndarray, size: int, quality: int) -> bytes:
    """Resize an RGB frame [H, W, 3] to size x size (bilinear) and encode it as JPEG."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB") if isinstance(rgb, np.ndarray) else rgb
    if img.size != (size, size):
        img = img.resize((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def _check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoFailure("missing_file", f"no file at {path!r}") from None
    except OSError as exc:
        raise VideoFailure("missing_file", f"cannot stat {path!r}: {exc.strerror or exc}") from None
    import stat

    if not stat.S_ISREG(st.st_mode):
        raise VideoFailure("not_a_file", f"{path!r} is not a regular file")
    if st.st_size == 0:
        raise VideoFailure("empty_file", f"{path!r} has zero bytes")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    # decord puts a C++ stack trace into its messages; keep the first sentence
    for cut in (" Stack trace", "Stack trace:"):
        if cut in text:
            text = text.split(cut, 1)[0]
    return text[:300]


# --------------------------------------------------------------------------- backends
def _decode_decord(path: str, s: DecodeSettings) -> DecodedVideo:
    import decord

    vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=s.threads)
    n = len(vr)
    if n <= 0:
        raise RuntimeError("decord found no frames")
    fps = float(vr.get_avg_fps() or 0.0) or None
    out = DecodedVideo(num_frames=n, fps=fps, width=0, height=0, decoder="decord")
    if n < s.min_frames:
        return out
    keep = spread_indices(n, s.max_frames)
    for start in range(0, len(keep), _BATCH):
        chunk = keep[start : start + _BATCH]
        arr = vr.get_batch(chunk).asnumpy()  # (k, H, W, 3)
        if arr.ndim != 4 or arr.shape[0] != len(chunk) or arr.shape[3] != 3 or min(arr.shape[1:3]) <= 0:
            raise RuntimeError(f"decord returned frames of shape {tuple(arr.shape)} for {len(chunk)} frames (known decord defect)")
        if out.height and (arr.shape[1], arr.shape[2]) != (out.height, out.width):
            raise RuntimeError(f"decord changed frame size mid-video to {arr.shape[2]}x{arr.shape[1]}")
        out.height, out.width = int(arr.shape[1]), int(arr.shape[2])
        out.jpegs.extend(encode_jpeg(f, s.size, s.quality) for f in arr)
    out.stored_indices = keep
    return out


def _decode_pyav(path: str, s: DecodeSettings) -> DecodedVideo:
    import av

    with av.open(path) as container:
        if not container.streams.video:
            raise RuntimeError("no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if s.threads:
            stream.codec_context.thread_count = s.threads
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        # The frame count is only known after decoding, so keep every frame, resized (bounded by size^2).
        small, width, height = [], 0, 0
        for frame in _frames(container, stream):
            width, height = frame.width, frame.height
            img = frame.to_image()
            small.append(img if img.size == (s.size, s.size) else img.resize((s.size, s.size), _bilinear()))
    n = len(small)
    if n == 0:
        raise RuntimeError("PyAV decoded no frames")
    out = DecodedVideo(num_frames=n, fps=fps, width=width, height=height, decoder="pyav")
    if n < s.min_frames:
        return out
    out.stored_indices = spread_indices(n, s.max_frames)
    out.jpegs = [encode_jpeg(small[i], s.size, s.quality) for i in out.stored_indices]
    return out


def _frames(container, stream) -> Iterator:  # noqa: ANN001 - PyAV objects
    yield from container.decode(stream)


def _bilinear():  # noqa: ANN202
    from PIL import Image

    return Image.Resampling.BILINEAR


_BACKENDS = {"decord": _decode_decord, "pyav": _decode_pyav}


def decode_video(path: str, settings: DecodeSettings) -> DecodedVideo:
    """Decode, resize and JPEG-encode the kept frames of one video; raise VideoFailure when unusable."""
    _check_file(path)
    order = [settings.first] + [b for b in _BACKENDS if b != settings.first]
    errors = []
    for name in order:
        try:
            video = _BACKENDS[name](path, settings)
            break
        except Exception as exc:  # noqa: BLE001 - any decoder error means: try the next backend
            errors.append(f"{name}: {_short(exc)}")
    else:
        raise VideoFailure("unreadable", "; ".join(errors))
    if video.num_frames < settings.min_frames:
        raise VideoFailure(
            "too_few_frames", f"{video.num_frames} frames, fewer than T={settings.min_frames}", num_frames=video.num_frames
        )
    return video
