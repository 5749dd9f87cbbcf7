"""descriptions stage: LLM-written ordered sub-action descriptions of every class, as a versioned artifact.

    from pipeline.descriptions import run
    ref = run(config, {}, store)   # descriptions.parquet (split, class, k, text, ...) + candidates.parquet + corpus.yaml

Backends (config `descriptions.backend`): auto (default) | openai | local | vllm | file, see `backends/`.
Worked examples from training classes: `descriptions.exemplars` (see exemplars.py); several answers
per class, the best kept: `descriptions.candidates` (asking.py asks, choosing.py keeps one; quality.py
reports against true scripts where a dataset has them).
"""

from pipeline.descriptions.backends import BACKENDS, Backend, Completion, Request, Sampling, make_backend, resolve_backend
from pipeline.descriptions.exemplars import ExemplarPool, load_exemplars, truth_scripts
from pipeline.descriptions.prompts import Prompt, list_prompts, load_prompt
from pipeline.descriptions.stage import CANDIDATES_FILE, CORPUS_FILE, MAIN, SCHEMA, STAGE, run
from pipeline.descriptions.validate import FLAGS, parse_answer, qa_flags

__all__ = [
    "BACKENDS",
    "CANDIDATES_FILE",
    "CORPUS_FILE",
    "FLAGS",
    "MAIN",
    "SCHEMA",
    "STAGE",
    "Backend",
    "Completion",
    "ExemplarPool",
    "Prompt",
    "Request",
    "Sampling",
    "list_prompts",
    "load_exemplars",
    "load_prompt",
    "make_backend",
    "parse_answer",
    "qa_flags",
    "resolve_backend",
    "run",
    "truth_scripts",
]
