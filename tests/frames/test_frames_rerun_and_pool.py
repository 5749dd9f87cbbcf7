"""The re-run a frames failure recommends works, and pool workers never outlive a SIGKILLed parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from frames_helpers import BAD, GOOD, write_list
from typer.testing import CliRunner

from pipeline.cli import app

REPO = Path(__file__).resolve().parents[2]


def test_the_rerun_the_failure_message_recommends_works(video_set, tmp_path: Path) -> None:
    root, _ = video_set
    csv = write_list(root / "rerun.csv", list(GOOD) + list(BAD))  # paths are relative to the CSV
    args = ["frames", "--dataset", "custom", "--video-list", str(csv), "--artifacts", str(tmp_path / "art"),
            "--set", "frames.storage_size=64", "--set", "frames.videos_per_shard=3", "--set", "frames.workers=2"]
    runner = CliRunner()
    first = runner.invoke(app, [*args, "--set", "frames.max_failed_fraction=0.1"])
    assert first.exit_code == 2, first.output
    assert "raise frames.max_failed_fraction (decoded shards are kept, so the re-run only writes the index)" in first.output
    again = runner.invoke(app, [*args, "--set", "frames.max_failed_fraction=0.6"])  # 6 of 12 failed: 50%
    assert again.exit_code == 0, again.output
    assert "resuming: 4 of 4 shards already done, decoding the other 0" in again.output
    assert "12 videos, 6 ok, 6 failed" in again.output


_PARENT = textwrap.dedent(
    """
    import sys, time
    from pipeline.frames.stage import _pool_map

    class Unit:
        def __init__(self, i):
            self.unit_id = i

    def stuck(unit):  # a decoder blocked forever
        time.sleep(600)
        return {"unit": unit.unit_id}

    if __name__ == "__main__":
        print("ready", flush=True)
        for _ in _pool_map(stuck, [Unit(i) for i in range(4)], 2):
            pass
    """
)


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_pool_workers_die_with_a_sigkilled_parent(tmp_path: Path) -> None:
    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
    workers: list[int] = []
    try:
        assert parent.stdout is not None and parent.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            cmd = lambda p: Path(f"/proc/{p}/cmdline").read_bytes() if Path(f"/proc/{p}/cmdline").exists() else b""  # noqa: E731
            workers = [p for p in _children(parent.pid) if str(script).encode() in cmd(p)]
            if len(workers) >= 2:
                break
            time.sleep(0.1)
        assert len(workers) >= 2, f"no pool workers appeared under {parent.pid}"
        time.sleep(0.5)  # the workers' initializer has run
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=10)
        deadline = time.monotonic() + 20
        while any(_alive(w) for w in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [w for w in workers if _alive(w)], "pool workers outlived their parent"
    finally:
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)
        if parent.poll() is None:
            parent.kill()
