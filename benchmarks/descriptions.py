"""Benchmark: the descriptions stage's request concurrency against a slow OpenAI-compatible server.

    python benchmarks/descriptions.py [--latency 0.2] [--dataset ucf101]

Runs the stage twice over the 101 UCF101 classes against the fake server of the tests (real HTTP on
127.0.0.1, every answer delayed by --latency seconds), once with one request in flight and once with
the default `descriptions.concurrency`, each into its own empty artifact root (so no answer comes
from the cache), and prints both times and their ratio (target: >= 8x). Not part of the test suite.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "descriptions"))

from fake_openai_server import FakeLLM  # noqa: E402

from pipeline.artifacts import ArtifactStore  # noqa: E402
from pipeline.config import load_config  # noqa: E402
from pipeline.descriptions import run  # noqa: E402
from pipeline.settings.descriptions import DescriptionsConfig  # noqa: E402


def timed_run(url: str, dataset: str, concurrency: int | None, root: Path) -> tuple[float, int]:
    over = {"dataset.name": dataset, "artifacts": str(root), "descriptions.base_url": url, "descriptions.model": "fake-model"}
    if concurrency is not None:
        over["descriptions.concurrency"] = concurrency
    cfg = load_config(None, overrides=over)
    store = ArtifactStore(root)
    t0 = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):  # progress bars
        ref = run(cfg, {}, store)
    seconds = time.perf_counter() - t0
    return seconds, int(ref.manifest()["run"]["llm_calls"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.2, help="seconds the fake server waits before each answer")
    ap.add_argument("--dataset", default="ucf101", help="dataset whose classes are described (ucf101: 101 classes)")
    args = ap.parse_args()
    default = DescriptionsConfig().concurrency
    with FakeLLM(latency=args.latency) as llm, tempfile.TemporaryDirectory() as tmp:
        seq_s, seq_calls = timed_run(llm.url, args.dataset, 1, Path(tmp) / "sequential")
        par_s, par_calls = timed_run(llm.url, args.dataset, None, Path(tmp) / "concurrent")
        peak = llm.max_in_flight
    print(f"descriptions benchmark: {args.dataset}, fake OpenAI-compatible server with {args.latency * 1000:.0f} ms per answer")
    print(f"  sequential (concurrency=1):          {seq_s:6.2f} s for {seq_calls} calls")
    print(f"  default concurrency ({default:>2}):          {par_s:6.2f} s for {par_calls} calls (peak {peak} in flight)")
    print(f"  speed-up: {seq_s / par_s:.1f}x (target >= 8x)")


if __name__ == "__main__":
    main()
