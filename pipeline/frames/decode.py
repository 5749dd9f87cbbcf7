"""Decode one video into resized JPEG frames: front to back with PyAV, never seeking.

    video = decode_video("/data/a b [1].avi", DecodeSettings(size=257, max_frames=32))
    video.num_frames, video.stored_indices, video.jpegs   # frames decoded, kept frame numbers, bytes

    with IsolatedDecoder(settings) as decoder:            # the same, in a child process under a time budget
        video = decoder.decode(path)                      # (pipeline.frames.isolation)

Why sequential: seeking decoders land on the wrong frame on common streams. decord 0.6.0's random
access (`get_batch`, `vr[i]`), which fsar used before, returned other frames of the video for most
indices on MPEG-4 Part 2 with B-frames (the codec HMDB51 and UCF101 ship, in AVI, and in Matroska),
and spins forever when a container over-reports its frame count. So every video is decoded once, in
order, and the frames at the chosen positions are kept (docs/frames.md). Frame number i is the i-th
frame the decoder outputs (presentation order), counted from 0; `num_frames` is the number of frames
actually decoded, never the container's claim, so no stored index can point past the last decodable
frame. A packet the decoder rejects as corrupt is skipped and counted (the video's `warnings`), as
ffmpeg's command line does; when demuxing fails mid-file the frames before it are kept and the
failure is a warning too, and so is a stream that ends before the packet count its container states
(an mp4 whose index comes first, cut short: the demuxer just stops).

One decoding thread, always (`DECODER_THREADS`): FFmpeg's frame threads give the same frames on an intact
stream, but on a damaged one which frames survive depends on the thread count (a clip cut mid-packet:
7 frames and "1 corrupt packet(s) skipped" in one thread, 5 frames and no warning with 2 or 4), and
the thread count followed the worker count and the machine's cores. The stage's parallelism is its
decoding processes (`frames.workers`, default all cores), so equal versions hold equal frames on any
machine with any worker count.

Kept frames are spread evenly over the decoded frames (`spread_indices`, segment centres), so they are
only known once the last frame is out. When the container states a frame count (AVI, MP4), the frames
that count would keep are converted as they are decoded; when it states none (WebM, Matroska), decoded
frames are held (as PyAV frames, at the source size) up to `HOLD_BYTES`, past which the frames that
duration x rate would keep are converted on the fly. If the real count differs from the claim, a second
sequential pass fetches the kept frames that are missing (`passes` = 2). Both passes decode the same
frames (decoders are deterministic), so the claim only decides the cost, never which frames are stored.

A kept frame is converted and resized to size x size in one swscale call (bilinear, the aspect ratio
is not kept, as the paper) and JPEG-encoded with Pillow: `frame_jpeg`, the one conversion every path
uses (the stage, `fsar predict`, the conformance tests).

A video that cannot be used raises `VideoFailure(reason, message)`; the reasons are `REASONS`. Running
the decoder in a child process under a time budget is `pipeline.frames.isolation`.
"""

from __future__ import annotations

import io
import os
import stat
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DECODER",
    "DECODER_THREADS",
    "HOLD_BYTES",
    "REASONS",
    "DecodeSettings",
    "DecodedVideo",
    "VideoFailure",
    "check_file",
    "decode_video",
    "encode_jpeg",
    "frame_jpeg",
    "spread_indices",
]

# Why a video is not usable (the `reason` column of the index; the `error` column says more).
REASONS = {
    "missing_file": "the file does not exist",
    "not_a_file": "the path is a folder or another non-file",
    "empty_file": "the file has zero bytes",
    "unreadable": "PyAV could not open it or decoded no frame from it",
    "too_few_frames": "it has fewer decodable frames than T (protocol.num_frames)",
    "decoder_crash": "decoding it killed the decoding process (segfault, abort, out of memory)",
    "timeout": "decoding it took longer than frames.video_timeout_s",
}

DECODER = "pyav"  # the index's `decoder` column: the only way frames are decoded
DECODER_THREADS = 1  # one canonical decode: which frames of a damaged stream survive depends on the thread count
HOLD_BYTES = 256 << 20  # decoded frames held per video before falling back to the container's count


class VideoFailure(Exception):
    """A video that cannot be used: `reason` is one of REASONS, the message says what happened."""

    def __init__(self, reason: str, message: str, num_frames: int | None = None):
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.num_frames = num_frames  # frames decoded, when it was readable

    def __reduce__(self) -> tuple[Any, ...]:  # crosses the decoding process's pipe
        return (VideoFailure, (self.reason, str(self), self.num_frames))


@dataclass(frozen=True)
class DecodeSettings:
    """How frames are decoded and stored (everything that changes the output, plus the time budget)."""

    size: int = 257  # stored frames are size x size
    max_frames: int | None = 32  # frames kept per video, spread evenly; None = every frame
    quality: int = 90  # JPEG quality
    min_frames: int = 1  # a video with fewer decoded frames fails with `too_few_frames`
    storage: str = "jpeg"  # what shards hold: jpeg (the JPEG bytes) | raw (that JPEG's decoded pixels); see shards.py
    timeout_s: float | None = 300.0  # wall-clock budget of one video in IsolatedDecoder; None = no limit


@dataclass
class DecodedVideo:
    """The kept frames of one video, JPEG-encoded, with what was learnt about the source."""

    num_frames: int  # frames decoded (not the container's claim)
    fps: float | None  # average frame rate reported by the container
    decoder: str = DECODER
    stored_indices: list[int] = field(default_factory=list)  # frame numbers kept, ascending
    jpegs: list[bytes] = field(default_factory=list)  # one JPEG per kept frame
    warnings: str | None = None  # corrupt packets skipped, demuxing stopped early; None when clean
    passes: int = 1  # sequential passes it took (2 when a long video's container count was wrong)


def spread_indices(num_frames: int, max_frames: int | None) -> list[int]:
    """`max_frames` frame numbers spread evenly over [0, num_frames) (segment centres), or all of them."""
    if max_frames is None or num_frames <= max_frames:
        return list(range(num_frames))
    return [(2 * i + 1) * num_frames // (2 * max_frames) for i in range(max_frames)]


# ------------------------------------------------------------------------ conversion
_reformatter: Any = None  # one per process: its swscale context is reused across frames


def _forget_reformatter() -> None:
    global _reformatter
    _reformatter = None  # a forked child builds its own (a copied swscale context may wait on threads it lacks)


os.register_at_fork(after_in_child=_forget_reformatter)


def frame_jpeg(frame: Any, size: int, quality: int) -> bytes:
    """A decoded PyAV frame -> RGB size x size (swscale bilinear, bit-exact C code on every CPU, one thread, from the
    decoder's pixel format and colour range) -> JPEG bytes at `quality` (Pillow, libjpeg-turbo)."""
    global _reformatter
    from av.video.reformatter import Interpolation, VideoReformatter
    from PIL import Image

    if _reformatter is None:
        _reformatter = VideoReformatter()
    how = Interpolation.BILINEAR | Interpolation.BITEXACT | Interpolation.ACCURATE_RND
    rgb = _reformatter.reformat(frame, width=size, height=size, format="rgb24", interpolation=how, threads=1).to_ndarray()
    buf = io.BytesIO()
    Image.fromarray(rgb, mode="RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_jpeg(rgb: Any, size: int, quality: int) -> bytes:
    """An RGB frame [H, W, 3] uint8 (not from a video: e.g. a rendered image) through the same resize and JPEG."""
    import numpy as np
    from av import VideoFrame

    return frame_jpeg(VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24"), size, quality)


# ------------------------------------------------------------------------ decoding
def check_file(path: str) -> None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise VideoFailure("missing_file", f"no file at {path!r}") from None
    except OSError as exc:
        raise VideoFailure("missing_file", f"cannot stat {path!r}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(st.st_mode):
        raise VideoFailure("not_a_file", f"{path!r} is not a regular file")
    if st.st_size == 0:
        raise VideoFailure("empty_file", f"{path!r} has zero bytes")


def _short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:300]


class _Sequential:
    """The decoded frames of a file's first video stream, in order; counts what had to be skipped."""

    def __init__(self, path: str):
        import av

        self._av = av
        try:
            self.container = av.open(path, metadata_errors="ignore")
        except Exception as exc:  # noqa: BLE001 - any open error: the file is not a video PyAV can read
            raise VideoFailure("unreadable", f"PyAV cannot open it: {_short(exc)}") from None
        if not self.container.streams.video:
            self.container.close()
            raise VideoFailure("unreadable", "no video stream in the file")
        self.stream = self.container.streams.video[0]
        self.stream.codec_context.thread_count = DECODER_THREADS  # one canonical decode (see the module's doc)
        self.corrupt = 0  # packets the decoder rejected
        self.packets = 0  # packets demuxed (the end-of-stream flush not counted)
        self.demux_error: str | None = None

    def fps(self) -> float | None:
        rate = self.stream.average_rate or self.stream.guessed_rate
        return float(rate) if rate else None

    def claimed_frames(self) -> tuple[int, bool]:
        """(the container's frame count, True), else (duration x rate, False), else (0, False): a hint for what
        to keep while decoding, never trusted for indices."""
        if self.stream.frames:
            return int(self.stream.frames), True
        rate = self.stream.average_rate or self.stream.guessed_rate
        if self.stream.duration and self.stream.time_base and rate:
            return int(round(float(self.stream.duration * self.stream.time_base * rate))), False
        if self.container.duration and rate:
            return int(round(self.container.duration / 1_000_000 * float(rate))), False
        return 0, False

    def __iter__(self):  # noqa: ANN204
        av = self._av
        packets = self.container.demux(self.stream)
        while True:
            try:
                packet = next(packets)
            except StopIteration:
                return
            except av.error.FFmpegError as exc:  # the file breaks off: keep what decoded, flush the decoder
                self.demux_error = _short(exc)
                try:
                    yield from self.stream.codec_context.decode(None)
                except av.error.FFmpegError:
                    pass
                return
            if packet.size or packet.dts is not None:  # the demuxer's final flush packet is neither
                self.packets += 1
            try:
                frames = packet.decode()
            except av.error.InvalidDataError:
                self.corrupt += 1
                continue
            yield from frames

    def warnings(self) -> str | None:
        parts = []
        if self.corrupt:
            parts.append(f"{self.corrupt} corrupt packet(s) skipped")
        if self.demux_error:
            parts.append(f"demuxing stopped early: {self.demux_error}")
        stated = int(self.stream.frames or 0)
        if self.packets < stated:
            parts.append(f"the stream ends after {self.packets} of the {stated} packets its container states (cut short, or a header that over-counts)")
        return "; ".join(parts) or None

    def close(self) -> None:
        self.container.close()


def _frame_bytes(frame: Any) -> int:
    return sum(p.buffer_size for p in frame.planes)


def decode_video(path: str, settings: DecodeSettings) -> DecodedVideo:
    """Decode, resize and JPEG-encode the kept frames of one video, in this process; raise VideoFailure when unusable."""
    check_file(path)
    s = settings
    seq = _Sequential(path)
    try:
        try:
            fps = seq.fps()
            claimed, counted = seq.claimed_frames()
            want = set(spread_indices(claimed, s.max_frames)) if s.max_frames is not None else set()
            # a container that counts its frames is usually right: convert the frames its count would keep as they
            # come, holding nothing; otherwise (no count, an estimate) hold decoded frames up to HOLD_BYTES
            holding = s.max_frames is not None and not counted
            held: dict[int, Any] = {}  # frame number -> decoded frame
            encoded: dict[int, bytes] = {}  # frame number -> JPEG
            held_bytes, n = 0, 0
            for frame in seq:
                if s.max_frames is None:  # every frame is kept
                    encoded[n] = frame_jpeg(frame, s.size, s.quality)
                elif holding:
                    held[n] = frame
                    held_bytes += _frame_bytes(frame)
                    if held_bytes > HOLD_BYTES:  # a long video: from here on, convert what the estimate would keep
                        holding = False
                        encoded = {i: frame_jpeg(f, s.size, s.quality) for i, f in held.items() if i in want}
                        held = {}
                elif n in want:
                    encoded[n] = frame_jpeg(frame, s.size, s.quality)
                n += 1
            warnings = seq.warnings()
        except VideoFailure:
            raise
        except Exception as exc:  # noqa: BLE001 - a decoder error that is not a skippable packet
            raise VideoFailure("unreadable", f"PyAV: {_short(exc)}") from None
    finally:
        seq.close()
    if n == 0:
        raise VideoFailure("unreadable", "PyAV decoded no frame" + (f" ({warnings})" if warnings else ""))
    if n < s.min_frames:
        raise VideoFailure("too_few_frames", f"{n} decodable frames, fewer than T={s.min_frames}", num_frames=n)
    keep = spread_indices(n, s.max_frames)
    out = DecodedVideo(num_frames=n, fps=fps, stored_indices=keep, warnings=warnings)
    for i in keep:
        if i in encoded:
            continue
        if i in held:
            encoded[i] = frame_jpeg(held[i], s.size, s.quality)
    missing = [i for i in keep if i not in encoded]
    if missing:  # a long video whose container count was wrong: fetch the kept frames in a second pass
        encoded.update(_second_pass(path, s, set(missing), n))
        out.passes = 2
    out.jpegs = [encoded[i] for i in keep]
    return out


def _second_pass(path: str, s: DecodeSettings, wanted: set[int], n: int) -> dict[int, bytes]:
    seq = _Sequential(path)
    out: dict[int, bytes] = {}
    count = 0
    try:
        for count, frame in enumerate(seq, start=1):
            if count - 1 in wanted:
                out[count - 1] = frame_jpeg(frame, s.size, s.quality)
    finally:
        seq.close()
    if count != n:
        raise VideoFailure("unreadable", f"PyAV decoded {n} frames in a first pass and {count} in a second: the decoder is not deterministic on this file")
    return out
