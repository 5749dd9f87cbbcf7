"""Versioned prompt templates: `pipeline/prompts/<version>/{system.txt, user.txt, schema.json}` (package data).

    prompt = load_prompt("subactions_v1")
    prompt.messages("brush hair", num_sub_actions=3, max_chars=200)  # [{"role": "system", ...}, {"role": "user", ...}]
    prompt.schema(3)                                                 # {"type": "object", ... "minItems": 3, "maxItems": 3}
    prompt.messages("ride bike", 3, 200, exemplars=[("brush hair", ["Grip the brush.", ...])])
    # worked examples come first as chat turns: user.txt for the example's name, then its answer as JSON

The templates are `string.Template` texts (see pipeline/prompts/README.md). `Prompt.sha256` hashes the three
files, so an edited prompt gives a new artifact version even under the same version name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from string import Template
from typing import Any

from pipeline.contract import StageError

__all__ = ["PROMPT_DIR", "PROMPT_FILES", "Prompt", "list_prompts", "load_prompt", "prompt_dir"]

PROMPT_DIR = Path(str(files("pipeline") / "prompts"))  # the packaged templates (package data)
PROMPT_FILES = ("system.txt", "user.txt", "schema.json")


@dataclass(frozen=True)
class Prompt:
    """One prompt version: the raw template texts and their hash."""

    version: str  # folder name
    system: str  # system message template
    user: str  # user message template
    schema_template: str  # JSON schema template (S is a parameter)
    sha256: str  # hash of the three files' content

    def params(self, action: str, num_sub_actions: int, max_chars: int) -> dict[str, Any]:
        slots = ", ".join(f'"sub-action {k + 1}"' for k in range(num_sub_actions))
        return {"action": action, "num_sub_actions": num_sub_actions, "max_chars": max_chars, "slots": slots}

    def messages(
        self, action: str, num_sub_actions: int, max_chars: int, exemplars: Sequence[tuple[str, Sequence[str]]] = ()
    ) -> list[dict[str, str]]:
        """The chat messages asking for the sub-actions of one class (by its display name).

        Each exemplar (display name, sentences) becomes a worked example before the question: a user
        turn asking for it, an assistant turn answering `{"sub_actions": [...]}`. The nearest example
        should come last (the stage orders them so).
        """
        p = self.params(action, num_sub_actions, max_chars)
        out = [{"role": "system", "content": _render(self.system, p, self.version, "system.txt").strip()}]
        for name, sentences in exemplars:
            ask = _render(self.user, self.params(name, num_sub_actions, max_chars), self.version, "user.txt").strip()
            answer = json.dumps({"sub_actions": list(sentences)}, ensure_ascii=False)
            out += [{"role": "user", "content": ask}, {"role": "assistant", "content": answer}]
        out.append({"role": "user", "content": _render(self.user, p, self.version, "user.txt").strip()})
        return out

    def schema(self, num_sub_actions: int) -> dict[str, Any]:
        """The answer's JSON schema with minItems = maxItems = S."""
        text = _render(self.schema_template, {"num_sub_actions": num_sub_actions}, self.version, "schema.json")
        try:
            schema = json.loads(text)
        except json.JSONDecodeError as exc:
            raise StageError(f"prompt {self.version!r}: schema.json is not valid JSON after substitution ({exc})") from None
        items = schema.get("properties", {}).get("sub_actions", {})
        if items.get("type") != "array":
            raise StageError(f'prompt {self.version!r}: schema.json must describe {{"sub_actions": [array of strings]}}')
        return schema


def _render(template: str, params: dict[str, Any], version: str, name: str) -> str:
    try:
        return Template(template).substitute(params)
    except (KeyError, ValueError) as exc:
        raise StageError(
            f"prompt {version!r}: {name} uses an unknown or malformed parameter ({exc}); allowed: "
            f"${{action}}, ${{num_sub_actions}}, ${{max_chars}}, ${{slots}} (write $$ for a literal $)"
        ) from None


def prompt_dir() -> Path:
    """The template folder: $FSAR_PROMPT_DIR when set (read now, not at import), else the packaged one."""
    env = os.environ.get("FSAR_PROMPT_DIR")
    return Path(env).expanduser() if env else PROMPT_DIR


def list_prompts(root: str | os.PathLike[str] | None = None) -> list[str]:
    """Prompt versions available under the prompt folder."""
    base = Path(root) if root is not None else prompt_dir()
    return sorted(p.name for p in base.iterdir() if p.is_dir() and all((p / f).is_file() for f in PROMPT_FILES)) if base.is_dir() else []


def load_prompt(version: str, root: str | os.PathLike[str] | None = None) -> Prompt:
    """Load a prompt version: a folder name under `prompt_dir()` (or a folder path)."""
    base = Path(root) if root is not None else prompt_dir()
    folder = Path(version).expanduser() if os.sep in version or Path(version).is_absolute() else base / version
    missing = [f for f in PROMPT_FILES if not (folder / f).is_file()]
    if missing:
        raise StageError(
            f"prompt {version!r} not found or incomplete (looked in {folder}; missing {', '.join(missing)}); "
            f"choose one of {list_prompts(base)} (descriptions.prompt=NAME)"
        )
    texts = {f: (folder / f).read_text(encoding="utf-8") for f in PROMPT_FILES}
    h = hashlib.sha256()
    for f in PROMPT_FILES:
        h.update(f.encode() + b"\0" + texts[f].encode() + b"\0")
    return Prompt(folder.name, texts["system.txt"], texts["user.txt"], texts["schema.json"], h.hexdigest())
