"""descriptions stage: LLM-written ordered sub-action descriptions of every class, as a versioned artifact.

    from pipeline.descriptions import run
    ref = run(config, {}, store)   # descriptions.parquet (split, class, k, text, ...) + corpus.yaml

Backends (config `descriptions.backend`): openai | local | vllm | file, see `backends/`.
"""

from pipeline.descriptions.backends import BACKENDS, Backend, Completion, Request, Sampling, make_backend
from pipeline.descriptions.config import DescriptionsConfig
from pipeline.descriptions.prompts import Prompt, list_prompts, load_prompt
from pipeline.descriptions.stage import CORPUS_FILE, MAIN, SCHEMA, STAGE, run
from pipeline.descriptions.validate import FLAGS, parse_answer, qa_flags

__all__ = [
    "BACKENDS",
    "CORPUS_FILE",
    "FLAGS",
    "MAIN",
    "SCHEMA",
    "STAGE",
    "Backend",
    "Completion",
    "DescriptionsConfig",
    "Prompt",
    "Request",
    "Sampling",
    "list_prompts",
    "load_prompt",
    "make_backend",
    "parse_answer",
    "qa_flags",
    "run",
]
