"""Where fsar's lines go: library code logs to the `fsar` logger; entry points decide who sees the lines.

    log = logging.getLogger("fsar")      # in any library module (`LOGGER`)
    log.info("train: building %s", ref)   # never print(): importing or calling fsar as a library prints nothing
    log.info(table, extra={"bare": True}) # a block printed as it is, without the `[fsar] ` prefix

- Library use: `fsar` has a NullHandler and does not propagate its own output anywhere unless the
  application configures logging (the standard library's rule for libraries).
- `fsar ...` and `python -m flows ...` call `install(level)`: INFO lines go to stdout as
  `[fsar] <message>`, warnings and errors to stderr as `[fsar] warning: <message>`; `-q` shows warnings
  only, `-v` adds debug lines. Lines are written with `tqdm.write`, so a live progress bar is moved out
  of the way instead of being written through.
- Inside a Prefect flow or task run (the flows install with `prefect=True`), each line goes to that
  run's logger instead, so the Prefect UI and API hold it; outside a run it prints as above.
- Every line, printed or sent to Prefect, goes through `pipeline.secrets.redact_text` first: no key,
  token or URL credential reaches a terminal or a run's log.

- Other libraries' lines join fsar's: `relay_root_records("open_clip", reword)` hands what a library logs on the
  root logger (open_clip's `logging.warning(...)`, which would otherwise set up a `WARNING:root:` printer of
  its own) to the `fsar` logger, reworded where fsar knows what the user can do; and `install` shows Python
  warnings (`warnings.warn`) as fsar warning lines instead of `file:line: UserWarning:` blocks.

`in_prefect_run` and `artifact_key` are the two facts about Prefect that library code needs (the
training monitor's progress artifact); they never import Prefect unless the process already has.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Callable, Iterator

from pipeline.secrets import redact_text

__all__ = ["LOGGER", "FsarHandler", "artifact_key", "in_prefect_run", "install", "level_for", "relay_root_records"]

LOGGER = "fsar"
logging.getLogger(LOGGER).addHandler(logging.NullHandler())


def in_prefect_run() -> bool:
    """True inside a Prefect flow or task run (checked without importing Prefect when it is not loaded)."""
    if "prefect" not in sys.modules:
        return False
    try:
        from prefect.context import get_run_context

        get_run_context()
        return True
    except Exception:  # noqa: BLE001 - MissingContextError and anything else: not in a run
        return False


def artifact_key(*parts: str) -> str:
    """A Prefect artifact key: lowercase letters, digits and dashes."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", "-".join(parts).lower())).strip("-")


class FsarHandler(logging.Handler):
    """Prints fsar's lines (INFO and below on stdout, WARNING and above on stderr, both looked up when a line is
    written, so redirected streams are honoured); with `prefect=True`, a line logged inside a Prefect run goes
    to that run's logger instead."""

    def __init__(self, prefect: bool = False):
        super().__init__()
        self.prefect = prefect

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = redact_text(record.getMessage())
            if record.levelno >= logging.WARNING:
                text = f"warning: {text}" if record.levelno == logging.WARNING else f"{record.levelname.lower()}: {text}"
            line = text if getattr(record, "bare", False) else f"[fsar] {text}"  # bare: a table, printed as it is
            if self.prefect and in_prefect_run() and self._to_prefect(record.levelno, line):
                return
            from tqdm import tqdm

            tqdm.write(line, file=sys.stderr if record.levelno >= logging.WARNING else sys.stdout)
            (sys.stderr if record.levelno >= logging.WARNING else sys.stdout).flush()
        except Exception:  # noqa: BLE001 - logging must never raise into the code that logs
            self.handleError(record)

    @staticmethod
    def _to_prefect(level: int, line: str) -> bool:
        try:
            from prefect.logging import get_run_logger

            get_run_logger().log(level, line)
            return True
        except Exception:  # noqa: BLE001 - the run context went away: print instead
            return False


def level_for(quiet: bool = False, verbose: bool = False) -> int:
    """The level `-q` / `-v` ask for (INFO by default)."""
    return logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO


def install(level: int | None = logging.INFO, prefect: bool = False) -> logging.Logger:
    """Make fsar's lines visible (entry points only; idempotent: one handler). `level` None keeps the level an earlier
    call set (INFO if none did); `prefect=True` routes lines logged inside a Prefect run to its logger. The `fsar`
    logger then stops propagating, so a root handler set up by another library does not print each line twice."""
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, FsarHandler)), None)
    if handler is None:
        handler = FsarHandler(prefect)
        logger.addHandler(handler)
        level = logging.INFO if level is None else level
    handler.prefect = handler.prefect or prefect
    if level is not None:
        logger.setLevel(level)
    logger.propagate = False
    warnings.showwarning = _show_warning
    return logger


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file=None, line=None) -> None:  # noqa: ANN001
    """`warnings.showwarning` while fsar prints: one fsar warning line (the warning's module in brackets)."""
    where = filename.rsplit("/", 1)[-1]
    logging.getLogger(LOGGER).warning("%s (%s from %s:%d)", message, category.__name__, where, lineno)


# reword(record) -> (level, fsar's line) or None to keep the library's own words at its own level
Reword = Callable[[logging.LogRecord], "tuple[int, str] | None"]


@contextlib.contextmanager
def relay_root_records(library: str, reword: Reword | None = None) -> Iterator[None]:
    """Inside the block, what `library` (a top-level package name) logs on the root logger goes to the `fsar`
    logger instead (reworded by `reword`, else as `<library>: <message>` at its level); the root logger's own
    handlers never see it, and a root logger without handlers is not given a default printer (the standard
    library's `logging.warning` does that on first use)."""
    root = logging.getLogger()
    fsar = logging.getLogger(LOGGER)
    marker = f"/{library}/"

    def relay(record: logging.LogRecord) -> bool:
        if record.name != "root" or marker not in record.pathname.replace("\\", "/"):
            return True  # someone else's line: unchanged
        said = reword(record) if reword is not None else None
        level, line = said if said is not None else (record.levelno, f"{library}: {record.getMessage()}")
        fsar.log(level, "%s", line)
        return False

    quiet = logging.NullHandler()  # a handler, so `logging.warning` does not call basicConfig() on an empty root
    root.addHandler(quiet)
    root.addFilter(relay)
    try:
        yield
    finally:
        root.removeFilter(relay)
        root.removeHandler(quiet)
