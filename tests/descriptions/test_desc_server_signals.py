"""No orphan servers: killing a process that runs the descriptions stage (local backend) stops the server it started.

The server is a stand-in (the fake OpenAI server as its own process, answering after 60 s), so the
stage is mid-request when the signal arrives; the real llama.cpp server is started the same way.
"""

from __future__ import annotations

import os
import queue
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

CHILD = """
import sys
from pipeline.descriptions.backends import local_server
local_server.LlamaServer.command = lambda self: [sys.executable, {fake!r}, "--port", str(self.port), "--latency", "60"]
from pipeline.artifacts import ArtifactStore
from pipeline.config import load_config
from pipeline.descriptions import run
from pipeline.logs import install
install()  # the stage's lines on stdout, as the fsar command prints them
cfg = load_config(None, overrides={{
    "dataset.name": "custom", "dataset.video_list": {video_list!r}, "artifacts": {root!r},
    "descriptions.backend": "local", "descriptions.gguf": {gguf!r}, "descriptions.max_retries": 0,
}})
run(cfg, {{}}, ArtifactStore(cfg.artifacts))
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; its new parent reaps it


def _lines(proc: subprocess.Popen[str]) -> "queue.Queue[str]":
    out: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.put(line)

    threading.Thread(target=pump, daemon=True).start()
    return out


def _server_pid(lines: "queue.Queue[str]", seen: list[str], timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            continue
        seen.append(line)
        found = re.search(r"llama\.cpp server ready .*\(pid (\d+)", line)
        if found:
            return int(found.group(1))
    raise AssertionError("the stage never reported a ready server:\n" + "".join(seen))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["sigterm", "sigint", "sigkill"])
def test_killed_stage_leaves_no_server(tmp_path, sig):
    video_list = tmp_path / "two.csv"
    video_list.write_text("path,label,split\nx/a.mp4,catch,train\ny/b.mp4,punch,test\n")
    gguf = tmp_path / "stand-in.gguf"
    gguf.write_bytes(b"GGUF not a real model")
    code = CHILD.format(fake=str(HERE / "fake_openai_server.py"), video_list=str(video_list), root=str(tmp_path / "art"), gguf=str(gguf))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("OPENAI_API_KEY", None)
    child = subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, env=env, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    seen: list[str] = []
    server = 0
    try:
        server = _server_pid(_lines(child), seen)
        assert _alive(server)
        time.sleep(0.5)  # the first request is now waiting on the server
        child.send_signal(sig)
        child.wait(timeout=30)
        deadline = time.monotonic() + 15
        while _alive(server) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(server), f"server pid {server} outlived the stage killed by {sig.name}:\n" + "".join(seen)
        if sig == signal.SIGTERM:
            assert child.returncode == -signal.SIGTERM  # still dies of the signal, as without the handler
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        if server and _alive(server):
            os.kill(server, signal.SIGKILL)
