"""The one user-facing error type: `FsarError`, and the one-line form of the operating system's errors.

Every error that means "this input is wrong, here is the fix" (a config key, a dataset, an artifact,
a stage's input, a backbone, an episode a split cannot hold, a model bundle) derives from it, so the CLI
turns any of them into one line and exit code 2, and a traceback means a bug. Each subclass also keeps
the built-in base it always had (ValueError, RuntimeError, LookupError), so existing `except` clauses
still catch it.

An `OSError` (no space left, permission denied, a read-only disk, a file where a folder must be) is not
a bug either: `os_error_message` turns it into one line naming the file and the fix, which the CLI prints
the same way. `read_text_file` reads a user's text file (a video list, a split file, a YAML) and says
which line is not UTF-8 instead of raising `UnicodeDecodeError`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

__all__ = ["FsarError", "NO_SPACE", "find_os_error", "os_error_message", "read_text_file"]

NO_SPACE = (errno.ENOSPC, errno.EDQUOT)  # a full disk, or a full quota


class FsarError(Exception):
    """Bad input or a broken artifact; the message is one line naming the thing and the fix."""


def _names(exc: OSError) -> str:
    files = [f for f in (exc.filename, exc.filename2) if f not in (None, "")]
    return " -> ".join(repr(os.fsdecode(f)) for f in files)


def os_error_message(exc: OSError) -> str:
    """One line for an error of the operating system: what failed, on which file, and what to do."""
    what = _names(exc)
    on = f" {what}" if what else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = exc.errno
    if code in NO_SPACE:
        return (
            f"no space left on the device{(' of' + on) if on else ''} ({reason}); free space there (or choose another "
            f"--artifacts root) and re-run: nothing half written is published, and a stage's finished work is kept"
        )
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied{(' on' + on) if on else ''} ({reason}); give the user running fsar access to it, or use another path"
    if code == errno.EROFS:
        return f"{what or 'the path'} is on a read-only file system ({reason}); choose a writable folder (e.g. another --artifacts root)"
    if code == errno.ENOTDIR:
        return f"{what or 'a path'}: a part of it is a file where a folder must be ({reason}); move that file away"
    if code == errno.EISDIR:
        return f"{what or 'a path'} is a folder where a file was expected ({reason}); move it away or give a file"
    if code == errno.ENOENT:
        return f"{what or 'a file'} does not exist ({reason}); check the path"
    if code in (errno.EMFILE, errno.ENFILE):
        return f"too many open files{(' at' + on) if on else ''} ({reason}); raise the limit (`ulimit -n 4096`) or lower the worker count"
    if code == errno.EIO:
        return f"the disk failed to read or write{on} ({reason}); check the device (dmesg), then `fsar verify` and re-run"
    name = errno.errorcode.get(code, "") if code is not None else ""
    return f"{reason}{(' on' + on) if on else ''}{f' ({name})' if name else ''}; check that path and re-run"


def find_os_error(exc: BaseException | None, codes: tuple[int, ...]) -> OSError | None:
    """The first OSError with one of `codes` in `exc` or the errors it was raised from (a library often wraps
    the OS's error: torch.save turns a full disk into a RuntimeError whose context is the OSError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in codes:
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def read_text_file(path: str | os.PathLike[str], what: str, error: type[Exception] = FsarError) -> str:
    """The text of a user's file (UTF-8, a leading byte-order mark dropped); an unreadable file or a line
    that is not UTF-8 is `error` naming the file, the line and the fix."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise error(f"{what} {str(p)!r} cannot be read: {os_error_message(exc)}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise error(
            f"{what} {str(p)!r} is not UTF-8 text: line {line}, column {column} holds the byte 0x{data[exc.start]:02x}; "
            f"save the file as UTF-8 (in most editors: save with encoding UTF-8)"
        ) from None
