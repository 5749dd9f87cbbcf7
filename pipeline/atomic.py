"""Atomic writes: write to a hidden temporary name in the same folder, then `os.replace` it into place.

A reader never sees a half-written file (or folder): either the old one or the new one. The temporary
name starts with a dot and ends in `.part` (`.<name>.<pid>-<random>.part`), so a crashed writer's leftover
is recognisable (the artifact store drops hidden and `.part` files before it lists a staging folder) and two
writers of the same path never share a temporary.

    with atomic_path(path) as tmp:      # anything that writes a file (or a folder) at `tmp`
        pq.write_table(table, tmp)
    atomic_write_text(path, text)       # or bytes: atomic_write_bytes(path, data)
    with atomic_open(path) as fh:       # a file object, for writers that record their file's name
        torch.save(payload, fh)         # (torch.save(obj, <path>) names its zip records after the path)

`AtomicFile` is the same for a writer that stays open across calls (commit() / abort()).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path
from typing import IO, Any, Iterator

__all__ = ["AtomicFile", "atomic_open", "atomic_path", "atomic_write_bytes", "atomic_write_text", "temp_name"]


def temp_name(path: str | os.PathLike[str]) -> Path:
    """A fresh hidden sibling of `path`: `.<name>.<pid>-<8 hex>.part`."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _fsync(p: Path) -> None:
    if p.is_file():
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicFile:
    """One pending atomic write: `tmp` is where to write; `commit()` renames it onto `path`, `abort()` drops it.

    `fsync=True` flushes the file to disk before the rename (and the folder after it, where the OS allows).
    A folder at `tmp` replaces an existing folder at `path` (which is removed first).
    """

    def __init__(self, path: str | os.PathLike[str], *, fsync: bool = False, mkdir: bool = True):
        self.path = Path(path)
        if mkdir:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.path)
        self.fsync = fsync

    def commit(self) -> Path:
        """Move the temporary into place; returns the final path."""
        if self.fsync:
            _fsync(self.tmp)
        if self.tmp.is_dir() and self.path.is_dir() and not self.path.is_symlink():
            shutil.rmtree(self.path)
        os.replace(self.tmp, self.path)
        if self.fsync:
            with contextlib.suppress(OSError):  # folders cannot be opened for fsync everywhere
                fd = os.open(self.path.parent, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        return self.path

    def abort(self) -> None:
        """Remove the temporary (file or folder), if any."""
        _remove(self.tmp)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on normal exit it is renamed onto `path`, on error removed."""
    pending = AtomicFile(path, fsync=fsync)
    try:
        yield pending.tmp
    except BaseException:
        pending.abort()
        raise
    pending.commit()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", *, fsync: bool = False, **kwargs: Any) -> Iterator[IO[Any]]:
    """`open(tmp, mode, **kwargs)` of a temporary next to `path`; closed, then renamed onto `path` on normal exit.

    The temporary's (random) name never reaches the bytes, which matters for writers that record the name of
    the file they write (torch.save of a path names its zip records after it): same payload, same bytes.
    """
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = False) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_path(path, fsync=fsync) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = False, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically; returns the path."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
