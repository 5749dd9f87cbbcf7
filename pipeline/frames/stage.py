"""The frames stage: every video of every split -> Parquet shards of JPEG frames + `index.parquet`.

    ref = run(config, {}, ArtifactStore("artifacts"))        # `fsar frames --dataset D --video-root DIR`
    artifacts.load("frames", D)                               # the index, one row per video

Work units are fixed groups of `frames.videos_per_shard` videos (registry order: train, val, test).
`shards.decode_unit` decodes one unit into its own shard file(s) and completion marker, touching
nothing else; by default the units run on a local process pool (`frames.workers`, default all
cores; forked, with the decoders imported once, unless other threads run, then spawned; biggest
units first) with a progress bar, and an orchestrator passes `map_units(fn, units) -> results` to
run them as Prefect tasks on Dask or Ray instead. Whatever runs a unit, each of its videos is decoded
front to back with PyAV in a child process of its own (`isolation.IsolatedDecoder`) under
`frames.video_timeout_s` of wall clock: a hung decoder is killed and recorded as `timeout`, one that
kills its process as `decoder_crash`, and the unit goes on with its other videos.

The artifact is built in the store's resumable staging folder (stable per version): a killed run,
re-run with the same inputs, keeps every unit that has its marker and decodes only the others; the
result is byte-identical to an uninterrupted run.

Version = hash of (stage format, the frames fields that change the output: storage_size,
max_frames, jpeg_quality, videos_per_shard, shard_max_mb, storage_format, video_timeout_s (a video
that runs out of time is a failed row); protocol.num_frames, which decides `too_few_frames`; the
dataset name; and a fingerprint of the video list: sha256 over every video's id, class, split, path,
file size and modification time). Editing, adding, removing or touching a video gives a new version;
`workers` and `max_failed_fraction` do not change the output and are not part of it. Library versions
(PyAV and its FFmpeg, Pillow, pyarrow) are recorded in the manifest, not hashed: upgrading them does
not force a re-decode. Format 3 (sequential decoding) replaced format 2, whose decord random access
stored wrong frames on MPEG-4 Part 2 with B-frames: artifacts of format 2 are never reused.

Bad videos (missing, zero bytes, not decodable, fewer than T decodable frames, a decoder crash or
time-out) are failed rows of the index with a reason and a message; the stage finishes, prints and
stores (manifest `summary`) the failure counts by reason, and raises `StageError` when the failed
share exceeds `frames.max_failed_fraction` (the partial work is kept for the next run; the re-run with
a raised threshold only writes the index). Paths come from the dataset registry; nothing globs user
file names, and one file reached twice (another spelling, a symlink) is refused naming both entries. A
run first prints the class split and warns about any split that cannot hold an N-way episode
(`report_split`; for a custom folder dataset, whose split is part of the version, that is an error
before decoding). Pool workers and decoding processes die with the process that started them, even a
SIGKILLed one (`isolation.die_with_parent`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import stat
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.artifacts import ArtifactRef, ArtifactStore, Staging
from pipeline.atomic import atomic_path
from pipeline.contract import StageError, build_once
from pipeline.datasets import SPLITS, VideoEntry, get_dataset
from pipeline.frames.decode import DecodeSettings
from pipeline.frames.isolation import die_with_parent, mp_context
from pipeline.frames.shards import INDEX_SCHEMA, SHARD_DIR, ShardUnit, decode_unit, read_marker

log = logging.getLogger("fsar")

__all__ = ["FORMAT_VERSION", "INDEX", "STAGE", "MapUnits", "plan_fields", "plan_units", "report_split", "run", "version_config"]

STAGE = "frames"
INDEX = "index.parquet"
# 2: a crc32 column per frame; 3: sequential PyAV decoding (frames of format 2 may be wrong frames); 4: one decoding thread
# (a damaged clip's frames no longer depend on frames.workers and the cores) and a warning for a stream that ends early
FORMAT_VERSION = 4
_MB = 1 << 20

# map_units(fn, units) -> results in any order; e.g. `lambda fn, units: [fn(u) for u in units]`
MapUnits = Callable[[Callable[[ShardUnit], dict[str, Any]], Sequence[ShardUnit]], Iterable[dict[str, Any]]]


def run(config: Any, inputs: Mapping[str, ArtifactRef] | None = None, store: ArtifactStore | None = None, *, map_units: MapUnits | None = None) -> ArtifactRef:
    """Build (or find) the frames artifact of `config.dataset`; returns its reference."""
    store = store if store is not None else ArtifactStore(config.artifacts)
    fc, t = config.frames, config.protocol.num_frames
    videos, stats = _listing(config)
    report_split(config, videos)
    workers = fc.workers or _cpu_count()
    settings = DecodeSettings(
        size=fc.storage_size,
        max_frames=fc.max_frames,
        quality=fc.jpeg_quality,
        min_frames=t,
        storage=fc.storage_format,
        timeout_s=fc.video_timeout_s,
    )
    mapper = map_units or (lambda fn, units: _pool_map(fn, units, workers))

    sizes = {v.path: st[0] if st else 0 for v, st in zip(videos, stats)}

    def build(staging: Staging) -> None:
        _build(staging, config, videos, sizes, settings, mapper)

    return build_once(
        store,
        STAGE,
        config.dataset.name,
        config=version_config(config, videos, stats),
        inputs=inputs or {},
        build=build,
        main=INDEX,
        format_version=FORMAT_VERSION,
        resume=True,
    )


def _listing(config: Any) -> tuple[list[VideoEntry], list[tuple[int, int] | None]]:
    """Every video with its (size, mtime) or None when missing; refuses settings and listings that cannot work."""
    fc, t = config.frames, config.protocol.num_frames
    if fc.max_frames is not None and fc.max_frames < t:
        raise StageError(f"frames.max_frames={fc.max_frames} keeps fewer frames than T=protocol.num_frames={t}; raise it to at least {t} (or null for all)")
    videos = list_videos(config)
    stats = [_stat(v.path) for v in videos]
    _refuse_all_missing(config, videos, stats)
    return videos, stats


def plan_fields(config: Any, inputs: Mapping[str, ArtifactRef] | None = None) -> dict[str, Any]:
    """What this stage's version hashes for `config` (the video listing is stat'ed, nothing decoded)."""
    return version_config(config, *_listing(config))


def list_videos(config: Any) -> list[VideoEntry]:
    """Every video of every split, in registry order; ids must be unique."""
    spec = get_dataset(config.dataset)
    videos = [v for split in SPLITS for v in spec.videos(split)]
    if not videos:
        raise StageError(f"dataset {config.dataset.name!r} lists no videos; check its video root / video list")
    seen: set[str] = set()
    files: dict[str, VideoEntry] = {}
    for v in videos:
        if v.video_id in seen:
            raise StageError(f"video id {v.video_id!r} appears more than once in dataset {config.dataset.name!r}; ids must be unique")
        seen.add(v.video_id)
        real = os.path.realpath(v.path)  # one file under two spellings (./a, a//b, an absolute path, a symlink)
        if real in files:
            first = files[real]
            raise StageError(
                f"dataset {config.dataset.name!r} lists the file {real!r} twice, as {first.path!r} ({first.split} "
                f"{first.class_name!r}) and as {v.path!r} ({v.split} {v.class_name!r}); list each video once"
            )
        files[real] = v
    return videos


def report_split(config: Any, videos: Sequence[VideoEntry]) -> dict[str, dict[str, int]]:
    """Print the class split ({split: {"classes", "videos", "episode_classes"}}) and warn about every split
    that cannot hold an N-way episode of K+Q videos per class (training and evaluation on it would fail).

    For a custom folder dataset the split is fsar's own (dataset.split_ratios) and part of this stage's
    version, so fixing it later re-decodes everything: there it is a `StageError` before any decoding."""
    p = config.protocol
    need = p.shot + p.query
    per: dict[str, Counter[str]] = {split: Counter() for split in SPLITS}
    for v in videos:
        per[v.split][v.class_name] += 1
    out = {
        split: {"classes": len(c), "videos": sum(c.values()), "episode_classes": sum(n >= need for n in c.values())}
        for split, c in per.items()
    }
    text = ", ".join(f"{s} {o['classes']} classes / {o['videos']} videos" for s, o in out.items())
    log.info(f"frames: class split of {config.dataset.name}: {text}")
    short = {s: o for s, o in out.items() if o["videos"] and o["episode_classes"] < p.way}
    folder = config.dataset.name == "custom" and not config.dataset.video_list
    for split, o in short.items():
        fix = (
            f"change dataset.split_ratios (now {list(config.dataset.split_ratios)}) so that {split} gets at least {p.way} classes, "
            f"or lower protocol.way" if folder else "lower protocol.way (or protocol.shot / protocol.query), or add classes and videos"
        )
        msg = (
            f"frames: split {split!r} has {o['episode_classes']} class(es) with at least K+Q={need} videos, fewer than "
            f"N=protocol.way={p.way}: episodes on it will fail; {fix}"
        )
        if folder:
            raise StageError(f"{msg} (the split is part of the frames version: fix it before decoding)")
        log.warning(msg)
    return out


def version_config(config: Any, videos: Sequence[VideoEntry], stats: Sequence[tuple[int, int] | None]) -> dict[str, Any]:
    """What the frames artifact's version hashes (also stored in its manifest)."""
    fc = config.frames
    h = hashlib.sha256()
    for v, st in zip(videos, stats):
        h.update(json.dumps([v.video_id, v.class_name, v.split, v.path, list(st) if st else None], ensure_ascii=False).encode())
        h.update(b"\n")
    keys = ("storage_size", "max_frames", "jpeg_quality", "videos_per_shard", "shard_max_mb", "storage_format", "video_timeout_s")
    frames = {k: getattr(fc, k) for k in keys}
    return {
        "dataset": config.dataset.name,
        "frames": frames,
        "num_frames": config.protocol.num_frames,
        "videos": {"count": len(videos), "sha256": h.hexdigest()},
    }


def plan_units(videos: Sequence[VideoEntry], config: Any, out_dir: str | os.PathLike[str], settings: DecodeSettings) -> list[ShardUnit]:
    """The stage's work units: consecutive groups of `frames.videos_per_shard` videos."""
    per = config.frames.videos_per_shard
    return [
        ShardUnit(i, tuple(videos[s : s + per]), str(out_dir), settings, config.frames.shard_max_mb * _MB)
        for i, s in enumerate(range(0, len(videos), per))
    ]


# ----------------------------------------------------------------------------- build
def _build(
    staging: Staging, config: Any, videos: list[VideoEntry], sizes: Mapping[str, int], settings: DecodeSettings, mapper: MapUnits
) -> None:
    units = plan_units(videos, config, staging.dir, settings)
    results: dict[int, dict[str, Any]] = {}
    pending = []
    for u in units:
        done = read_marker(u)
        if done is None:
            pending.append(u)
        else:
            results[u.unit_id] = done
    if results:
        log.info(f"frames: resuming: {len(results)} of {len(units)} shards already done, decoding the other {len(pending)}")
    _remove_leftovers(staging.dir, results.values())
    pending.sort(key=lambda u: -sum(sizes.get(v.path, 0) for v in u.videos))  # biggest first: no long unit left for last

    from tqdm import tqdm

    class _Bar(tqdm):  # no monitor thread: it would make a worker pool fall back from fork to spawn
        monitor_interval = 0

    done_videos = sum(len(r["rows"]) for r in results.values())
    failed = sum(row["status"] != "ok" for r in results.values() for row in r["rows"])
    with _Bar(total=len(videos), initial=done_videos, unit="video", desc=f"frames {config.dataset.name}", mininterval=1.0) as bar:
        for r in mapper(decode_unit, pending):
            results[r["unit"]] = r
            failed += sum(row["status"] != "ok" for row in r["rows"])
            bar.update(len(r["rows"]))
            bar.set_postfix(failed=failed, refresh=False)
    lost = [u.unit_id for u in units if u.unit_id not in results]
    if lost:
        raise StageError(f"map_units returned no result for unit(s) {lost[:10]}; it must return one result per unit")

    rows = [row for uid in sorted(results) for row in results[uid]["rows"]]
    _write_index(staging, rows)
    for r in results.values():
        staging.checksums.update({name: info["sha256"] for name, info in r["files"].items()})
    staging.rows["shards"] = sum(len(row["stored_indices"]) for row in rows)
    summary = summarize(rows)
    staging.extra["summary"] = summary
    staging.extra["libraries"] = _library_versions()
    log.info(f"frames: {format_summary(summary)}")
    _check_failures(summary, config, staging, rows)


def _write_index(staging: Staging, rows: list[dict[str, Any]]) -> None:
    table = pa.Table.from_pylist(rows, schema=INDEX_SCHEMA)
    with atomic_path(staging.path(INDEX)) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    staging.rows[INDEX] = len(rows)


def _remove_leftovers(out_dir: Path, finished: Iterable[dict[str, Any]]) -> None:
    """Delete shard files (and temporary files) that no finished unit claims: remains of a killed run."""
    keep = {name for r in finished for name in r["files"]}
    shard_dir = Path(out_dir) / SHARD_DIR
    if not shard_dir.is_dir():
        return
    for entry in os.scandir(shard_dir):
        if entry.is_file() and f"{SHARD_DIR}/{entry.name}" not in keep:
            Path(entry.path).unlink(missing_ok=True)


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Counts of the index: videos, ok, failed by reason, ok videos by decoding way, frames and bytes stored."""
    reasons = Counter(r["reason"] for r in rows if r["status"] != "ok")
    ok = [r for r in rows if r["status"] == "ok"]
    return {
        "videos": len(rows),
        "ok": len(ok),
        "failed": sum(reasons.values()),
        "failed_by_reason": dict(sorted(reasons.items())),
        "by_decoder": dict(sorted(Counter(r["decoder"] for r in ok).items())),
        "with_warnings": sum(bool(r.get("warnings")) for r in ok),
        "frames_stored": sum(len(r["stored_indices"]) for r in ok),
        "bytes_stored": sum(r["bytes"] for r in ok),
    }


def format_summary(s: Mapping[str, Any]) -> str:
    text = f"{s['videos']} videos, {s['ok']} ok, {s['failed']} failed"
    if s["failed_by_reason"]:
        text += " (" + ", ".join(f"{k}: {v}" for k, v in s["failed_by_reason"].items()) + ")"
    if s.get("with_warnings"):
        text += f"; {s['with_warnings']} read with warnings (corrupt packets skipped or cut short: the index's `warnings`)"
    return text + f"; {s['frames_stored']} frames, {s['bytes_stored'] / _MB:.1f} MiB stored"


def _check_failures(summary: Mapping[str, Any], config: Any, staging: Staging, rows: Sequence[Mapping[str, Any]]) -> None:
    limit = config.frames.max_failed_fraction
    n, failed = summary["videos"], summary["failed"]
    if failed / n <= limit:
        return
    examples = "; ".join(f"{r['video_id']!r}: {r['reason']} ({r['error']})" for r in rows if r["status"] != "ok")
    if len(examples) > 600:
        examples = examples[:600] + " ..."
    hint = ""
    if summary["failed_by_reason"].get("missing_file", 0) > n / 2:
        hint = f" Most videos are missing: is the video root right (dataset.video_root={config.dataset.video_root!r})?"
    raise StageError(
        f"frames: {failed} of {n} videos ({failed / n:.1%}) could not be used, more than "
        f"frames.max_failed_fraction={limit:g} ({', '.join(f'{k}: {v}' for k, v in summary['failed_by_reason'].items())}).{hint} "
        f"First failures: {examples}. Every video's reason is in {staging.dir / INDEX}; fix or remove those videos, or raise "
        f"frames.max_failed_fraction (decoded shards are kept, so the re-run only writes the index)."
    )


def _refuse_all_missing(config: Any, videos: Sequence[VideoEntry], stats: Sequence[tuple[int, int] | None]) -> None:
    if any(s is not None for s in stats) or not videos:
        return
    root = config.dataset.video_root or config.dataset.video_list
    raise StageError(
        f"frames: none of the {len(videos)} videos of dataset {config.dataset.name!r} exists (first one looked for: "
        f"{videos[0].path!r}); the video root {root!r} is probably wrong: pass the folder that holds the dataset's "
        f"videos with --video-root DIR (make: VIDEO_ROOT=DIR)"
    )


def _stat(path: str) -> tuple[int, int] | None:
    """(size, mtime in ns) of a regular file, (-1, -1) for something else, None when missing."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns) if stat.S_ISREG(st.st_mode) else (-1, -1)


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("av", "pillow", "pyarrow"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "missing"
    try:  # the FFmpeg libraries inside PyAV decide the decoded pixels
        import av

        out["libavcodec"] = ".".join(map(str, av.library_versions["libavcodec"]))
        out["libswscale"] = ".".join(map(str, av.library_versions["libswscale"]))
    except (ImportError, KeyError):
        pass
    return out


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _preload_decoders() -> None:
    import av  # noqa: F401
    from av.video.reformatter import VideoReformatter  # noqa: F401
    from PIL import Image  # noqa: F401


def _pool(workers: int, ctx: multiprocessing.context.BaseContext) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process."""
    return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=die_with_parent, initargs=(os.getpid(),))


def _pool_map(fn: Callable[[ShardUnit], dict[str, Any]], units: Sequence[ShardUnit], workers: int) -> Iterator[dict[str, Any]]:
    """Run units on a pool of `workers` processes (in this process when workers is 1).

    A worker that dies (a decoder segfault on a bad file, the kernel's OOM killer) breaks the pool;
    the units left are then run one per process, and a unit whose process dies again is probed video
    by video, the culprit recorded as `decoder_crash`. Workers=1 runs in this process: no isolation.
    """
    if not units:  # a re-run after a failure check: every unit is done, only the index is written
        return
    if workers <= 1:
        for u in units:
            yield fn(u)
        return
    ctx = mp_context()
    if ctx.get_start_method() == "fork":
        _preload_decoders()  # imported once here, inherited by every forked worker
    done: set[int] = set()
    pool = _pool(min(workers, len(units)), ctx)
    try:
        futures = [pool.submit(fn, u) for u in units]
        for f in as_completed(futures):
            r = f.result()
            done.add(r["unit"])
            yield r
    except BrokenProcessPool:
        pass
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    left = [u for u in units if u.unit_id not in done]
    if left:
        log.info(f"frames: a worker process died; running the {len(left)} unfinished unit(s) one process each")
    for u in left:
        yield _isolated(fn, u, ctx)


def _isolated(fn: Callable[[ShardUnit], dict[str, Any]], unit: ShardUnit, ctx: multiprocessing.context.BaseContext) -> dict[str, Any]:
    """Run one unit in a fresh process. Decoders run in their own child (`IsolatedDecoder`), so a worker that still
    dies does so outside decoding: the machine is out of memory, or something killed it."""
    with _pool(1, ctx) as one:
        try:
            return one.submit(fn, unit).result()
        except BrokenProcessPool:
            pass
    raise StageError(
        f"frames: the process writing unit {unit.name} died twice (its videos: {[v.path for v in unit.videos][:10]}); "
        f"decoders run in their own process, so this is not a bad video: is the machine out of memory? (lower frames.workers)"
    )
