"""The `openai` backend: any OpenAI-compatible chat endpoint (OpenAI, `vllm serve`, llama.cpp, Ollama).

Structure: `response_format` json_schema first; a server that rejects it (llama.cpp answers HTTP 500
"Input should be 'text' or 'json_object'", others 400/422) gets json_object with the schema, then
plain text (the prompt asks for JSON; the parser also reads lists). The fallback is remembered per
server for the life of the process. Transport errors (429, 5xx, time-outs, connection errors) are
retried with exponential back-off (or the server's Retry-After); up to `concurrency` requests are in
flight at once (threads). Authentication and unknown-model errors stop the stage at once.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

from pipeline.contract import StageError
from pipeline.descriptions.backends import Backend, Completion, Request
from pipeline.secrets import redact_url
from pipeline.settings.descriptions import DescriptionsConfig

log = logging.getLogger("fsar")

__all__ = ["MODES", "OpenAIBackend", "choices_message", "redact_url"]

MODES = ("json_schema", "json_object", "text")
DEFAULT_BASE_URL = "https://api.openai.com/v1"
MAX_BACKOFF_S = 30.0

_server_modes: dict[str, str] = {}  # base URL#starting mode -> the structured-output mode it accepts (learnt at run time)
_modes_lock = threading.Lock()


def choices_message(cfg: DescriptionsConfig) -> str:
    return (
        f"descriptions: no LLM configured (backend 'openai' with no base URL and no ${cfg.api_key_env}). Choose one:\n"
        f"  - an OpenAI-compatible API: export {cfg.api_key_env}=... and give the model: "
        f"make descriptions DATASET=D MODEL=gpt-4o-mini (fsar descriptions --model M); BASE_URL=... for another provider\n"
        f"  - vLLM on a GPU box: `vllm serve MODEL` in its own environment, then LLM=openai BASE_URL=http://HOST:8000/v1 MODEL=MODEL "
        f"(recommended), or LLM=vllm MODEL=MODEL with fsar installed into the vllm environment (pip install 'fsar[vllm]')\n"
        f"  - a local OpenAI-compatible server (llama.cpp, Ollama, vllm serve): BASE_URL=http://127.0.0.1:PORT/v1 [MODEL=...]\n"
        f"  - the embedded CPU backend: LLM=local (starts llama.cpp with SmolLM2-135M; poor sentences, for demos)\n"
        f"  - an existing corpus: LLM=file CORPUS=corpus.yaml (release layout) or corpus.json ({{class: [sentences]}})"
    )


def _response_format(mode: str, schema: dict[str, Any]) -> dict[str, Any] | None:
    if mode == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": "sub_actions", "schema": schema, "strict": True}}
    if mode == "json_object":
        return {"type": "json_object", "schema": schema}
    return None


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    return f"{getattr(exc, 'message', '')} {body if body is not None else ''}".lower()


def _rejects_structure(exc: Any, mode: str) -> bool:
    """A status error that says the server does not take this response_format."""
    status = getattr(exc, "status_code", 0)
    text = _status_message(exc)
    mentions = any(w in text for w in ("response_format", "json_schema", "json_object", "schema", "input should be"))
    return mentions and (status in (400, 422) or status >= 500)


def _retry_after(exc: Any) -> float | None:
    response = getattr(exc, "response", None)
    value = response.headers.get("retry-after") if response is not None else None
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        cfg: DescriptionsConfig,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        model: str | None = None,
        concurrency: int | None = None,
    ):
        super().__init__(cfg)
        self.base_url = base_url or cfg.base_url
        self._key = api_key if api_key is not None else os.environ.get(cfg.api_key_env) or None
        self.model = model or cfg.model
        self.concurrency = concurrency or cfg.concurrency
        self._client: Any = None
        self._client_lock = threading.Lock()
        self._server = (self.base_url or DEFAULT_BASE_URL).rstrip("/")
        self.http_requests = 0  # every HTTP request made, retries included
        self.http_retries = 0  # transport retries
        self._count_lock = threading.Lock()

    # -------------------------------------------------------------- set-up
    def check(self) -> None:
        if not self.base_url and not self._key:
            raise StageError(choices_message(self.cfg))
        try:
            import openai  # noqa: F401
        except ImportError:
            raise StageError("backend 'openai' needs the openai package: pip install openai") from None
        if not self.model:
            if not self.base_url:
                raise StageError(
                    "descriptions: backend 'openai' needs a model name: MODEL=... (make) or --model (fsar), e.g. gpt-4o-mini"
                )
            self.model = self._server_model()

    def _server_model(self) -> str:
        """The only model a server offers (llama.cpp, vllm serve): so a base URL alone is enough."""
        try:
            ids = [m.id for m in self.client.models.list()]
        except Exception as exc:  # noqa: BLE001 - any failure: say what to do
            raise StageError(
                f"descriptions: no model given and the server at {redact_url(self.base_url)} did not list its models "
                f"({self._clean(str(exc))}); give one with MODEL=... / --model"
            ) from None
        if len(ids) != 1:
            raise StageError(
                f"descriptions: no model given and the server at {redact_url(self.base_url)} offers "
                f"{len(ids)} ({', '.join(ids[:10]) or 'none'}); choose one with MODEL=... / --model"
            )
        log.info(f"descriptions: using the server's only model {ids[0]!r}")
        return ids[0]

    @property
    def client(self) -> Any:
        with self._client_lock:
            if self._client is None:
                import openai

                self._client = openai.OpenAI(
                    api_key=self._key or "not-needed",  # local servers take any key
                    base_url=self.base_url,
                    max_retries=0,  # retries are ours: back-off, Retry-After, structured-output fallback
                    timeout=self.cfg.request_timeout_s,
                )
            return self._client

    def identity(self) -> dict[str, Any]:
        if not self.model:
            raise StageError("descriptions: backend 'openai' has no model; call check() first")
        return {"model": self.model}

    def run_info(self) -> dict[str, Any]:
        return {
            "base_url": redact_url(self._server),
            "structured_output": self.mode,
            "concurrency": self.concurrency,
            "http_requests": self.http_requests,
            "http_retries": self.http_retries,
        }

    def close(self) -> None:
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    # ---------------------------------------------------- structured output
    def _mode_key(self) -> tuple[str, str]:
        start = MODES[0] if self.cfg.structured == "auto" else self.cfg.structured
        return f"{self._server}#{start}", start

    @property
    def mode(self) -> str:
        """The structured-output mode used for the next request to this server."""
        key, start = self._mode_key()
        with _modes_lock:
            return _server_modes.get(key, start)

    def _downgrade(self, mode: str, exc: Any) -> None:
        nxt = MODES[MODES.index(mode) + 1]
        key, start = self._mode_key()
        with _modes_lock:
            if _server_modes.get(key, start) != mode:  # another thread already moved on
                return
            _server_modes[key] = nxt
        status = getattr(exc, "status_code", "?")
        log.info(f"descriptions: {redact_url(self._server)} rejects response_format {mode} (HTTP {status}); using {nxt} from now on")

    # -------------------------------------------------------------- requests
    def _clean(self, text: str) -> str:
        """An error text without the API key in it."""
        return text.replace(self._key, "***") if self._key else text

    def _count(self, retry: bool) -> None:
        with self._count_lock:
            self.http_requests += 1
            self.http_retries += int(retry)

    def call(self, req: Request) -> Completion:
        """One answer for one request: structured-output fallback and transport retries included."""
        import openai

        calls = retries = 0
        while True:
            mode = self.mode
            kwargs: dict[str, Any] = dict(
                model=self.model,
                messages=req.messages,
                temperature=req.sampling.temperature,
                top_p=req.sampling.top_p,
                max_tokens=req.sampling.max_tokens,
                seed=req.sampling.seed,
            )
            rf = _response_format(mode, req.schema)
            if rf is not None:
                kwargs["response_format"] = rf
            calls += 1
            self._count(retry=retries > 0)
            try:
                resp = self.client.chat.completions.create(**kwargs)
                return self._completion(resp, mode, calls)
            except (openai.AuthenticationError, openai.PermissionDeniedError, openai.NotFoundError) as exc:
                raise StageError(
                    f"descriptions: {redact_url(self._server)} refused the request (HTTP {exc.status_code}: "
                    f"{self._clean(str(exc))[:300]}); check the key in ${self.cfg.api_key_env}, the model name and the base URL"
                ) from None
            except openai.APIStatusError as exc:
                if mode != "text" and _rejects_structure(exc, mode):
                    self._downgrade(mode, exc)
                    continue
                error = f"HTTP {exc.status_code}: {self._clean(str(exc))[:300]}"
                if not (exc.status_code in (408, 409, 429) or exc.status_code >= 500):
                    return Completion(None, mode=mode, error=error, calls=calls)
                wait_s = _retry_after(exc)
            except openai.APITimeoutError:
                error, wait_s = f"time-out after {self.cfg.request_timeout_s:g} s", None
            except (openai.APIConnectionError, openai.APIResponseValidationError) as exc:
                error, wait_s = f"{type(exc).__name__}: {self._clean(str(exc))[:300]}", None
            except ValueError as exc:  # an unreadable response body
                error, wait_s = f"malformed response: {self._clean(str(exc))[:300]}", None
            if retries >= self.cfg.max_retries:
                return Completion(None, mode=mode, error=f"{error} (gave up after {retries} retries)", calls=calls)
            if wait_s is None:
                wait_s = self.cfg.retry_backoff_s * (2**retries) * (1 + 0.25 * random.random())
            time.sleep(min(wait_s, MAX_BACKOFF_S))
            retries += 1

    def _completion(self, resp: Any, mode: str, calls: int) -> Completion:
        if not getattr(resp, "choices", None):
            return Completion(None, mode=mode, error="the response has no choices", calls=calls)
        choice = resp.choices[0]
        message = choice.message
        text = message.content
        refusal = getattr(message, "refusal", None)
        if not text and refusal:
            text = refusal
        usage = getattr(resp, "usage", None)
        return Completion(
            text if text is not None else "",
            prompt_tokens=getattr(usage, "prompt_tokens", None),
            completion_tokens=getattr(usage, "completion_tokens", None),
            mode=mode,
            calls=calls,
            extra={"finish_reason": getattr(choice, "finish_reason", None)},
        )

    def generate(self, requests: Sequence[Request], on_done: Callable[[Request, Completion], None]) -> None:
        if self.concurrency <= 1 or len(requests) <= 1:
            for req in requests:
                on_done(req, self.call(req))
            return
        pool = ThreadPoolExecutor(max_workers=min(self.concurrency, len(requests)), thread_name_prefix="fsar-llm")
        futures: dict[Future[Completion], Request] = {}
        try:
            todo = iter(requests)
            for req in todo:  # keep at most `concurrency` queued: a failure stops the rest quickly
                futures[pool.submit(self.call, req)] = req
                if len(futures) >= self.concurrency:
                    break
            while futures:
                done, _ = wait(futures, return_when=FIRST_COMPLETED)
                for fut in done:
                    req = futures.pop(fut)
                    on_done(req, fut.result())
                    nxt = next(todo, None)
                    if nxt is not None:
                        futures[pool.submit(self.call, nxt)] = nxt
        finally:
            pool.shutdown(wait=not futures, cancel_futures=True)
