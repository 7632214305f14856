"""A name a lineage route refuses by its pattern is answered with the rule in words and the name refused, not the
regular expression. Session 37's walk-through: `railyard datasets create 1 "bad name/x"` (and `create-project "a/b"`,
`create-project ""`) said `name: String should match pattern '^[^/\\x00-\\x1f]{1,200}$'`, which a user must decode
to learn that '/' is the problem (docs/lineage.md says it: 1-200 characters without '/' or control characters)."""

from __future__ import annotations

import asyncio

import pytest
from pydantic import ValidationError

from shared.bus import CallContext, run_command
from shared.errors import validation_detail, validation_message
from shared.messages.lineage import AddDatasetFile, CreateDataset, CreateProject, WorkflowLink


def refusal(model, payload) -> str:
    with pytest.raises(ValidationError) as caught:
        model.model_validate(payload)
    return validation_message(caught.value.errors())


def test_a_refused_name_says_the_rule_and_the_name():
    rule = "use 1-200 characters without '/' or control characters"
    assert refusal(CreateProject, {"workspace_id": 1, "name": "a/b"}) == f"name: {rule}; got 'a/b'"
    assert refusal(CreateProject, {"workspace_id": 1, "name": ""}) == f"name: {rule}; got ''"
    assert refusal(CreateDataset, {"project_id": 1, "name": "tab\there"}) == f"name: {rule}; got 'tab\\there'"
    long = refusal(AddDatasetFile, {"dataset_id": 1, "name": "x" * 300, "staged_key": "k"})
    assert long.startswith(f"name: {rule}; got 'xxxx") and long.endswith("… (300 characters)")
    assert refusal(WorkflowLink, {"workspace_id": 1, "task_id": "-run"}) == (
        "task_id: use 1-100 ASCII letters, digits, '_', '.', ':' or '-', starting with a letter or digit; got '-run'")


def test_the_bus_answers_the_same_words():
    async def handler(cmd, ctx):  # never reached
        raise AssertionError("validated")

    reply = asyncio.run(run_command(handler, CreateProject, {"workspace_id": 1, "name": "a/b"},
                                    CallContext(subject="s")))
    assert (reply.status, reply.error.code) == (400, "invalid_request")
    assert reply.error.msg == "name: use 1-200 characters without '/' or control characters; got 'a/b'"


def test_a_pattern_nobody_described_keeps_pydantics_words():
    said = {"type": "string_pattern_mismatch", "loc": ("x",), "msg": "String should match pattern '^a$'",
            "input": "b", "ctx": {"pattern": "^a$"}}
    assert validation_detail(said) == "String should match pattern '^a$'"
