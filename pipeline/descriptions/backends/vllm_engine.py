"""The `vllm` backend: the in-process vLLM engine on a GPU box (`LLM.chat` with structured outputs).

vLLM pins its own torch, so there are two GPU routes:

1. (recommended) run `vllm serve MODEL` in its own environment and use the `openai` backend:
   `make descriptions DATASET=D LLM=openai BASE_URL=http://HOST:8000/v1 MODEL=MODEL`;
2. install fsar with the `[vllm]` extra into the vllm environment and use `LLM=vllm MODEL=MODEL`.

This file is kept thin: requests, validation, retries of invalid answers and the cache are shared
with the other backends; it only turns a batch of requests into one `LLM.chat` call.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from pipeline.contract import StageError
from pipeline.descriptions.backends import Backend, Completion, Request

__all__ = ["VLLMBackend"]

ROUTES = (
    "two routes: (1, recommended) `vllm serve MODEL` in its own environment, then LLM=openai BASE_URL=http://HOST:8000/v1 "
    "MODEL=MODEL; (2) pip install 'fsar[vllm]' into the vllm environment on a GPU machine and use LLM=vllm MODEL=MODEL"
)


class VLLMBackend(Backend):
    name = "vllm"
    _llm: Any = None

    def check(self) -> None:
        if not self.cfg.model:
            raise StageError("backend 'vllm' needs a model: MODEL=<Hugging Face id or local folder> (descriptions.model)")
        try:
            import vllm  # noqa: F401
        except ImportError as exc:
            raise StageError(f"backend 'vllm' needs the vllm package, which is not importable here ({exc}); {ROUTES}") from None
        try:
            import torch

            has_gpu = torch.cuda.is_available()
        except ImportError:
            has_gpu = False
        if not has_gpu:
            raise StageError(f"backend 'vllm' needs a CUDA GPU and none is visible on this machine; {ROUTES}; or LLM=local on a CPU")

    def identity(self) -> dict[str, Any]:
        return {"model": self.cfg.model}

    def run_info(self) -> dict[str, Any]:
        return {"engine": "vllm.LLM.chat", "structured_output": "structured_outputs.json"}

    def _engine(self) -> Any:
        if self._llm is None:
            from vllm import LLM

            self._llm = LLM(model=self.cfg.model, seed=self.cfg.seed)
        return self._llm

    def generate(self, requests: Sequence[Request], on_done: Callable[[Request, Completion], None]) -> None:
        if not requests:
            return
        from vllm import SamplingParams
        from vllm.sampling_params import StructuredOutputsParams

        params = [
            SamplingParams(
                temperature=r.sampling.temperature,
                top_p=r.sampling.top_p,
                max_tokens=r.sampling.max_tokens,
                seed=r.sampling.seed,
                structured_outputs=StructuredOutputsParams(json=r.schema),
            )
            for r in requests
        ]
        outputs = self._engine().chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        for req, out in zip(requests, outputs, strict=True):
            gen = out.outputs[0] if out.outputs else None
            if gen is None:
                on_done(req, Completion(None, mode="vllm", error="vllm returned no output", calls=1))
                continue
            on_done(
                req,
                Completion(
                    gen.text,
                    prompt_tokens=len(out.prompt_token_ids or []),
                    completion_tokens=len(gen.token_ids or []),
                    mode="vllm",
                    calls=1,
                    extra={"finish_reason": gen.finish_reason},
                ),
            )

    def close(self) -> None:
        self._llm = None
