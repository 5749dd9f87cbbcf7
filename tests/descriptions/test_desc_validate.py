"""Answer parsing, validation flags, prompt rendering and the schema (no server)."""

from __future__ import annotations

import json

import pytest

from pipeline.contract import StageError
from pipeline.descriptions import load_prompt, parse_answer, qa_flags
from pipeline.descriptions.prompts import PROMPT_DIR
from pipeline.descriptions.validate import coerce


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"sub_actions": ["Grip the brush.", "Pull it down.", "Lower it."]}', ["Grip the brush.", "Pull it down.", "Lower it."]),
        ('```json\n{"sub_actions": ["A b.", "C d."]}\n```', ["A b.", "C d."]),
        ('Sure! {"sub_actions": ["1. Reach out.", "2) Grab it."]} Hope this helps', ["Reach out.", "Grab it."]),
        ('{"steps": ["Reach out.", "Grab it."]}', ["Reach out.", "Grab it."]),
        ('{"sub_actions": [{"step": 1, "description": "Reach out."}]}', ["Reach out."]),
        ("1. Reach out.\n2. Grab the cup.\n3. Lift it.", ["Reach out.", "Grab the cup.", "Lift it."]),
        ("- Reach out.\n- Grab the cup.", ["Reach out.", "Grab the cup."]),
        ("Reach out. Grab the cup. Lift it.", ["Reach out.", "Grab the cup.", "Lift it."]),
        ('{"sub_actions": ["Reach out", "and then', []),
        ("", []),
        (None, []),
    ],
)
def test_parse_answer(text, expected):
    assert parse_answer(text) == expected


def test_flags():
    ok = ["Grip the brush.", "Pull it through the hair.", "Lower the brush."]
    assert qa_flags(ok, 3, "brush hair", 200) == []
    assert qa_flags(ok[:2], 3, "brush hair", 200) == ["wrong_count"]
    assert qa_flags([], 3, "brush hair", 200, raw="no") == ["unparseable"]
    assert qa_flags(["Grip.", "grip", "Lower."], 3, "x", 200) == ["duplicate"]
    assert qa_flags(["Grip.", "...", "Lower."], 3, "x", 200) == ["empty"]
    assert qa_flags(["Grip.", "x" * 201, "Lower."], 3, "x", 200) == ["too_long"]
    assert qa_flags(["Brush hair.", "Pull.", "Lower."], 3, "brush_hair", 200) == ["class_name_only"]
    assert "refusal" in qa_flags(["I'm sorry, I can't help.", "a", "b"], 3, "x", 200)
    assert "refusal" in qa_flags([], 3, "x", 200, raw="As an AI language model, I cannot do that")
    # "cannot" inside an honest description is no refusal
    assert qa_flags(["The lid cannot move yet.", "Twist it.", "Lift it."], 3, "open jar", 200) == []


def test_coerce_to_s():
    assert coerce(["a", "b", "c", "d"], 3) == ["a", "b", "c"]
    assert coerce(["a", "", "b"], 3) == ["a", "b", "b"]
    assert coerce([], 3) == []


def test_prompt_renders_schema_with_s_and_template_names():
    prompt = load_prompt("subactions_v1")
    for s in (2, 3, 5):
        items = prompt.schema(s)["properties"]["sub_actions"]
        assert items["minItems"] == items["maxItems"] == s
    system, user = prompt.messages("Pushing something from left to right", 4, 150)
    assert system["role"] == "system" and user["role"] == "user"
    assert '"Pushing something from left to right"' in user["content"] and "exactly 4" in user["content"]
    assert "something" in system["content"]  # templates: placeholders stay generic
    assert "${" not in system["content"] + user["content"]
    assert len(prompt.sha256) == 64


def test_prompt_errors(tmp_path):
    with pytest.raises(StageError, match="subactions_v1"):
        load_prompt("no_such_prompt")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in ("system.txt", "user.txt"):
        (bad / f).write_text((PROMPT_DIR / "subactions_v1" / f).read_text())
    (bad / "schema.json").write_text('{"type": "object", "n": ${unknown}}')
    with pytest.raises(StageError, match="unknown"):
        load_prompt(str(bad)).schema(3)
    (bad / "schema.json").write_text(json.dumps({"type": "object"}))
    with pytest.raises(StageError, match="sub_actions"):
        load_prompt(str(bad)).schema(3)
