"""Decoding in a child process under a time budget, and child processes that die with their parent.

    with IsolatedDecoder(settings) as decoder:
        video = decoder.decode(path)          # decode.decode_video, in a child process

`IsolatedDecoder` runs `decode_video` in a child process, one video at a time, under a wall-clock
budget (`frames.video_timeout_s`) enforced by the parent: a decoder that hangs (even holding the GIL)
is killed and its video recorded as `timeout`; one that kills its process (a segfault, the OOM killer)
as `decoder_crash`. The child is started again for the next video. It is forked where that is safe,
else started as a fresh interpreter (Dask's daemonic workers may not fork children). `die_with_parent`
makes any child process (a decoder, a frames worker) die with a parent that is killed, even by SIGKILL;
`mp_context` picks fork or spawn for a pool.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

import pipeline
from pipeline.frames.decode import DecodedVideo, DecodeSettings, VideoFailure, check_file, decode_video

__all__ = ["IsolatedDecoder", "die_with_parent", "mp_context", "serve_fds"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def mp_context() -> multiprocessing.context.BaseContext:
    """fork when this process runs no other Python thread (a child starts in milliseconds, nothing re-imported);
    spawn otherwise (Prefect, Dask, notebooks: fork would copy locks held by other threads).

    spawn re-imports the main script in each child; when there is no script file to import (code
    piped into `python -`), fork is the only choice.
    """
    import __main__

    if threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    main_file = getattr(__main__, "__file__", None)
    if getattr(__main__, "__spec__", None) is None and main_file is not None and not os.path.isfile(main_file):
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def die_with_parent(parent: int) -> None:
    """Called first in a child process: it dies with `parent` (even a SIGKILLed one), never left running under PID 1.
    Linux: the kernel's parent-death signal (prctl PR_SET_PDEATHSIG); elsewhere a thread polls the parent."""
    try:
        if ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL) != 0:
            raise OSError(ctypes.get_errno(), "prctl")
    except (OSError, AttributeError):
        threading.Thread(target=_watch_parent, args=(parent,), name="fsar-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the signal was armed
        os._exit(1)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _serve(requests: Any, answers: Any, parent: int) -> None:
    """The decoding process: decode each (path, settings) it is sent, answer ("ok", video) or ("failed", VideoFailure)."""
    die_with_parent(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    while True:
        try:
            request = requests.recv()
        except EOFError:
            return
        if request is None:
            return
        path, settings = request
        try:
            answer: tuple[str, Any] = ("ok", decode_video(path, settings))
        except VideoFailure as exc:
            answer = ("failed", exc)
        except Exception as exc:  # noqa: BLE001 - a bug: report it to the parent, which raises it
            answer = ("error", f"{type(exc).__name__}: {exc}")
        answers.send(answer)


def serve_fds(read_fd: int, write_fd: int, parent: int) -> None:
    """Entry of a decoding process started as a fresh interpreter (`IsolatedDecoder` where it cannot fork)."""
    _serve(Connection(read_fd, writable=False), Connection(write_fd, readable=False), parent)


def _exit_text(code: int | None) -> str:
    if code is None or code >= 0:
        return f"exit code {code}"
    try:
        return f"signal {-code} ({signal.Signals(-code).name})"
    except ValueError:
        return f"signal {-code}"


class _Forked:
    """A decoding process forked from this one (this process runs no other thread and may have children)."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("fork")
        self.requests, child_requests = ctx.Pipe(duplex=False)[::-1]  # (write end here, read end there)
        child_answers, self.answers = ctx.Pipe(duplex=False)[::-1]
        self.proc = ctx.Process(target=_serve, args=(child_requests, child_answers, os.getpid()), name="fsar-decoder", daemon=True)
        self.proc.start()
        child_requests.close()
        child_answers.close()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()

    def wait(self, timeout: float | None) -> int | None:
        self.proc.join(timeout)
        return self.proc.exitcode


class _Interpreter:
    """A decoding process started as a fresh Python (where fork is unsafe: other threads run, or this is a daemonic
    process that multiprocessing forbids to have children, such as a Dask worker)."""

    def __init__(self) -> None:
        req_r, req_w = os.pipe()
        ans_r, ans_w = os.pipe()
        env = dict(os.environ)
        home = str(os.path.dirname(os.path.dirname(os.path.abspath(pipeline.__file__))))  # the folder holding `pipeline`
        env["PYTHONPATH"] = home + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        code = f"from pipeline.frames.isolation import serve_fds; serve_fds({req_r}, {ans_w}, {os.getpid()})"
        try:
            self.proc = subprocess.Popen([sys.executable, "-c", code], pass_fds=(req_r, ans_w), env=env, stdin=subprocess.DEVNULL)
        finally:
            os.close(req_r)
            os.close(ans_w)
        self.requests = Connection(req_w, readable=False)
        self.answers = Connection(ans_r, writable=False)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()

    def wait(self, timeout: float | None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None


def _can_fork() -> bool:
    return hasattr(os, "fork") and threading.active_count() == 1 and not multiprocessing.current_process().daemon


class IsolatedDecoder:
    """`decode_video` in a child process, one video at a time, each under `settings.timeout_s` seconds of wall clock.

    The parent enforces the budget (a decoder stuck in C code holding the GIL cannot stop it): on time-out
    the child is killed and the video raises VideoFailure("timeout"); a child that dies raises
    VideoFailure("decoder_crash"). Either way the next video gets a fresh child. The child is forked
    where that is safe, else started as a fresh interpreter. Use as a context manager.
    """

    def __init__(self, settings: DecodeSettings):
        self.settings = settings
        self._child: _Forked | _Interpreter | None = None

    def __enter__(self) -> "IsolatedDecoder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def pid(self) -> int | None:
        """The decoding process's pid (None before the first video)."""
        return None if self._child is None else self._child.proc.pid

    def _stop(self, kill: bool) -> int | None:
        child, self._child = self._child, None
        if child is None:
            return None
        if kill:
            child.kill()
        else:
            try:
                child.requests.send(None)
            except OSError:
                pass
        child.requests.close()
        child.answers.close()
        code = child.wait(10)
        if code is None:
            child.kill()
            code = child.wait(None)
        return code

    def close(self) -> None:
        self._stop(kill=False)

    def decode(self, path: str) -> DecodedVideo:
        """The video's kept frames; raises VideoFailure (any reason in REASONS) when it cannot be used."""
        check_file(path)  # cheap checks here: no round trip for a missing file
        if self._child is None:
            self._child = _Forked() if _can_fork() else _Interpreter()
        child, timeout = self._child, self.settings.timeout_s
        try:
            child.requests.send((path, self.settings))
            ready = child.answers.poll(timeout)
        except OSError:
            ready = True  # the child is gone: recv below says so
        if not ready:
            self._stop(kill=True)
            raise VideoFailure(
                "timeout",
                f"decoding took longer than frames.video_timeout_s={timeout:g} s and was stopped; check the file "
                f"(ffprobe), or raise frames.video_timeout_s if it is just long",
            )
        try:
            status, payload = child.answers.recv()
        except (EOFError, OSError):
            code = child.wait(10)
            self._stop(kill=True)
            raise VideoFailure(
                "decoder_crash", f"decoding this file killed the decoding process ({_exit_text(code)}): a decoder crash, or out of memory"
            ) from None
        if status == "ok":
            return payload
        if status == "failed":
            raise payload
        raise RuntimeError(f"the decoding process failed on {path!r}: {payload}")
