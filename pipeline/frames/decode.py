"""Decode one video into resized JPEG frames: decord first, PyAV when decord cannot read it.

    video = decode_video("/data/a b [1].mp4", DecodeSettings(size=257, max_frames=32))
    video.num_frames, video.stored_indices, video.jpegs   # source frame count, kept frame numbers, bytes

Frames are resized to size x size (the aspect ratio is not kept, as the paper) and JPEG-encoded.
Three ways are tried in order, each one only when the previous one failed:

1. `decord`: decord resizes inside its decoder (ffmpeg swscale, antialiased): the fast path, about
   the cost of decoding alone;
2. `decord+pil`: decord at the source size, then PIL bilinear (antialiased when shrinking);
3. `pyav`: PyAV decodes every frame, then the same PIL resize (a file decord cannot read).

decord 0.6.0 cannot output some frame widths (8, 12, 16, 24, 48 and 72 px among them: frames come
back with four channels or `get_batch` raises "DECORDArrayCopyFromTo: The size must exactly match");
every batch's shape is checked, so such a storage size falls to way 2 and such a source width to
way 3. The way used is the index's `decoder` column; the ways differ by about 1-3 grey levels
per pixel, and the same file with the same settings always takes the same way (deterministic output).

A video that cannot be used raises `VideoFailure(reason, message)`; the reasons are `REASONS`.
"""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from typing import Any

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
    "decoder_crash": "decoding it killed the worker process (segfault, abort, out of memory)",
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
    first: str = "decord"  # decoder tried first: decord | pyav (the other one is the fallback)
    threads: int = 0  # decoder threads per video (0 = the library's choice); does not change output
    storage: str = "jpeg"  # what shards hold: jpeg (the JPEG bytes) | raw (that JPEG's decoded pixels); see shards.py


@dataclass
class DecodedVideo:
    """The kept frames of one video, JPEG-encoded, with what was learnt about the source."""

    num_frames: int  # frames in the source
    fps: float | None  # average frame rate reported by the container
    decoder: str  # way that produced the frames: decord | decord+pil | pyav
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
class _Unopenable(RuntimeError):
    """The backend cannot open the file at all: its other ways would fail the same way."""


def _decode_decord(path: str, s: DecodeSettings, *, resize_in_decoder: bool) -> DecodedVideo:
    """decord; resizing inside its decoder (ffmpeg swscale) is the fast path, PIL after it the second try."""
    import decord

    size = {"width": s.size, "height": s.size} if resize_in_decoder else {}
    try:
        vr = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=s.threads, **size)
    except Exception as exc:  # noqa: BLE001
        raise _Unopenable(_short(exc)) from None
    n = len(vr)
    if n <= 0:
        raise RuntimeError("decord found no frames")
    fps = float(vr.get_avg_fps() or 0.0) or None
    out = DecodedVideo(num_frames=n, fps=fps, decoder="decord" if resize_in_decoder else "decord+pil")
    if n < s.min_frames:
        return out
    keep = spread_indices(n, s.max_frames)
    shape = None
    for start in range(0, len(keep), _BATCH):
        chunk = keep[start : start + _BATCH]
        arr = vr.get_batch(chunk).asnumpy()  # (k, H, W, 3)
        if arr.ndim != 4 or arr.shape[0] != len(chunk) or arr.shape[3] != 3 or min(arr.shape[1:3]) <= 0:
            raise RuntimeError(f"decord returned frames of shape {tuple(arr.shape)} for {len(chunk)} frames (known decord defect)")
        if resize_in_decoder and arr.shape[1:3] != (s.size, s.size):
            raise RuntimeError(f"decord resized to {arr.shape[2]}x{arr.shape[1]} instead of {s.size}x{s.size}")
        if shape is not None and arr.shape[1:] != shape:
            raise RuntimeError(f"decord changed the frame size mid-video to {arr.shape[2]}x{arr.shape[1]}")
        shape = arr.shape[1:]
        out.jpegs.extend(encode_jpeg(f, s.size, s.quality) for f in arr)
    out.stored_indices = keep
    return out


def _decode_pyav(path: str, s: DecodeSettings) -> DecodedVideo:
    """PyAV: decodes every frame (the count is only known at the end), keeping each resized with PIL."""
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
        small = []  # every frame at size^2: bounded memory whatever the source size
        for frame in container.decode(stream):
            img = frame.to_image()
            small.append(img if img.size == (s.size, s.size) else img.resize((s.size, s.size), _bilinear()))
    n = len(small)
    if n == 0:
        raise RuntimeError("PyAV decoded no frames")
    out = DecodedVideo(num_frames=n, fps=fps, decoder="pyav")
    if n < s.min_frames:
        return out
    out.stored_indices = spread_indices(n, s.max_frames)
    out.jpegs = [encode_jpeg(small[i], s.size, s.quality) for i in out.stored_indices]
    return out


def _bilinear():  # noqa: ANN202
    from PIL import Image

    return Image.Resampling.BILINEAR


# Tried in order (the configured first decoder's group first): decord resizing in its decoder, decord
# at the source size + PIL (decord cannot output some widths), PyAV + PIL (decord cannot read the file).
_BACKENDS: dict[str, list[tuple[str, Any]]] = {
    "decord": [
        ("decord", lambda p, s: _decode_decord(p, s, resize_in_decoder=True)),
        ("decord+pil", lambda p, s: _decode_decord(p, s, resize_in_decoder=False)),
    ],
    "pyav": [("pyav", _decode_pyav)],
}


def decode_video(path: str, settings: DecodeSettings) -> DecodedVideo:
    """Decode, resize and JPEG-encode the kept frames of one video; raise VideoFailure when unusable."""
    _check_file(path)
    order = [settings.first] + [b for b in _BACKENDS if b != settings.first]
    errors = []
    video = None
    for group in order:
        for name, backend in _BACKENDS[group]:
            try:
                video = backend(path, settings)
                break
            except _Unopenable as exc:
                errors.append(f"{name}: {exc}")
                break  # the group's other ways cannot open it either
            except Exception as exc:  # noqa: BLE001 - any decoder error means: try the next way
                errors.append(f"{name}: {_short(exc)}")
        if video is not None:
            break
    if video is None:
        raise VideoFailure("unreadable", "; ".join(errors))
    if video.num_frames < settings.min_frames:
        raise VideoFailure(
            "too_few_frames", f"{video.num_frames} frames, fewer than T={settings.min_frames}", num_frames=video.num_frames
        )
    return video
