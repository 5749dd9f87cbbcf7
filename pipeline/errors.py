"""The one user-facing error type: `FsarError`.

Every error that means "this input is wrong, here is the fix" (a config key, a dataset, an artifact,
a stage's input, a backbone, an episode a split cannot hold, a model bundle) derives from it, so the CLI
turns any of them into one line and exit code 2, and a traceback means a bug. Each subclass also keeps
the built-in base it always had (ValueError, RuntimeError, LookupError), so existing `except` clauses
still catch it.
"""

from __future__ import annotations

__all__ = ["FsarError"]


class FsarError(Exception):
    """Bad input or a broken artifact; the message is one line naming the thing and the fix."""
