"""benchmarks/evaluate.py --prefix at a tiny size: the batched side scores from a real prefix artifact and agrees."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LAST = re.compile(r"^evaluate benchmark: ratio=(\d+\.\d+) limit=(\d+\.\d+) agree=(true|false)$")


@pytest.mark.slow  # a subprocess: imports and model build, about 10-20 s on 2 busy cores
def test_prefix_artifact_benchmark_agrees_and_prints_the_last_line(tmp_path) -> None:
    dtype = "float16"  # not the default: the --prefix-dtype flag must reach the stored artifact
    cmd = [
        sys.executable, str(REPO / "benchmarks" / "evaluate.py"), "--prefix", "--prefix-dtype", dtype, "--clip", "fsar-micro",
        "--image-size", "32", "--frames", "4", "--classes", "5", "--videos-per-class", "2", "--episodes", "6",
        "--uncached-episodes", "3", "--episodes-per-batch", "4", "--device", "cpu", "--threads", "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(tmp_path)}  # the temporary artifact root goes under tmp_path
    run = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.strip().splitlines()
    match = LAST.match(lines[-1])
    assert match, lines[-1]
    ratio, limit = float(match[1]), float(match[2])
    assert match[3] == "true"
    assert ratio > 0 and limit == pytest.approx(3 / ((3 - 2) / 6 + 2), abs=1e-3)  # fsar-micro: L=3, M=2, r = 6 * 10 / 10
    built = next(line for line in lines if line.startswith("prefix artifact (prefix/benchmark/"))
    assert f"states.npy (10, 4, 17, 64) {dtype}" in built  # V=10 videos, T=4, (32/8)^2+1 tokens, width 64
    assert "scoring from the prefix artifact (4 episodes per batch)" in run.stdout
    assert not list(tmp_path.glob("fsar-benchmark-prefix-*"))  # the temporary artifact root was removed


def test_agreement_separates_real_disagreements_from_near_ties() -> None:
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("benchmark_evaluate", REPO / "benchmarks" / "evaluate.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    reference = [torch.tensor([[3.0, 1.0, 0.0], [2.00, 1.95, 0.0], [0.0, 5.0, 4.0]])]  # margins 2.0, 0.05, 1.0
    other = [torch.tensor([[2.9, 1.1, 0.0], [1.98, 1.99, 0.0], [0.0, 4.0, 4.5]])]  # query 1 flips within 0.1, query 2 beyond it
    counts = bench.agreement(reference, other, tol=0.1)
    assert (counts["queries"], counts["same"], counts["near_ties"], counts["disagreements"]) == (3, 1, 1, 1)
    assert counts["min_margin"] == pytest.approx(0.05) and counts["max_diff"] == pytest.approx(1.0)
    assert bench.agreement(reference, other, tol=1.5)["disagreements"] == 0  # both flips are within a wide tolerance
