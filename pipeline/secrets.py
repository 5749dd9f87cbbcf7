"""Keep credentials out of everything fsar writes or prints: one redaction, used everywhere.

A secret is any of

- the user info of a URL: `http://user:KEY@host/v1` -> `http://***@host/v1`;
- a value in a URL's query string: `http://host/v1?api_key=KEY&x=1` -> `http://host/v1?api_key=***&x=***`
  (every value of a URL's query; and, outside a URL, a `?name=value` / `&name=value` whose name says it
  holds a key, token, secret, signature, password or auth);
- the value of an environment variable whose name says it holds one (`*_KEY`, `*TOKEN*`, `*SECRET*`,
  `*PASSWORD*`, `*AUTH*`, ..., and the key variable the descriptions config names).

`redact_text` masks them in a string and `redact` in any JSON-like object; they are what config dumps
(`Config.dump`/`stored`: config.json, checkpoints, `fsar config`), manifests, bundles, log lines
(`pipeline.logs.FsarHandler`), error lines (`cli_common.fail`), the CLI's printed tables (`fsar plan`,
`fsar catalog`), reports, and the flows' Prefect artifacts go through. `redact_url` is the same
redaction for one URL (None stays None).

Flow parameters are stored by Prefect before any fsar code runs, so `stash_overrides` moves values that
hold a secret (`key=value` overrides, an artifact-root URL) into this process's environment and hands
back redacted ones; the flow calls `restore_overrides` to get the real values back.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "redact", "redact_text", "redact_url", "restore_overrides", "stash_overrides"]

MASK = "***"
_SECRET_NAME = re.compile(r"(^|_)(API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?|AUTH|SIGNATURE)($|_)", re.I)
# a URL: scheme://, then everything up to white space or a quote/bracket that ends it in prose, JSON or Markdown
_URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://[^\s'\"<>`()\[\]{}]+")
_USERINFO = re.compile(r"^(?P<scheme>[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<info>[^/?#@]+)@")
_QUERY_VALUE = re.compile(r"(?P<name>[?&;][^=&;#?]*=)(?P<value>[^&;#]*)")
# outside a URL: ?name=value / &name=value whose name says it holds a secret
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&][^=&#\s'\"]*(?:key|token|secret|sig|signature|password|passwd|pwd|auth|credential)[^=&#\s'\"]*=)"
    r"(?P<value>[^&#\s'\"<>`()\[\]{}]+)",
    re.I,
)
_STASH_ENV = "FSAR_STASHED_OVERRIDES"
_MIN_SECRET = 6  # shorter values (e.g. "1") are too common to mask


def _mask_url(url: str) -> str:
    out = _USERINFO.sub(lambda m: f"{m['scheme']}{MASK}@", url)
    head, q, rest = out.partition("?")
    if not q:
        return out
    query, h, fragment = rest.partition("#")
    query = _QUERY_VALUE.sub(lambda m: f"{m['name']}{MASK}" if m["value"] else m[0], "?" + query)[1:]
    return f"{head}?{query}{h}{fragment}"


def _secret_values(extra_env: Iterable[str] = ()) -> list[str]:
    names = {n for n in os.environ if _SECRET_NAME.search(n)} | {n for n in extra_env if n in os.environ}
    values = {os.environ[n] for n in names if len(os.environ.get(n, "")) >= _MIN_SECRET}
    return sorted(values, key=len, reverse=True)


def redact_text(text: str, extra_env: Iterable[str] = ()) -> str:
    """`text` with every URL's user info and query values, secret-named `?name=value` pairs and secret environment
    values replaced by ***."""
    out = _URL.sub(lambda m: _mask_url(m[0]), text)
    out = _SECRET_PARAM.sub(lambda m: f"{m['name']}{MASK}" if m["value"] != MASK else m[0], out)
    for value in _secret_values(extra_env):
        out = out.replace(value, MASK)
    return out


def redact_url(url: str | None, extra_env: Iterable[str] = ()) -> str | None:
    """A URL as fsar writes or prints it (`redact_text`: user info and query values masked); None stays None."""
    return redact_text(url, extra_env) if url else url


def redact(obj: Any, extra_env: Iterable[str] = ()) -> Any:
    """A copy of a JSON-like object (dicts, lists, strings) with every secret replaced by *** (`redact_text`)."""
    extra = tuple(extra_env)
    if isinstance(obj, str):
        return redact_text(obj, extra)
    if isinstance(obj, dict):
        return {k: redact(v, extra) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(redact(v, extra) for v in obj)
    return obj


def stash_overrides(overrides: Iterable[str]) -> list[str]:
    """Values safe to store (secrets masked); the originals wait in this process's environment."""
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
