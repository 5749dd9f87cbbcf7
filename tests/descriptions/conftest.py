"""Fixtures of the descriptions tests; makes the fake OpenAI-compatible server importable as `fake_openai_server`."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = str(Path(__file__).resolve().parent)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
