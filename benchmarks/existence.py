"""Benchmark: the existence check ("already exists, skipped") on a large artifact, first (cold) vs cached.

    python benchmarks/existence.py [--gib 2] [--files 400] [--root DIR] [--rounds 3]

Publishes one artifact of --gib GiB in --files files through `build_once` (a toy stage, random bytes),
waits until its files are older than `artifacts.RACY_NS` (a file changed more recently is never
remembered), then alternates, --rounds times: the check with the cache `ROOT/.cache/verified` deleted
(every file hashed: what the first check after a copy, or on another machine, costs) and the check
again with the cache the first one wrote (the files are only stat'ed). Prints the median of each, their
ratio, and `fsar verify`'s full re-hash for comparison. The OS page cache is warm (the files were just
written), so "first" is hashing speed, not disk speed. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline import artifacts  # noqa: E402
from pipeline.artifacts import ArtifactStore  # noqa: E402
from pipeline.contract import build_once  # noqa: E402


def build(root: Path, gib: float, files: int) -> tuple[ArtifactStore, artifacts.ArtifactRef]:
    store = ArtifactStore(root)
    per = int(gib * (1 << 30) / files)
    block = bytes(range(256)) * 4096  # 1 MiB

    def write(staging) -> None:
        for i in range(files):
            with open(staging.path(f"shards/{i:05d}.bin"), "wb") as fh:
                left = per
                while left > 0:
                    chunk = block[: min(left, len(block))]
                    fh.write(i.to_bytes(8, "little") + chunk[8:])
                    left -= len(chunk)

    ref = build_once(store, "toy", "big", config={"gib": gib, "files": files}, inputs={}, build=write)
    return store, ref


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--gib", type=float, default=2.0)
    ap.add_argument("--files", type=int, default=400)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--root", type=Path, default=None, help="artifact root (default: a temporary folder)")
    args = ap.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="fsar-existence-"))
    store, ref = build(root, args.gib, args.files)
    time.sleep(artifacts.RACY_NS / 1e9 + 0.5)  # older than the racy window: the first check may remember them
    cache = Path(store.root) / artifacts.VERIFIED
    first, cached = [], []
    for _ in range(args.rounds):
        shutil.rmtree(cache, ignore_errors=True)
        t0 = time.perf_counter()
        assert store.exists(ref.stage, ref.dataset, ref.version) == ref
        first.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert store.exists(ref.stage, ref.dataset, ref.version) == ref
        cached.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    assert store.problems(ref, full=True) == []
    full = time.perf_counter() - t0
    f, c = statistics.median(first), statistics.median(cached)
    print(f"artifact: {args.gib:g} GiB in {args.files} files under {store.root}")
    print(f"existence check, first (every file hashed): {f:.3f} s  ({args.gib / f:.2f} GiB/s)")
    print(f"existence check, cached (files stat'ed):    {c * 1000:.1f} ms")
    print(f"ratio first / cached: {f / c:.0f}x;  `fsar verify` (full re-hash): {full:.3f} s")
    if args.root is None:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
