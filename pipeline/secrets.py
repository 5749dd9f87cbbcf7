"""Keep credentials out of everything fsar writes: config dumps, checkpoints, manifests, logs, flow parameters.

A secret is (a) the user-info of a URL (`http://user:KEY@host/v1`) or (b) the value of an environment
variable whose name says it holds one (`*_KEY`, `*TOKEN*`, `*SECRET*`, `*PASSWORD*`, and the key variable
the descriptions config names). `redact` replaces both in any JSON-like object; `redact_url` drops a
URL's user-info and query string.

Flow parameters are stored by Prefect before any fsar code runs, so `stash_overrides` moves secret
`key=value` overrides into this process's environment and hands back redacted ones; the flow calls
`restore_overrides` to get the real values back.
"""

from __future__ import annotations

import json
import os
import re
import urllib.parse
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "redact", "redact_text", "redact_url", "restore_overrides", "stash_overrides"]

MASK = "***"
_SECRET_NAME = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)($|_)", re.I)
_URL_USERINFO = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/@\s'\"]+)@")
_STASH_ENV = "FSAR_STASHED_OVERRIDES"
_MIN_SECRET = 6  # shorter values (e.g. "1") are too common to mask


def redact_url(url: str | None) -> str | None:
    """A URL without user info or query string (they may hold secrets)."""
    if not url:
        return url
    parts = urllib.parse.urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _secret_values(extra_env: Iterable[str] = ()) -> list[str]:
    names = {n for n in os.environ if _SECRET_NAME.search(n)} | {n for n in extra_env if n in os.environ}
    values = {os.environ[n] for n in names if len(os.environ.get(n, "")) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, extra_env: Iterable[str] = ()) -> str:
    """`text` with URL user-info and secret environment values replaced by ***."""
    out = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", text)
    for value in _secret_values(extra_env):
        out = out.replace(value, MASK)
    return out


def redact(obj: Any, extra_env: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like object (dicts, lists, strings) with every secret replaced by ***."""
    extra = tuple(extra_env)
    if isinstance(obj, str):
        return redact_text(obj, extra)
    if isinstance(obj, dict):
        return {k: redact(v, extra) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, extra) for v in obj)
    return obj


def stash_overrides(overrides: Iterable[str]) -> list[str]:
    """Overrides safe to store (secrets masked); the originals wait in this process's environment."""
    overrides = list(overrides)
    safe = [redact_text(o) for o in overrides]
    stash = {s: o for s, o in zip(safe, overrides) if s != o}
    if stash:
        known = json.loads(os.environ.get(_STASH_ENV, "{}"))
        os.environ[_STASH_ENV] = json.dumps({**known, **stash})
    return safe


def restore_overrides(overrides: Iterable[str]) -> list[str]:
    """The inverse of `stash_overrides` inside the same process (or one that inherited its environment)."""
    stash = json.loads(os.environ.get(_STASH_ENV, "{}"))
    return [stash.get(o, o) for o in overrides]
