"""Per-answer cache under the artifact root: `<root>/.cache/descriptions/<key[:2]>/<key>.json`.

The key hashes (backend, model identity, prompt version and content hash, class display name, S,
the longest-sentence bound written into the prompt, sampling params with the attempt's seed), so a
repeated run, or another dataset sharing class names, asks the LLM nothing it was asked before.
Every received answer with a sentence in it is stored, valid or not, so a re-run replays the same
attempts; one without (unparseable) is stored only once its class got a usable answer, so a class
that ended with nothing is asked again. Writes are atomic (a temporary file renamed into place);
an unreadable entry is ignored and asked again.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline.artifacts import ArtifactStore
from pipeline.atomic import atomic_write_text

__all__ = ["AnswerCache", "cache_key"]

CACHE_DIR = ".cache/descriptions"


def cache_key(fields: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of the fields that determine an answer."""
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str).encode()).hexdigest()


class AnswerCache:
    """Answers by key, stored next to the artifacts (any fsspec root; atomic on local folders)."""

    def __init__(self, store: ArtifactStore):
        self.fs = store.fs
        self.local = store.local
        self.root = f"{store.root.rstrip('/')}/{CACHE_DIR}"

    def _path(self, key: str) -> str:
        return f"{self.root}/{key[:2]}/{key}.json"

    def get(self, key: str) -> dict[str, Any] | None:
        path = self._path(key)
        try:
            if self.local:
                entry = json.loads(Path(path).read_text(encoding="utf-8"))
            else:
                with self.fs.open(path, "r") as fh:
                    entry = json.load(fh)
        except (OSError, ValueError):
            return None
        return entry if isinstance(entry, dict) and entry.get("key") == key and "text" in entry else None

    def put(self, key: str, entry: dict[str, Any]) -> None:
        data = json.dumps({**entry, "key": key, "created": _dt.datetime.now(_dt.timezone.utc).isoformat()}, ensure_ascii=False, indent=1)
        path = self._path(key)
        if self.local:
            atomic_write_text(path, data)
        else:
            self.fs.pipe_file(path, data.encode("utf-8"))
