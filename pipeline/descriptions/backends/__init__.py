"""LLM backends of the descriptions stage: one file per backend behind one interface.

A backend turns `Request`s (chat messages + the answer's JSON schema + sampling params) into
`Completion`s (the raw answer text, token usage, or the error that stopped it). Request building,
answer parsing, validation, retries for invalid answers and caching live in the stage, shared by all.

    backend = make_backend(cfg.descriptions)
    backend.check()                  # before any work: configuration, packages, reachability
    with backend:                    # close() stops what the backend started (the local server)
        backend.generate(requests, on_done)

| name     | file             | what |
|----------|------------------|------|
| openai   | openai_api.py    | any OpenAI-compatible endpoint through the `openai` client |
| local    | local_server.py  | starts `python -m llama_cpp.server` with a GGUF model, then talks to it as `openai` |
| vllm     | vllm_engine.py   | the in-process vLLM engine (`LLM.chat` with structured outputs), GPU only |
| file     | corpus_file.py   | an existing corpus (YAML release layout or JSON {class: [sentences]}) |

`auto` (the default) is `openai` when an endpoint is configured (`descriptions.base_url`, or the key
in `$<descriptions.api_key_env>`), else `local`; `resolve_backend` says which and why.
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from pipeline.settings.descriptions import DescriptionsConfig

log = logging.getLogger("fsar")

__all__ = ["BACKENDS", "Backend", "Completion", "Request", "Sampling", "make_backend", "resolve_backend"]


@dataclass(frozen=True)
class Sampling:
    """Sampling parameters of one request."""

    temperature: float
    top_p: float
    max_tokens: int
    seed: int

    def to_dict(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "max_tokens": self.max_tokens, "seed": self.seed}


@dataclass(frozen=True)
class Request:
    """One question: the sub-actions of one class, at one attempt."""

    index: int  # the stage's answer slot: class position x candidates + candidate
    class_name: str  # raw class name (the file backend looks it up)
    action: str  # display name, as written into the prompt
    messages: list[dict[str, str]]  # chat messages
    schema: dict[str, Any]  # JSON schema of the answer
    sampling: Sampling
    key: str = ""  # cache key (set by the stage)


@dataclass
class Completion:
    """One answer, or the error that prevented it."""

    text: str | None  # raw answer text (None when the request failed)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    mode: str = ""  # how structure was asked for: json_schema | json_object | text | vllm | file
    error: str | None = None  # why there is no answer (after transport retries)
    calls: int = 0  # HTTP requests / engine calls made for it (0: from the cache or a file)
    from_cache: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # backend-specific details (finish reason, ...)


class Backend:
    """The interface. Subclasses set `name` and implement `identity` and `generate`."""

    name: ClassVar[str] = ""
    uses_prompt: ClassVar[bool] = True  # False: the answers do not come from a prompt (file)
    uses_cache: ClassVar[bool] = True  # False: answers are free to get again (file)
    max_attempts: ClassVar[int | None] = None  # cap on attempts per class (file: asking again gives the same)

    def __init__(self, cfg: DescriptionsConfig):
        self.cfg = cfg

    def check(self) -> None:
        """Fail fast, before any work, with a message that names the fix."""

    def prepare(self, classes: Sequence[tuple[str, str]]) -> None:
        """See the (class name, display name) list before any work (file: every class must be there)."""

    def identity(self) -> dict[str, Any]:
        """What makes this backend's answers what they are ({"model": ...} and more): hashed into versions and cache keys."""
        raise NotImplementedError

    @property
    def model_label(self) -> str:
        """Model name written into the table."""
        return str(self.identity()["model"])

    def run_info(self) -> dict[str, Any]:
        """How it ran (endpoint, structured-output mode, ...) for the manifest; no secrets."""
        return {}

    def generate(self, requests: Sequence[Request], on_done: Callable[[Request, Completion], None]) -> None:
        """Answer every request, calling `on_done(request, completion)` in the calling thread as each finishes."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the backend started."""

    def __enter__(self) -> "Backend":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# name -> "module:class"; modules are imported only when their backend is chosen
BACKENDS: dict[str, str] = {
    "openai": "pipeline.descriptions.backends.openai_api:OpenAIBackend",
    "local": "pipeline.descriptions.backends.local_server:LocalBackend",
    "vllm": "pipeline.descriptions.backends.vllm_engine:VLLMBackend",
    "file": "pipeline.descriptions.backends.corpus_file:FileBackend",
}


def resolve_backend(cfg: DescriptionsConfig) -> tuple[str, str]:
    """(backend name, why): `auto` becomes openai when a base URL or key is configured, else local."""
    if cfg.backend != "auto":
        return cfg.backend, "descriptions.backend"
    if cfg.base_url:
        return "openai", "auto: descriptions.base_url is set"
    if os.environ.get(cfg.api_key_env):
        return "openai", f"auto: ${cfg.api_key_env} is set"
    return "local", f"auto: no base URL and no ${cfg.api_key_env}, so the embedded llama.cpp model"


def make_backend(cfg: DescriptionsConfig, *, announce: bool = False) -> Backend:
    """The configured backend (not started yet); `announce` prints which one `auto` chose."""
    name, why = resolve_backend(cfg)
    if announce and cfg.backend == "auto":
        log.info(f"descriptions: backend {name} ({why}; choose with descriptions.backend / LLM=...)")
    try:
        target = BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown descriptions backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}") from None
    module_name, cls_name = target.split(":")
    cls: Callable[[DescriptionsConfig], Backend] = getattr(importlib.import_module(module_name), cls_name)
    return cls(cfg)
